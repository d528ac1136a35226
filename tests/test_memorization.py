"""The adversarial-decoder model (seed 000) and the memorisation study: players, schedules, signs,
measures on hand-made cases, resume, and the study end to end on tiny digits."""
from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

from aelab.config import TrainConfig
from aelab.engine import FitState, _Stepper, fit
from aelab.models import build_model
from aelab.models.adversarial import AdversarialConfig
from aelab.studies import memorization_measures as ms
from aelab.studies import run_study


def model_of(**kw):
    torch.manual_seed(0)
    return build_model(AdversarialConfig(name="adversarial", **kw), (1, 8, 8), 4)


def batch_of(n: int = 16) -> dict:
    g = torch.Generator().manual_seed(1)
    x = torch.rand(n, 1, 8, 8, generator=g)
    return {"x": x, "x_in": x, "y": torch.arange(n) % 4}


def snapshot(params) -> list[torch.Tensor]:
    return [p.detach().clone() for p in params]


def changed(before, params) -> bool:
    return any(not torch.equal(b, p) for b, p in zip(before, params))


def test_each_player_moves_only_its_own_weights():
    model = model_of(lam=1.0, decoder_every=2)
    cls, dec = (p.params for p in model.players())
    assert {id(p) for p in cls}.isdisjoint(id(p) for p in dec) and len(cls) + len(dec) == len(list(model.parameters()))
    stepper = _Stepper(model, TrainConfig(lr=1e-2), torch.device("cpu"))
    c0, d0 = snapshot(cls), snapshot(dec)
    stepper(batch_of(), 1, FitState())  # step 1: not the decoder's turn, though lam*R sends gradients to it
    assert changed(c0, cls) and not changed(d0, dec)
    # the decoder's own loss reaches only the decoder (the representation is detached)
    model.zero_grad(set_to_none=True)
    model(batch_of(), "decoder")["loss"].backward()
    assert all(p.grad is None for p in cls) and all(p.grad is not None for p in dec)


def test_every_k_and_m_steps_schedule():
    model = model_of(decoder_every=3, decoder_steps=2)
    stepper = _Stepper(model, TrainConfig(), torch.device("cpu"))
    state = FitState()
    for step in range(9):
        stepper(batch_of(), step, state)
    def adam_steps(name):
        return int(next(iter(stepper.opts[name].state.values()))["step"])
    assert adam_steps("classifier") == 9 and adam_steps("decoder") == 3 * 2


def test_lambda_warmup_counts_training_steps_only():
    model = model_of(lam=2.0, warmup_steps=10)
    for _ in range(5):
        model(batch_of(), "classifier")
    model.eval()
    model(batch_of(), "classifier")  # evaluation must not advance the ramp
    assert model.lam_now().item() == pytest.approx(1.0)
    model.train()
    for _ in range(10):
        model(batch_of(), "classifier")
    assert model.lam_now().item() == pytest.approx(2.0)


def r_after_step(**kw) -> tuple[float, float]:
    """R before and after one small step of the classifier along its R term's gradient alone."""
    model = model_of(**kw)
    cls = model.players()[0].params
    out = model(batch_of(), "classifier")
    term = out["loss"] - out["ce"]
    grads = torch.autograd.grad(term, cls, allow_unused=True)
    with torch.no_grad():
        for p, g in zip(cls, grads):
            if g is not None:
                p -= 0.05 * g / (g.norm() + 1e-12)
    return out["R"].item(), model(batch_of(), "classifier")["R"].item()


@pytest.mark.parametrize("mode,sign", [("minus", +1), ("plus", -1), ("reversal", +1), ("hinge", +1)])
def test_each_mode_pushes_R_the_right_way(mode, sign):
    before, after = r_after_step(lam=1.0, mode=mode, hinge_target=10.0)  # hinge active: R < R*
    assert sign * (after - before) > 0, (mode, before, after)


def test_hinge_is_flat_above_its_target():
    model = model_of(lam=1.0, mode="hinge", hinge_target=0.0)
    out = model(batch_of(), "classifier")
    assert torch.equal(out["loss"], out["ce"])


def test_gradient_reversal_equals_minus_for_the_classifier():
    grads = {}
    for mode in ("minus", "reversal"):
        model = model_of(lam=0.7, mode=mode)
        cls = model.players()[0].params
        grads[mode] = torch.autograd.grad(model(batch_of(), "classifier")["loss"], cls, allow_unused=True)
    for a, b in zip(grads["minus"], grads["reversal"]):
        assert (a is None and b is None) or torch.allclose(a, b, atol=1e-6)


def test_probe_scale_and_class_mean_error():
    assert ms.probe_scale(0.08, 0.08, 0.02) == 0.0
    assert ms.probe_scale(0.02, 0.08, 0.02) == 1.0
    assert ms.probe_scale(0.05, 0.08, 0.02) == pytest.approx(0.5)
    assert np.isnan(ms.probe_scale(0.05, 0.02, 0.08))  # an AE worse than the class means: no scale
    from aelab.data.device import DeviceData
    x = torch.tensor([[[[0]]], [[[100]]], [[[200]]], [[[250]]]], dtype=torch.uint8)
    train = DeviceData(x, torch.tensor([0, 0, 1, 1]))
    test = DeviceData(torch.tensor([[[[50]]], [[[225]]]], dtype=torch.uint8), torch.tensor([0, 1]))
    err, means = ms.class_mean_error(train, test, 2)
    assert err == pytest.approx(0.0, abs=1e-10) and means.shape == (2, 1, 1, 1)


def test_mia_advantage_hand_made():
    members = np.array([0.1, 0.2, 0.3, 2.0])  # threshold = their mean, 0.65: 3 of 4 below
    nonmembers = np.array([0.5, 1.0, 2.0, 3.0])  # 1 of 4 below
    assert ms.mia_advantage(members, nonmembers) == pytest.approx(0.5)
    assert ms.mia_advantage(members, members) == 0.0


def test_ece_hand_made():
    probs = np.array([[0.8, 0.2]] * 4 + [[0.45, 0.55]] * 2)
    y = np.array([0, 0, 1, 1, 1, 1])  # conf 0.8 bin: acc 0.5; conf 0.55 bin: acc 1.0
    assert ms.ece(probs, y) == pytest.approx(4 / 6 * 0.3 + 2 / 6 * 0.45)
    assert ms.ece(np.eye(3), np.arange(3)) == 0.0


def test_label_noise_bookkeeping():
    y = np.arange(100) % 10
    noisy, mask = ms.noisy_labels(y, 0.2, 10, seed=3)
    assert mask.sum() == 20 and (noisy[mask] != y[mask]).all() and (noisy[~mask] == y[~mask]).all()
    assert noisy.min() >= 0 and noisy.max() < 10
    again, mask2 = ms.noisy_labels(y, 0.2, 10, seed=3)
    assert (again == noisy).all() and (mask2 == mask).all()


def test_checkpoint_resume_round_trip(tmp_path, blob_splits):
    cfg = TrainConfig(epochs=2, batch_size=32, progress="off", compile="off", schedule="constant")  # lr independent of the epoch count
    straight = model_of(lam=1.0, warmup_steps=7, decoder_every=2)
    straight_hist = fit(straight, blob_splits.train, cfg, seed=0)
    resumed = model_of(lam=1.0, warmup_steps=7, decoder_every=2)
    fit(resumed, blob_splits.train, dataclasses.replace(cfg, epochs=1), seed=0, run_dir=tmp_path)
    resumed = model_of(lam=1.0, warmup_steps=7, decoder_every=2)  # a fresh process: all from the checkpoint
    hist = fit(resumed, blob_splits.train, cfg, seed=0, run_dir=tmp_path, resume=True)
    assert resumed.step.item() == straight.step.item() == straight_hist[-1]["step"]
    for (k, a), b in zip(straight.state_dict().items(), resumed.state_dict().values()):
        torch.testing.assert_close(a, b, msg=k)
    assert hist[-1]["train.classifier.R"] == pytest.approx(straight_hist[-1]["train.classifier.R"])


def test_study_end_to_end_on_tiny_digits(tmp_path):
    path = run_study("memorization", overrides=["workers=1", 
        "data=digits", f"out_dir={tmp_path}", "seeds=2", "sizes=(100,300)", "lambdas=(-1.0,0.0,1.0)",
        "bounded=('hinge',)", "steps=12", "probe_features=64", "tune_wd=(0.05,)", "tune_dropout=(0.3,)",
        "tune_vib=(0.001,)", "noise_sizes=(100,)", "headline_lambda=1.0", "train.batch_size=64"])
    metrics = json.loads((path / "metrics.json").read_text())
    assert set(metrics["verdict"]) == {"N=100", "N=300"}
    words = ("better", "worse", "no measurable difference")
    for key, sentence in metrics["verdict"].items():
        d = metrics[key]["vs_plain"]["lam=+1"]["test_acc"]
        assert d["verdict"] in words and len(d["ci95"]) == 2 and d["n"] == 2
        assert f"test accuracy {d['verdict']}" in sentence  # the sentence is read off the interval
        assert set(metrics[key]["arms"]) >= {"plain", "lam=+1", "lam=-1", "hinge lam=1", "weight decay", "dropout", "vib"}
    assert "noise_memorised" in metrics["N=100"]["arms"]["plain"]
    assert "noise_memorised" not in metrics["N=300"]["arms"]["plain"]
    figures = {p.name for p in (path / "figures").iterdir()}
    assert {"probe_reconstructions.png", "test_acc_vs_lambda.png", "curve_R.png"} <= figures
    # every training run (arms, tuning cells, the reference AE) stored its status
    assert sum(metrics["status"]["plain"].values()) == 4 and sum(metrics["status"]["tune:vib"].values()) == 2
    assert sum(metrics["status"]["reference-ae"].values()) == 1


def test_probe_score_verdicts_say_higher_or_lower_not_better():
    from aelab.studies.memorization_report import _word

    up = {"mean": 0.2, "ci95": [0.1, 0.3], "n": 3}
    assert _word(up, "probe_score") == "higher"  # more of the input kept: the SAE's aim, the penalty's failure
    assert _word({**up, "ci95": [-0.3, -0.1]}, "probe_score") == "lower"
    assert _word(up, "mia_adv") == "worse" and _word(up, "test_acc") == "better"


def test_closed_form_probe_reads_what_the_code_holds():
    """A code that is the image itself is decoded almost exactly; a constant code only to the mean image."""
    from aelab.data.device import DeviceData

    g = torch.Generator().manual_seed(0)
    x = (torch.rand(600, 1, 4, 4, generator=g) * 255).to(torch.uint8)
    data = DeviceData(x[:400], torch.zeros(400, dtype=torch.int64))
    test = DeviceData(x[400:], torch.zeros(200, dtype=torch.int64))

    class Code(torch.nn.Module):
        def __init__(self, fn):
            super().__init__()
            self.fn = fn

        def encode(self, xb):
            return self.fn(xb)

    err_keep, recon = ms.train_probe(Code(lambda xb: xb.flatten(1)), data, test, 64, seed=0)
    err_none, _ = ms.train_probe(Code(lambda xb: torch.zeros(len(xb), 3)), data, test, 64, seed=0)
    pixel_var = float((x[400:].float() / 255).var())
    assert err_keep < 0.01 * pixel_var and recon.shape == (200, 1, 4, 4)
    assert err_none == pytest.approx(pixel_var, rel=0.1)  # nothing kept: the mean image, error = variance
