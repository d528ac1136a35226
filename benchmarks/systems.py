"""The same networks, the same loss, trained three ways: aelab's engine, pythae, a plain DataLoader loop.

Each `Spec` builds an encoder and a decoder; every system gets a deep copy of the same initial weights.
The loss is pythae's (so pythae runs unmodified): AE = squared error summed per image, mean over the
batch; VAE = 0.5 * that + KL. Decoders output probabilities (pythae's convention; a sigmoid is added
to aelab-style logit decoders). Every system returns (training seconds, samples, recon function).
"""
from __future__ import annotations

import copy
import functools
import tempfile
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from torch import nn

from aelab.config import TrainConfig
from aelab.data.device import DeviceData
from aelab.engine import fit
from aelab.models.base import AEConfig, Autoencoder
from aelab.models.blocks import Flatten, Unflatten, conv_decoder, conv_encoder

from common import Clock, sync


@dataclass
class Spec:
    name: str
    build: Callable[[], tuple[nn.Module, nn.Module]]  # fresh (encoder, decoder); decoder -> probabilities
    vae: bool
    latent: int


class Probs(nn.Module):
    """A logit decoder followed by a sigmoid: (B, D) -> probabilities (B, 1, 28, 28)."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, z):
        return torch.sigmoid(self.net(z))


class Unwrap(nn.Module):
    """A pythae network (returns ModelOutput) as a plain one: VAE encoder -> cat(mu, logvar)."""

    def __init__(self, net: nn.Module, vae_encoder: bool):
        super().__init__()
        self.net, self.vae_encoder = net, vae_encoder

    def forward(self, x):
        out = self.net(x)
        return torch.cat([out.embedding, out.log_covariance], 1) if self.vae_encoder else out.reconstruction


def dense() -> tuple[nn.Module, nn.Module]:
    """Model 1: the Keras example's 784-32-784 (ReLU code, sigmoid output)."""
    return nn.Sequential(Flatten(), nn.Linear(784, 32), nn.ReLU()), Probs(nn.Sequential(nn.Linear(32, 784), Unflatten((1, 28, 28))))


def small_conv() -> tuple[nn.Module, nn.Module]:
    """Model 2: strided convs 16-32-64 with BatchNorm, latent 32 (about 100k parameters)."""
    enc, sizes = conv_encoder((1, 28, 28), (16, 32, 64), 32)
    return enc, Probs(conv_decoder((1, 28, 28), (16, 32, 64), sizes, 32))


def pythae_conv_vae() -> tuple[nn.Module, nn.Module]:
    """Model 3: pythae's own MNIST benchmark networks (17.2M parameters, latent 16)."""
    from pythae.models import VAEConfig
    from pythae.models.nn.benchmarks.mnist import Decoder_Conv_AE_MNIST, Encoder_Conv_VAE_MNIST

    cfg = VAEConfig(input_dim=(1, 28, 28), latent_dim=16)
    return Unwrap(Encoder_Conv_VAE_MNIST(cfg), True), Unwrap(Decoder_Conv_AE_MNIST(cfg), False)


SPECS = {1: Spec("dense 784-32-784", dense, False, 32), 2: Spec("small conv AE", small_conv, False, 32),
         3: Spec("pythae conv VAE (17.2M)", pythae_conv_vae, True, 16)}


def loss_terms(enc: nn.Module, dec: nn.Module, x: torch.Tensor, vae: bool) -> torch.Tensor:
    """pythae's losses, written once for aelab and the plain loop."""
    h = enc(x)
    if not vae:
        return (dec(h).float() - x).square().flatten(1).sum(1).mean()
    mu, logvar = h.float().chunk(2, dim=1)
    z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)
    recon = 0.5 * (dec(z).float() - x).square().flatten(1).sum(1)
    kl = -0.5 * (1 + logvar - mu.square() - logvar.exp()).sum(1)
    return (recon + kl).mean()


def recon_fn(enc: nn.Module, dec: nn.Module, vae: bool):
    """x -> reconstruction probabilities (the posterior mean for a VAE), in eval mode."""
    enc.eval(), dec.eval()
    return lambda x: dec(enc(x).float().chunk(2, 1)[0]) if vae else dec(enc(x))


class AelabModel(Autoencoder):
    """The spec's networks under aelab's model contract, so `engine.fit` trains them."""

    def __init__(self, enc: nn.Module, dec: nn.Module, vae: bool):
        super().__init__(AEConfig(name="bench", recon="mse"), (1, 28, 28))
        self.encoder, self.decoder, self.vae = enc, dec, vae

    def forward(self, batch, player="model"):
        return {"loss": loss_terms(self.encoder, self.decoder, batch["x_in"], self.vae)}


def train_aelab(nets, spec: Spec, train: DeviceData, epochs: int, bsz: int, seed: int, device: str, **options):
    """aelab's engine with its defaults (compile and amp `auto`), or `options` (compile="on", amp="bf16")."""
    model = AelabModel(*nets, spec.vae)
    cfg = TrainConfig(epochs=epochs, batch_size=bsz, optimizer="adam", lr=1e-3, schedule="constant", progress="off",
                      **options)
    with Clock(device) as clock:
        fit(model, train, cfg, seed=seed)
    return clock.seconds, epochs * (len(train) // bsz) * bsz, recon_fn(model.encoder, model.decoder, spec.vae)


def aelab_arm(**options) -> Callable:
    """An aelab system with TrainConfig `options`; `options` is kept on it for the warm-up."""
    trainer = functools.partial(train_aelab, **options)
    trainer.options = options
    return trainer


def compiles(options: dict, device: str) -> bool:
    """Whether an aelab arm compiles its step (train.compile: on, or auto on CUDA)."""
    mode = options.get("compile", "auto")
    return mode == "on" or (mode == "auto" and device == "cuda")


def warm_up(spec: Spec, train: DeviceData, bsz: int, device: str, **options) -> float:
    """Compile an arm's step for this architecture and batch shape (a 2-batch fit), so the timed runs
    reuse it from aelab's compile cache as every later fit in a process does; returns the seconds."""
    small = train.subset(torch.arange(min(2 * bsz, len(train)), device=train.x.device))
    seconds, _, _ = train_aelab(fresh_nets(spec, 0), spec, small, 1, bsz, 0, device, **options)
    return seconds


def train_bare(nets, spec: Spec, train: DeviceData, epochs: int, bsz: int, seed: int, device: str):
    """A reference, not a competitor: the leanest hand loop over device-side data (index slices of a
    uint8 tensor, fused Adam, no logging, no host sync). What the arithmetic alone costs."""
    enc, dec = (n.to(device).train() for n in nets)
    gen = torch.Generator(device).manual_seed(seed)
    opt = torch.optim.Adam(list(enc.parameters()) + list(dec.parameters()), lr=1e-3, fused=True)
    steps = len(train) // bsz
    with Clock(device) as clock:
        for _ in range(epochs):
            perm = torch.randperm(len(train), generator=gen, device=device)
            for i in range(steps):
                x = train.x[perm[i * bsz:(i + 1) * bsz]].float().div_(255.0)
                loss = loss_terms(enc, dec, x, spec.vae)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
    return clock.seconds, epochs * steps * bsz, recon_fn(enc, dec, spec.vae)


class _Images(torch.utils.data.Dataset):
    """pytorch/examples vae/main.py style: one image at a time, converted like ToTensor()."""

    def __init__(self, x: np.ndarray):
        self.x = x

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return torch.from_numpy(self.x[i]).float().div(255.0), 0


def train_plain(nets, spec: Spec, x: np.ndarray, epochs: int, bsz: int, seed: int, device: str):
    enc, dec = (n.to(device).train() for n in nets)
    torch.manual_seed(seed)
    loader = torch.utils.data.DataLoader(_Images(x), batch_size=bsz, shuffle=True)
    opt = torch.optim.Adam(list(enc.parameters()) + list(dec.parameters()), lr=1e-3)
    with Clock(device) as clock:
        for _ in range(epochs):
            train_loss = 0.0
            for data, _ in loader:
                data = data.to(device)
                opt.zero_grad()
                loss = loss_terms(enc, dec, data, spec.vae)
                loss.backward()
                train_loss += loss.item()  # as the example does, every batch
                opt.step()
    return clock.seconds, epochs * len(x), recon_fn(enc, dec, spec.vae)


def pythae_model(nets, spec: Spec, recon_loss: str = "mse"):
    from pythae.models import AE, VAE, AEConfig as PAEConfig, VAEConfig
    from pythae.models.nn import BaseDecoder, BaseEncoder
    from pythae.models.base.base_utils import ModelOutput

    enc, dec = nets
    if isinstance(enc, Unwrap):  # pythae's own networks: hand them over as they are
        penc, pdec = enc.net, dec.net
    else:
        class PEnc(BaseEncoder):
            def __init__(self):
                BaseEncoder.__init__(self)
                self.net = enc

            def forward(self, x):
                h = self.net(x)
                return ModelOutput(embedding=h) if not spec.vae else ModelOutput(embedding=h.chunk(2, 1)[0], log_covariance=h.chunk(2, 1)[1])

        class PDec(BaseDecoder):
            def __init__(self):
                BaseDecoder.__init__(self)
                self.net = dec

            def forward(self, z):
                return ModelOutput(reconstruction=self.net(z))

        penc, pdec = PEnc(), PDec()
    if spec.vae:
        return VAE(VAEConfig(input_dim=(1, 28, 28), latent_dim=spec.latent, reconstruction_loss=recon_loss), penc, pdec)
    return AE(PAEConfig(input_dim=(1, 28, 28), latent_dim=spec.latent), penc, pdec)


def pythae_callback(device: str, on_epoch: Callable[[float], None] | None = None):
    """Times pythae's epochs only (not its setup or final save); `on_epoch(seconds so far)` may stop it."""
    from pythae.trainers.training_callbacks import TrainingCallback

    class Timer(TrainingCallback):
        seconds = 0.0

        def on_epoch_begin(self, training_config, **kw):
            sync(device)
            self.t0 = time.perf_counter()

        def on_epoch_end(self, training_config, **kw):
            sync(device)
            self.seconds += time.perf_counter() - self.t0
            if on_epoch:
                on_epoch(self.seconds)

    return Timer()


def run_pythae(model, x: np.ndarray, epochs: int, bsz: int, seed: int, device: str, callback) -> None:
    import logging

    from pythae.pipelines import TrainingPipeline

    for name in [n for n in logging.root.manager.loggerDict if n.startswith("pythae")]:
        logging.getLogger(name).setLevel(logging.WARNING)  # its per-run banner would bury the tables
    from pythae.trainers import BaseTrainerConfig

    with tempfile.TemporaryDirectory() as out:
        cfg = BaseTrainerConfig(output_dir=out, num_epochs=epochs, per_device_train_batch_size=bsz, learning_rate=1e-3,
                                optimizer_cls="Adam", seed=seed, no_cuda=device != "cuda", steps_saving=None)
        TrainingPipeline(training_config=cfg, model=model)(train_data=x.astype(np.float32) / 255, callbacks=[callback])


def pythae_recon(model):
    """x -> probabilities; pythae's `embedding` is the posterior mean for a VAE."""
    model.eval()
    return lambda x: model.decoder(model.encoder(x).embedding).reconstruction


def train_pythae(nets, spec: Spec, x: np.ndarray, epochs: int, bsz: int, seed: int, device: str):
    model = pythae_model(nets, spec)
    timer = pythae_callback(device)
    run_pythae(model, x, epochs, bsz, seed, device, timer)
    return timer.seconds, epochs * len(x), pythae_recon(model.to(device))


SYSTEMS = {"aelab": train_aelab, "pythae": train_pythae, "plain loop": train_plain}
BARE = "bare loop (reference)"  # timed beside the overhead-bound models 1 and 2
DEVICE_SIDE = {"aelab", BARE}  # systems that take the data as one device tensor


def fresh_nets(spec: Spec, seed: int):
    torch.manual_seed(seed)
    return spec.build()


def copy_nets(nets):
    return tuple(copy.deepcopy(n) for n in nets)
