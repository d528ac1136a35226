import math
import signal
from dataclasses import replace

import pytest
import torch
from conftest import Crash, crash_after
from torch import nn

from aelab import compile_cache
from aelab.config import TrainConfig
from aelab.engine import TrainingDiverged, TrainingInterrupted, encode_all, evaluate, fit, lr_at
from aelab.models import Autoencoder, Player, build_model

CFG = dict(epochs=3, batch_size=16, progress="off")


def weights(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def same(a, b):
    return all(torch.equal(a[k], b[k]) for k in a)


def trained(splits, seed=0, **kw):
    torch.manual_seed(seed)
    model = build_model("conv", (1, 8, 8))
    model.history = fit(model, splits.train, TrainConfig(**{**CFG, **kw}), val=splits.val, seed=seed)
    return model


def test_training_lowers_loss_and_is_deterministic(blob_splits):
    torch.manual_seed(0)
    fresh = evaluate(build_model("conv", (1, 8, 8)), blob_splits.test)["loss"]
    a, b = trained(blob_splits), trained(blob_splits)
    assert evaluate(a, blob_splits.test)["loss"] < 0.9 * fresh
    assert same(weights(a), weights(b))  # same seed and config: bit for bit on the CPU
    assert not same(weights(a), weights(trained(blob_splits, seed=1)))


def test_resume_after_crash_matches_uninterrupted_run(blob_splits, tmp_path):
    full = weights(trained(blob_splits, corrupt="dropout", corrupt_level=0.2))

    torch.manual_seed(0)
    model = build_model("conv", (1, 8, 8))
    cfg = TrainConfig(**CFG, corrupt="dropout", corrupt_level=0.2)
    with pytest.raises(Crash):
        fit(model, blob_splits.train, cfg, val=blob_splits.val, run_dir=tmp_path, on_epoch=crash_after(2))
    torch.manual_seed(123)  # the resumed process starts from a different state: the checkpoint must restore it
    again = build_model("conv", (1, 8, 8))
    history = fit(again, blob_splits.train, cfg, val=blob_splits.val, run_dir=tmp_path, resume=True)
    assert [r["epoch"] for r in history] == [1, 2, 3]
    assert same(full, weights(again))


def test_schedules():
    cfg = TrainConfig(lr=1.0, schedule="onecycle")
    assert lr_at(cfg, 0, 100) == pytest.approx(0.04) and lr_at(cfg, 30, 100) == pytest.approx(1.0)
    assert lr_at(cfg, 100, 100) == pytest.approx(1e-4)
    assert lr_at(TrainConfig(lr=1.0, schedule="cosine"), 50, 100) == pytest.approx(0.5)
    assert lr_at(TrainConfig(lr=0.5, schedule="constant"), 77, 100) == 0.5
    hold = TrainConfig(lr=1.0, schedule="hold-linear")  # the ladder paper's: 100 epochs flat, 50 down to 0
    assert [lr_at(hold, s, 150) for s in (0, 100, 125, 150)] == pytest.approx([1.0, 1.0, 0.5, 0.0])


def test_early_stopping_restores_best(blob_splits):
    model = trained(blob_splits, epochs=30, patience=2, lr=0.05, schedule="constant")  # noisy: val wobbles
    val = [r["val.loss"] for r in model.history]
    assert len(val) < 30 and min(val) < val[-1]  # stopped early, after epochs without gain
    assert evaluate(model, blob_splits.val)["loss"] == pytest.approx(min(val), rel=1e-5)  # best weights back


class Exploding(Autoencoder):
    """A model whose loss turns NaN on the third step, to check the engine stops and names the step."""

    def __init__(self):
        super().__init__(build_model("dense", (1, 8, 8)).cfg, (1, 8, 8))
        self.w = nn.Parameter(torch.ones(()))
        self.calls = 0

    def forward(self, batch, player="model"):
        self.calls += 1
        bad = torch.tensor(math.nan if self.calls >= 3 else 1.0)
        return {"loss": self.w * bad, "recon": bad}


def test_divergence_names_step_and_terms(blob_splits, tmp_path):
    with pytest.raises(TrainingDiverged, match=r"diverged at step 2 .*recon=nan"):
        fit(Exploding(), blob_splits.train, TrainConfig(**CFG), run_dir=tmp_path)
    assert not (tmp_path / "checkpoint.safetensors").exists()  # nothing bad was saved


class BadMetric(Exploding):
    """The loss stays finite; only a logged term turns NaN on the third step."""

    def forward(self, batch, player="model"):
        out = super().forward(batch)
        return {"loss": self.w * 1.0, "recon": out["recon"]}


def test_a_non_finite_logged_term_stops_training_too(blob_splits, tmp_path):
    with pytest.raises(TrainingDiverged, match=r"diverged at epoch 1 .*recon=nan"):
        fit(BadMetric(), blob_splits.train, TrainConfig(**CFG), run_dir=tmp_path)
    assert not (tmp_path / "checkpoint.safetensors").exists()


def test_skip_bad_steps_up_to_a_limit(blob_splits):
    with pytest.raises(TrainingDiverged, match="after skipping 2"):
        fit(Exploding(), blob_splits.train, TrainConfig(**CFG, max_bad_steps=2))


class TwoPlayers(Autoencoder):
    """The autoencoder's encoder and decoder as two players, the decoder stepping every 2nd step."""

    def __init__(self):
        inner = build_model("dense", (1, 8, 8))
        super().__init__(inner.cfg, (1, 8, 8))
        self.encoder, self.decoder = inner.encoder, inner.decoder
        self.turns = {"enc": 0, "dec": 0}

    def players(self):
        return [Player("enc", list(self.encoder.parameters())),
                Player("dec", list(self.decoder.parameters()), every=2, steps=3)]

    def forward(self, batch, player="model"):
        if player in self.turns:
            self.turns[player] += 1
        return super().forward(batch)


def test_players_step_on_their_own_schedule(blob_splits):
    model = TwoPlayers()
    history = fit(model, blob_splits.train, TrainConfig(epochs=1, batch_size=32, progress="off"))
    steps = history[-1]["step"]
    assert model.turns == {"enc": steps, "dec": 3 * math.ceil(steps / 2)}
    assert "train.enc.loss" in history[-1] and "train.dec.loss" in history[-1]


def test_encode_all_shape(blob_splits):
    model = build_model("conv", (1, 8, 8))
    assert encode_all(model, blob_splits.test, batch_size=7).shape == (len(blob_splits.test), 30)


class NaNOnce(Autoencoder):
    """An autoencoder whose third step's loss is NaN; it records every finite loss it returns."""

    def __init__(self, name="dense"):
        inner = build_model(name, (1, 8, 8))
        super().__init__(inner.cfg, (1, 8, 8))
        self.encoder, self.decoder = inner.encoder, inner.decoder
        self.calls, self.finite = 0, []

    def forward(self, batch, player="model"):
        out = super().forward(batch)
        if self.training and torch.is_grad_enabled():
            self.calls += 1
            if self.calls == 3:
                return {k: v * math.nan for k, v in out.items()}
            self.finite.append(float(out["loss"].detach()))
        return out


def test_a_skipped_step_counts_in_no_sum(blob_splits, tmp_path, monkeypatch):
    """train.max_bad_steps: the row is the mean over the good steps, and an interrupt after a skipped
    step still writes its checkpoint (a NaN in the sums used to block both)."""
    model = NaNOnce()
    history = fit(model, blob_splits.train, TrainConfig(epochs=1, batch_size=16, progress="off", max_bad_steps=2))
    assert history[-1]["skipped"] == 1
    assert history[-1]["train.loss"] == pytest.approx(sum(model.finite) / len(model.finite), rel=1e-5)

    calls = {"n": 0}
    orig = type(blob_splits.train).batch

    def batch(self, idx):  # SIGINT while the 5th batch is read: two steps after the skipped one
        calls["n"] += 1
        if calls["n"] == 5:
            signal.raise_signal(signal.SIGINT)
        return orig(self, idx)

    monkeypatch.setattr(type(blob_splits.train), "batch", batch)
    with pytest.raises(TrainingInterrupted):
        fit(NaNOnce(), blob_splits.train, TrainConfig(epochs=2, batch_size=16, progress="off", max_bad_steps=2),
            run_dir=tmp_path)
    assert (tmp_path / "checkpoint.safetensors").exists()


def test_compile_once_per_architecture_across_fits(blob_splits, monkeypatch):
    """As a study trains: many fresh models of a few architectures. Each architecture is traced once;
    later fits reuse its graph with their own weights swapped in. Ten architectures (beyond dynamo's
    recompile limit of 8 per code object) still get one graph each, none falls back to eager."""
    from torch._dynamo.utils import counters

    monkeypatch.setattr(compile_cache, "BACKEND", "aot_eager")  # the count is the same; inductor is slow here
    compile_cache.clear()
    torch._dynamo.reset()
    counters.clear()
    cfg = TrainConfig(epochs=1, batch_size=16, progress="off", compile="on")

    def dense(latent, seed):
        torch.manual_seed(seed)
        model = build_model("dense", (1, 8, 8))
        model.cfg.latent_dim = latent
        return build_model(model.cfg, (1, 8, 8))

    models = [dense(8, s) for s in range(3)]
    for s, m in enumerate(models):
        fit(m, blob_splits.train, cfg, seed=s)
    assert counters["stats"]["unique_graphs"] == 1
    for latent in range(9, 18):
        fit(dense(latent, 0), blob_splits.train, cfg)
    fit(dense(8, 5), blob_splits.train, cfg)
    assert counters["stats"]["unique_graphs"] == 10
    eager = dense(8, 2)
    fit(eager, blob_splits.train, replace(cfg, compile="off"), seed=2)
    for a, b in zip(eager.parameters(), models[2].parameters()):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
    compile_cache.clear()
    torch._dynamo.reset()


def test_steps_train_exactly_that_many_updates_whatever_the_data_size(blob_splits):
    """train.steps: the same updates on a small and a large set; the last pass is cut short."""
    per_epoch = len(blob_splits.train) // 16
    steps = 2 * per_epoch + 3  # two whole passes and three batches of a third
    model = trained(blob_splits, steps=steps, epochs=1)
    assert [r["step"] for r in model.history] == [per_epoch, 2 * per_epoch, steps]
    small = blob_splits.train.subset(torch.arange(32))  # 2 batches a pass: many more passes, same steps
    torch.manual_seed(0)
    history = fit(build_model("conv", (1, 8, 8)), small, TrainConfig(**{**CFG, "steps": 9}), seed=0)
    assert [r["step"] for r in history][-1] == 9 and len(history) == 5


def test_eval_every_gives_curve_points_within_a_pass_and_at_the_last_step(blob_splits):
    points = []
    torch.manual_seed(0)
    fit(build_model("conv", (1, 8, 8)), blob_splits.train,
        TrainConfig(**{**CFG, "steps": 10, "eval_every": 4}), val=blob_splits.val, on_eval=points.append)
    assert [p["step"] for p in points] == [4, 8, 10]
    assert all(math.isfinite(p["val.loss"]) for p in points)



def test_passes_shorter_than_eval_every_validate_only_at_its_points(blob_splits):
    """A training set of one batch: 40 one-step passes, validated at steps 10, 20, 30, 40, not 40 times."""
    small = blob_splits.train.subset(torch.arange(16))
    torch.manual_seed(0)
    history = fit(build_model("conv", (1, 8, 8)), small, TrainConfig(**{**CFG, "steps": 40, "eval_every": 10}),
                  val=blob_splits.val)
    assert len(history) == 40
    assert [r["step"] for r in history if "val.loss" in r] == [10, 20, 30, 40]

def test_resume_keeps_the_curve_points(blob_splits, tmp_path):
    cfg = TrainConfig(**{**CFG, "eval_every": 5})
    torch.manual_seed(0)
    model = build_model("conv", (1, 8, 8))
    with pytest.raises(Crash):
        fit(model, blob_splits.train, cfg, val=blob_splits.val, run_dir=tmp_path, on_epoch=crash_after(2))
    points = []
    torch.manual_seed(0)
    fit(build_model("conv", (1, 8, 8)), blob_splits.train, cfg, val=blob_splits.val, run_dir=tmp_path,
        resume=True, on_eval=points.append)
    full = []
    torch.manual_seed(0)
    fit(build_model("conv", (1, 8, 8)), blob_splits.train, cfg, val=blob_splits.val, on_eval=full.append)
    assert points == full[len(full) - len(points):] and len(points) < len(full)
