"""The Shared Encoding Network (`model=sen`) and its study, on tiny CPU tensors and 8x8 digits.

    .venv/bin/pytest tests/test_sen.py -q
"""
from __future__ import annotations

import json

import pytest
import torch

from aelab.data.device import DeviceData
from aelab.errors import ConfigError
from aelab.models import build_model
from aelab.models.sen import SENConfig
from aelab.studies import run_study
from aelab.studies.sen import frechet_pca, with_labels

SHAPE = (1, 8, 8)


def sen(**kw):
    torch.manual_seed(0)
    return build_model(SENConfig(name="sen", **kw), SHAPE, 10)


def batch(n: int = 8, labelled: bool = True) -> dict[str, torch.Tensor]:
    x = torch.rand(n, *SHAPE)
    return {"x": x, "x_in": x, "y": torch.arange(n) % 10 if labelled else torch.full((n,), -1)}


@pytest.mark.parametrize("route", ["routed", "direct"])
def test_each_player_step_changes_only_its_parameters(route):
    model = sen(route=route, dropout=0.0)
    model.set_pool(torch.randint(0, 256, (20, *SHAPE), dtype=torch.uint8), torch.arange(20) % 10)
    names = {id(p): n for n, p in model.named_parameters()}
    for player in model.players():
        before = {n: p.detach().clone() for n, p in model.named_parameters()}
        opt = torch.optim.SGD(player.params, lr=0.1)
        model.zero_grad(set_to_none=True)
        model(batch(), player.name)["loss"].backward()
        opt.step()
        changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
        own = {names[id(p)] for p in player.params}
        assert changed and changed <= own, (player.name, changed - own)
    # who owns what: the classifier and the AE share the encoder; the generator owns only itself
    own = {p.name: {names[id(q)].split(".")[0] for q in p.params} for p in model.players()}
    assert own["ae"] == {"encoder", "decoder"} and own["classifier"] == {"encoder", "classifier"}
    assert own["generator"] == {"generator"}
    assert own["discriminator"] == ({"discriminator", "encoder"} if route == "routed" else {"discriminator"})


def test_routed_generator_goes_through_decoder_and_encoder_direct_does_not():
    for route, through in [("routed", True), ("direct", False)]:
        model = sen(route=route)
        model.zero_grad(set_to_none=True)
        model(batch(), "generator")["loss"].backward()
        assert (model.decoder[0].weight.grad is not None) == through, route
        assert (model.encoder[0].weight.grad is not None) == through, route
        assert model.generator[0].weight.grad is not None


def test_directed_generator_conditioning():
    model = sen(directed=True, noise_dim=5, latent_dim=7)
    assert model.generator[0].in_features == 5 + 10
    labels = torch.tensor([3, 3, 7])
    torch.manual_seed(1)
    e, y = model.sample_codes(3, labels)
    assert e.shape == (3, 7) and torch.equal(y, labels) and ((e >= 0) & (e <= 1)).all()
    assert model.generate(3, labels).shape == (3, *SHAPE)
    torch.manual_seed(1)
    e2, _ = model.sample_codes(3, torch.tensor([4, 4, 4]))  # same noise, other class: other code
    assert not torch.allclose(e, e2)
    assert "directed" in model(batch(), "generator")
    plain = sen(directed=False, noise_dim=5)
    assert plain.generator[0].in_features == 5 and "directed" not in plain(batch(), "generator")


def test_pseudo_label_schedule_and_threshold():
    model = sen(pseudo=True, pl_start=10, pl_ramp=20, pl_weight=2.0, pl_threshold=0.9)
    for steps, w in [(0, 0.0), (10, 0.0), (20, 1.0), (30, 2.0), (100, 2.0)]:
        model.clf_steps.fill_(steps)
        assert float(model.pl_weight_now()) == pytest.approx(w)
    logits = torch.tensor([[10.0, 0, 0], [0.1, 0, 0], [10.0, 0, 0], [0, 0, 10.0]])  # conf ~1, ~0.35, ~1, ~1
    unlabelled = torch.tensor([True, True, True, False])
    loss, used = model.pseudo_loss(logits, unlabelled)
    assert float(used) == pytest.approx(2 / 3)  # rows 0 and 2 pass the threshold; row 3 is labelled
    model.clf_steps.zero_()
    model(batch(labelled=False), "classifier")
    model(batch(labelled=False), "classifier")
    assert int(model.clf_steps) == 2 and "clf_steps" in model.state_dict()  # resumes with the checkpoint


def test_classifier_round_draws_from_the_labelled_pool():
    model = sen(clf_batch=16)
    assert float(model(batch(labelled=False), "classifier")["sup"].detach()) == 0.0  # no labels anywhere
    model.set_pool(torch.randint(0, 256, (30, *SHAPE), dtype=torch.uint8), torch.arange(30) % 10)
    assert float(model(batch(labelled=False), "classifier")["sup"].detach()) > 0.0
    with pytest.raises(ConfigError):
        model.set_pool(torch.rand(3, *SHAPE), torch.arange(3))


def test_labelled_pool_is_class_balanced():
    y = torch.arange(500) % 10
    data = with_labels(DeviceData(torch.zeros(500, *SHAPE, dtype=torch.uint8), y), 100, 10, seed=3)
    pool = data.labelled()
    assert len(pool) == 100 and torch.equal(torch.bincount(pool.y), torch.full((10,), 10))
    assert torch.equal(pool.y, y[data.y >= 0]) and int((data.y == -1).sum()) == 400


def test_frechet_pca_is_zero_on_itself_and_grows_with_a_shift():
    a = torch.randn(300, 30, generator=torch.Generator().manual_seed(0)).numpy()
    assert abs(frechet_pca(a, a)) < 1e-6 and frechet_pca(a + 1.0, a) > frechet_pca(a + 0.1, a) > 0.001


def test_bad_config_is_one_line():
    with pytest.raises(ConfigError):
        sen(channels=(8, 8))
    with pytest.raises(ConfigError):
        sen(ae_round=False, gan_round=False, clf_round=False)


def test_study_end_to_end_on_digits(tmp_path):
    over = ["data=digits", "workers=1", f"out_dir={tmp_path}", "name=s", "seeds=2", "labels=[10, 20]", "n_train=160",
            "steps=10", "train.batch_size=32", "milestones=[1, 2]", "batch_sizes=[4, 32]", "bs_images=64",
            "model.channels=[8, 8, 8]", "model.hidden=16", "model.clf_batch=16", "model.pl_start=0"]
    path = run_study("sen", None, over)
    m = json.loads((path / "metrics.json").read_text())
    for arm, n in [("sen", 10), ("sen+pl", 10), ("supervised", 20), ("pretrain-finetune", 20), ("no-gan", 10),
                   ("no-ae", 10), ("no-aug", 10), ("direct", 10)]:
        assert m["accuracy"][arm][str(n)]["n"] == 2, (arm, n)
    assert set(m["accuracy"]["no-gan"]) == {"10"} and "sen+pl - no-gan @10" in m["comparisons"]
    # the bar's arm is the SEN arm with the best validation accuracy, and the bar reports its test accuracy
    bar, rows = m["bar"], {}
    for f in (path / "cells").glob("sen*.n10.*.json"):
        doc = json.loads(f.read_text())
        rows.setdefault(doc["cell"]["arm"], []).append(doc["result"])
    best = max(rows, key=lambda a: sum(r["val_acc"] for r in rows[a]))
    assert bar["best_arm"] == best and bar["labels"] == 10
    assert bar["mean"] == pytest.approx(sum(r["test_acc"] for r in rows[best]) / 2)
    assert {"fd@4", "fd@32", "verdict"} <= set(m["batch_size"])
    assert sum(m["status"]["sen+pl"].values()) == 4 and sum(m["status"]["pretrain-finetune"].values()) == 4
    figs = {p.name for p in (path / "figures").iterdir()}
    assert {"accuracy_vs_labels.png", "milestone_epoch1.png", "milestone_epoch2.png", "directed_grid.png",
            "latent_morph.gif", "batch_size.png"} <= figs
    with pytest.raises(ConfigError):
        run_study("sen", None, over[:3] + ["name=bad", "labels=[15]"])
    assert not (tmp_path / "bad").exists()  # refused before a folder is claimed
