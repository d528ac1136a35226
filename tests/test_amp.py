"""Mixed precision on the CPU: which dtype `train.amp` gives, where autocast applies, fp16 loss scaling."""
import pytest
import torch
from conftest import Crash, crash_after

from aelab import amp
from aelab.checkpoint import load_tensors
from aelab.config import TrainConfig
from aelab.engine import CHECKPOINT, evaluate, fit
from aelab.models import build_model
from aelab.models.dense import DenseAE

CPU = torch.device("cpu")


@pytest.mark.parametrize("units, auto", [("", None), ("avx512_bf16", None), ("amx", torch.bfloat16)])
def test_cpu_auto_is_bf16_only_for_conv_models_with_amx_units(monkeypatch, units, auto):
    monkeypatch.setattr(amp, "cpu_bf16_units", lambda: units)
    conv, dense = build_model("conv", (1, 8, 8)), build_model("dense", (1, 8, 8))
    assert amp.choose("auto", CPU, conv).dtype == auto
    assert amp.choose("auto", CPU, dense).dtype is None  # not measured: fp32
    assert amp.choose("on", CPU, dense).dtype == torch.bfloat16  # forced, units or not
    assert amp.choose("off", CPU, dense).dtype is None
    assert amp.choose("fp16", CPU, dense).scaled and not amp.choose("bf16", CPU, dense).scaled


def test_a_model_that_needs_fp32_gets_it_whatever_amp_says(monkeypatch):
    monkeypatch.setattr(amp, "cpu_bf16_units", lambda: "amx")
    linear = build_model("linear", (1, 8, 8))
    assert all(amp.choose(a, CPU, linear).dtype is None for a in ("auto", "on", "bf16", "fp16"))


def test_detection_reads_the_cpu_flags(monkeypatch):
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)
    for flags, want in [({"avx512f"}, ""), ({"avx512_bf16"}, "avx512_bf16"), ({"amx_bf16", "avx512_bf16"}, "amx")]:
        monkeypatch.setattr(amp, "_cpu_flags", lambda f=flags: f)
        amp.cpu_bf16_units.cache_clear()
        assert amp.cpu_bf16_units() == want
    amp.cpu_bf16_units.cache_clear()


class Probe(DenseAE):
    """Records the dtype its decoder computes in, and that of the loss it returns."""

    seen: list

    def forward(self, batch, player="model"):
        logits = self.decode(self.encode(batch["x_in"]))
        loss = self.recon_loss(logits, batch["x"])
        self.seen.append((logits.dtype, loss.dtype))
        return {"loss": loss}


def probe(linear_contract: bool = False):
    torch.manual_seed(0)
    model = Probe(DenseAE.Config(name="dense"), (1, 8, 8))
    model.needs_fp32 = linear_contract
    model.seen = []
    return model


@pytest.mark.parametrize("mode, dtype", [("bf16", torch.bfloat16), ("fp16", torch.float16), ("off", torch.float32)])
def test_autocast_covers_the_forward_and_the_loss_stays_fp32(blob_splits, mode, dtype):
    model = probe()
    fit(model, blob_splits.train, TrainConfig(epochs=1, batch_size=16, progress="off", amp=mode))
    assert set(model.seen) == {(dtype, torch.float32)}
    model.seen.clear()
    evaluate(model, blob_splits.test)  # evaluation and metrics: fp32
    assert set(model.seen) == {(torch.float32, torch.float32)}


def test_needs_fp32_is_honoured_by_fit(blob_splits):
    model = probe(linear_contract=True)
    fit(model, blob_splits.train, TrainConfig(epochs=1, batch_size=16, progress="off", amp="bf16"))
    assert set(model.seen) == {(torch.float32, torch.float32)}


def test_bf16_trains_as_well_as_fp32_on_tiny_data(blob_splits):
    losses = {}
    for mode in ("off", "bf16"):
        torch.manual_seed(0)
        model = build_model("conv", (1, 8, 8))
        fit(model, blob_splits.train, TrainConfig(epochs=3, batch_size=16, progress="off", amp=mode))
        losses[mode] = evaluate(model, blob_splits.test)["loss"]
    assert losses["bf16"] == pytest.approx(losses["off"], rel=0.02)


def test_fp16_scaler_state_is_checkpointed_and_resumed_exactly(blob_splits, tmp_path):
    cfg = TrainConfig(epochs=3, batch_size=16, progress="off", amp="fp16")
    torch.manual_seed(0)
    full = build_model("conv", (1, 8, 8))
    (tmp_path / "full").mkdir()
    fit(full, blob_splits.train, cfg, run_dir=tmp_path / "full")

    torch.manual_seed(0)
    model = build_model("conv", (1, 8, 8))
    with pytest.raises(Crash):
        fit(model, blob_splits.train, cfg, run_dir=tmp_path, on_epoch=crash_after(2))
    _, doc = load_tensors(tmp_path / CHECKPOINT)
    assert doc["scalers"]["model"]["scale"] < 65536.0  # fp16 overflowed early and the scale came down
    torch.manual_seed(1)
    again = build_model("conv", (1, 8, 8))
    fit(again, blob_splits.train, cfg, run_dir=tmp_path, resume=True)
    for a, b in zip(full.state_dict().values(), again.state_dict().values()):
        assert torch.equal(a, b)
    # the scaler went on from its saved state: scale and growth tracker as in the uninterrupted run
    assert load_tensors(tmp_path / CHECKPOINT)[1]["scalers"] == load_tensors(tmp_path / "full" / CHECKPOINT)[1]["scalers"]


def test_fp16_overflow_is_the_scalers_not_a_bad_step(blob_splits):
    """With train.max_bad_steps in fp16, an inf gradient (the scale is too high) lowers the scale; only a
    non-finite loss counts as a bad step."""
    from test_engine import NaNOnce

    history = fit(NaNOnce("conv"), blob_splits.train,  # conv: its fp16 gradients overflow at first (see above)
                  TrainConfig(epochs=2, batch_size=16, progress="off", amp="fp16", max_bad_steps=1))
    assert history[-1]["skipped"] == 1 and history[-1]["train.loss"] < history[0]["train.loss"]
