"""Batched seeds (vmap over stacked weights) equal S separate `fit` runs with the same seeds, and
train through the engine's one loop: validation, checkpoints and resume come with it."""
import pytest
import torch
from conftest import Crash, crash_after

from aelab import compile_cache
from aelab.batched import SeedStack, fit_seeds
from aelab.config import TrainConfig
from aelab.engine import evaluate, fit
from aelab.errors import ConfigError
from aelab.models import build_model

SEEDS = [0, 1, 2]


def one_by_one(name, splits, cfg):
    models = []
    for s in SEEDS:
        torch.manual_seed(s)
        m = build_model(name, (1, 8, 8))
        m.history = fit(m, splits.train, cfg, seed=s)
        models.append(m)
    return models


@pytest.mark.parametrize("name,extra", [("conv", {}), ("dense", {"corrupt": "dropout", "corrupt_level": 0.3})])
def test_batched_equals_separate_runs(blob_splits, name, extra):
    """conv has BatchNorm (stacked running statistics); dense runs with seeded input corruption."""
    cfg = TrainConfig(epochs=2, batch_size=16, progress="off", channels_last=False, **extra)
    separate = one_by_one(name, blob_splits, cfg)
    batched, histories = fit_seeds(lambda: build_model(name, (1, 8, 8)), SEEDS, blob_splits.train, cfg)
    for a, b, h in zip(separate, batched, histories):
        sa, sb = a.state_dict(), b.state_dict()
        for k in sa:  # float rounding only: a grouped conv sums in another order than S convs (up to
            # 1.5e-5 after 2 epochs on an AVX2-only AMD EPYC); a mix-up of seeds is off by orders more
            torch.testing.assert_close(sa[k], sb[k], rtol=1e-4, atol=1e-4, msg=k)
        assert h[-1]["train.loss"] == pytest.approx(a.history[-1]["train.loss"], rel=1e-4)
    assert not torch.equal(batched[0].state_dict()[k], batched[1].state_dict()[k])  # seeds differ


def test_batched_vae_trains_each_seed(blob_splits):
    """Sampling inside the model is independent per seed (vmap randomness='different')."""
    cfg = TrainConfig(epochs=3, batch_size=16, progress="off")
    torch.manual_seed(0)
    fresh = evaluate(build_model("vae", (1, 8, 8)), blob_splits.test)["loss"]
    models, hist = fit_seeds(lambda: build_model("vae", (1, 8, 8)), [0, 1], blob_splits.train, cfg)
    for m in models:
        assert evaluate(m, blob_splits.test)["loss"] < 0.9 * fresh
    assert hist[0][-1]["train.kl"] != hist[1][-1]["train.kl"]


def test_unsupported_options_are_config_errors(blob_splits):
    with pytest.raises(ConfigError, match="grad_clip"):
        fit_seeds(lambda: build_model("dense", (1, 8, 8)), [0, 1], blob_splits.train,
                  TrainConfig(epochs=1, grad_clip=1.0, progress="off"))


def test_a_stack_trains_in_fit_with_validation_checkpoints_and_resume(blob_splits, tmp_path):
    cfg = TrainConfig(epochs=2, batch_size=16, progress="off", corrupt="gaussian", corrupt_level=0.1)
    build = lambda: build_model("conv", (1, 8, 8))  # noqa: E731
    full = SeedStack(build, SEEDS)
    history = fit(full, blob_splits.train, cfg, val=blob_splits.val)
    assert len(history[-1]["train.loss"]) == len(SEEDS) and len(history[-1]["val.mse"]) == len(SEEDS)
    for j, m in enumerate(full.unstack()):  # the per-seed validation figures are each model's own
        assert evaluate(m, blob_splits.val)["mse"] == pytest.approx(history[-1]["val.mse"][j], rel=1e-5)

    stopped = SeedStack(build, SEEDS)
    with pytest.raises(Crash):
        fit(stopped, blob_splits.train, cfg, val=blob_splits.val, run_dir=tmp_path, on_epoch=crash_after(1))
    torch.manual_seed(99)
    again = SeedStack(build, [5, 6, 7])  # other initial weights: the checkpoint must replace them
    again.seeds = list(SEEDS)
    resumed = fit(again, blob_splits.train, cfg, val=blob_splits.val, run_dir=tmp_path, resume=True)
    assert [r["epoch"] for r in resumed] == [1, 2]
    assert resumed[-1]["train.loss"] == history[-1]["train.loss"] and resumed[-1]["val.mse"] == history[-1]["val.mse"]
    for a, b in zip(full.state_dict().values(), again.state_dict().values()):
        assert torch.equal(a, b)


def test_a_compiled_stack_equals_the_eager_one(blob_splits, monkeypatch):
    monkeypatch.setattr(compile_cache, "BACKEND", "aot_eager")
    cfg = TrainConfig(epochs=1, batch_size=16, progress="off", channels_last=False)
    build = lambda: build_model("dense", (1, 8, 8))  # noqa: E731
    eager, _ = fit_seeds(build, SEEDS, blob_splits.train, cfg)
    compiled, _ = fit_seeds(build, SEEDS, blob_splits.train, TrainConfig(**{**cfg.__dict__, "compile": "on"}))
    for a, b in zip(eager, compiled):
        for x, y in zip(a.parameters(), b.parameters()):
            torch.testing.assert_close(x, y, rtol=1e-4, atol=1e-6)
    compile_cache.clear()
