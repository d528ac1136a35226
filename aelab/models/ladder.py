"""The Ladder network (Rasmus et al. 2015): a classifier whose every layer is also denoised.

The encoder runs twice per step: a corrupted pass (gaussian noise `noise` on the input and on every
batch-normalised pre-activation z) on the labelled and unlabelled images, and a clean pass on the
unlabelled ones; both go through one matrix product per layer as three groups of rows, each with its
own batch statistics (the same math as two passes: tests/test_ladder_parity.py). Weights start as
in the authors' code (std 1/sqrt(fan_in)). The decoder runs top-down on the unlabelled rows: u_L = BN(corrupted softmax
output), u_l = BN(V_{l+1} zhat_{l+1}), and the vanilla combinator g, ten per-unit parameters a1..a10
(per channel on conv layers, as in the authors' code), denoises the lateral z~_l:
    mu = a1 sigmoid(a2 u + a3) + a4 u + a5,  v = a6 sigmoid(a7 u + a8) + a9 u + a10,
    zhat = (z~ - mu) v + mu.
The cost is the cross-entropy of the corrupted output on the labelled rows plus
sum_l lambda_l * mean_units ((zhat_l - m_l) / s_l - z_l)^2, with z_l, m_l, s_l the clean pass's
normalised pre-activations and batch statistics. Batch statistics are taken separately over the
labelled and the unlabelled rows, as in the authors' code; test-time statistics are running means
of the clean unlabelled pass. `variant`: "full" (a decoder at every layer), "gamma" (the Γ-model:
the top layer only), "supervised" (the same network, noise and labelled images, no decoder: the
paper's baseline). `arch`: the paper's MLP 784-1000-500-250-250-250-10, its Conv-Small (conv 5x5
full 32, pool, conv 3x3 valid 64, conv 3x3 full 64, pool, conv 3x3 valid 128, conv 1x1 10, global
mean pool, fc 10; pooling layers are ladder layers too, linear, no bias, as in the authors' code), or
"conv-strided", three strided 3x3 convs (32, 64, 128), fc, fc: not the paper's, a conv at about
the MLP's cost on a CPU, where a Conv-Small step costs ~30x an MLP step (ladder_layers.py).
`encode` gives the last hidden layer (the top layer's input); a small linear "readout" player learns
to draw images from those codes (detached: it never changes the classifier), so the ladder answers
`reconstruct` like every model.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from ..data.augment import augment
from ..errors import ConfigError
from .base import Player, register
from .blocks import numel
from .ladder_layers import (EPS, combinator, layer_specs, norm, normalise, paper_init, transpose_op, unit_shape,
                            up_op)
from .semi_common import SemiConfig, SemiSupervised

# lambda per layer from the input up, the authors' MNIST 100-label settings (their code's README):
# full MLP 1000, 10, 0.1, ... (0.1 on every higher layer, whatever the depth); gamma: the top alone
PAPER_GAMMA = {"mlp": 0.5, "conv-small": 1.0, "conv-strided": 1.0}


def paper_denoise(arch: str, variant: str, layers: int) -> list[float]:
    """The default lambda_0..lambda_L for `layers` = L encoder layers."""
    if variant == "supervised":
        return [0.0] * (layers + 1)
    if variant == "gamma":
        return [0.0] * layers + [PAPER_GAMMA[arch]]
    return ([1000.0, 10.0] + [0.1] * layers)[:layers + 1]


@dataclass
class LadderConfig(SemiConfig):
    latent_dim: int = 250  # the last hidden layer (MLP: 250 as in the paper; Conv-Small: set 10, the paper's)
    arch: Literal["mlp", "conv-small", "conv-strided"] = "mlp"
    variant: Literal["full", "gamma", "supervised"] = "full"
    hidden: tuple[int, ...] = (1000, 500, 250, 250)  # mlp: the widths below latent_dim
    noise: float = 0.3  # std of the gaussian noise of the corrupted pass (input and every layer)
    denoise: tuple[float, ...] = ()  # lambda_l, input first; () = the paper's (paper_denoise)
    readout_every: int = 10  # the readout decoder steps every k engine steps (it only draws pictures)
    # the unlabelled images through the augmentation too: "same" view in both passes (more varied
    # data), or "independent" views for the clean and the corrupted pass (the shift / flip becomes
    # part of the corruption, a consistency target for the gamma model; the paper: noise only)
    augment_unlabelled: Literal["none", "same", "independent"] = "none"

    def check(self) -> None:
        super().check()
        if self.noise < 0 or min(self.hidden, default=1) <= 0 or self.readout_every < 1:
            raise ConfigError("model.noise must be >= 0, model.hidden positive, model.readout_every >= 1")
        if any(v < 0 for v in self.denoise):
            raise ConfigError("model.denoise weights must be >= 0")


@register("ladder")
class Ladder(SemiSupervised):
    Config = LadderConfig

    def __init__(self, cfg: LadderConfig, input_shape, num_classes=10):
        super().__init__(cfg, input_shape, num_classes)
        specs = layer_specs(cfg.arch, cfg.hidden, cfg.latent_dim, num_classes)
        self.shapes = [tuple(input_shape) if cfg.arch != "mlp" else (numel(input_shape),)]  # (C, H, W) or (D,)
        self.ops = nn.ModuleList()
        for spec in specs:  # shapes by a dry run: any input size works
            self.ops.append(up_op(spec, self.shapes[-1]))
            with torch.no_grad():
                self.shapes.append(tuple(self.ops[-1](torch.zeros(1, *self.shapes[-1])).shape[1:]))
        self.kinds = [s[0] for s in specs]
        self.L = len(specs)
        self.lam = self._lambdas(cfg)
        units = [unit_shape(s) for s in self.shapes]
        # beta on every layer with an activation (not the pools); gamma on the softmax layer only
        self.beta = nn.ParameterList([nn.Parameter(torch.zeros(units[l])) for l in range(1, self.L + 1)
                                      if self.kinds[l - 1] in ("fc", "conv")])
        self.beta_of = {l: i for i, l in enumerate(l for l in range(1, self.L + 1) if self.kinds[l - 1] in ("fc", "conv"))}
        self.gamma = nn.Parameter(torch.ones(units[-1]))
        for l in range(1, self.L + 1):
            self.register_buffer(f"run_mean{l}", torch.zeros(units[l]))
            self.register_buffer(f"run_std{l}", torch.ones(units[l]))
        low = self.lowest_decoded()
        init = torch.tensor([0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0])  # the authors' code
        self.g = nn.ParameterDict({str(l): nn.Parameter(init.view(10, *[1] * len(units[l])).repeat(1, *units[l]))
                                   for l in range(low, self.L + 1)})
        self.V = nn.ModuleDict({str(l): transpose_op(specs[l - 1], self.shapes[l - 1], self.shapes[l])
                                for l in range(low + 1, self.L + 1)})
        self.decoder = self.readout(self.shapes[-2][0], input_shape)
        paper_init(self.ops), paper_init(self.V)

    def _lambdas(self, cfg: LadderConfig) -> list[float]:
        if not cfg.denoise or cfg.variant == "supervised":
            return paper_denoise(cfg.arch, cfg.variant, self.L)
        lam = [0.0] * self.L + list(cfg.denoise) if cfg.variant == "gamma" and len(cfg.denoise) == 1 else list(cfg.denoise)
        if len(lam) != self.L + 1 or (cfg.variant == "gamma" and any(lam[:-1])):
            raise ConfigError(f"model.denoise needs {self.L + 1} weights (input first) for this {cfg.arch} "
                              f"ladder, or the top one alone for the gamma variant; got {len(cfg.denoise)}")
        return lam

    def lowest_decoded(self) -> int:
        """The lowest layer with a decoder: 0 (full), L (gamma), L + 1 (supervised: none)."""
        return {"full": 0, "gamma": self.L, "supervised": self.L + 1}[self.cfg.variant]

    # -- the encoder
    def _layer_out(self, l: int, z: torch.Tensor) -> torch.Tensor:
        """h_l from the normalised (noisy) z_l: relu(z + beta), softmax's logits gamma (z + beta) on top."""
        if self.kinds[l - 1] not in ("fc", "conv"):
            return z
        b = self.beta[self.beta_of[l]]
        return self.gamma * (z + b) if l == self.L else F.relu(z + b)

    def _bn(self, l: int, z: torch.Tensor, groups: list[int], track: bool) -> tuple[torch.Tensor, tuple]:
        """Normalise z_pre (B, ...) with separate batch statistics for each group of rows (sizes
        `groups`), or the running ones in eval mode; returns z and the statistics of the last group;
        `track` updates the running ones with them."""
        run_m, run_s = getattr(self, f"run_mean{l}"), getattr(self, f"run_std{l}")
        if not self.training:
            return (z - run_m) / run_s, (run_m, run_s)
        parts = [normalise(part) for part in z.split(groups)]
        zn, m, s = parts[-1]
        if track:
            with torch.no_grad():
                run_m.lerp_(m.detach(), 0.05), run_s.lerp_(s.detach(), 0.05)
        return (torch.cat([p[0] for p in parts]) if len(parts) > 1 else zn), (m, s)

    @staticmethod
    def _noisy(h: torch.Tensor, noise: float, rows: int) -> torch.Tensor:
        """h with gaussian noise of std `noise` on its first `rows` rows."""
        if not noise or not rows:
            return h
        if rows == h.shape[0]:
            return torch.add(h, torch.randn_like(h), alpha=noise)
        eps = h.new_zeros(h.shape)  # outside the graph: no cat of h, whose backward would slice and zero-fill
        eps[:rows] = torch.randn_like(eps[:rows])
        return torch.add(h, eps, alpha=noise)

    def _encoder(self, x: torch.Tensor, noise: float, groups: list[int] | None = None, noisy: int = 0,
                 track: bool = False):
        """One pass over the rows of x, batch statistics per group of rows (sizes `groups`; default:
        one group), noise on the first `noisy` rows (the input and every z_l): the normalised z_l of
        every layer (z_0 = the input), the statistics of the last group, the last hidden layer
        h_{L-1} and the top's logits. The training step runs its corrupted pass (labelled, unlabelled)
        and its clean pass as three groups of one pass: one matrix product per layer, not two."""
        h = x.flatten(1).float() if self.cfg.arch == "mlp" else x.float()
        groups = groups or [h.shape[0]]
        h = self._noisy(h, noise, noisy)
        zs, stats, last = [h], [None], h
        for l in range(1, self.L + 1):
            last = h
            z, st = self._bn(l, self.ops[l - 1](h).float(), groups, track)
            z = self._noisy(z, noise, noisy)
            zs.append(z), stats.append(st)
            h = self._layer_out(l, z)
        return zs, stats, last, h

    @torch.no_grad()
    def refit_statistics(self, x: torch.Tensor, chunk: int = 4096) -> None:
        """Set the test-time statistics to the exact batch mean and std of the clean pass over `x`, as
        the authors' code does with its clean labelled rows (ours otherwise: a running average over the
        clean unlabelled batches). Layer by layer: layer l's inputs are normalised with the statistics
        already set below it, so `x` may be any size and is read in chunks."""
        was = self.training
        self.eval()
        for l in range(1, self.L + 1):
            total, sq, n = 0.0, 0.0, 0
            for part in x.split(chunk):
                h = part.flatten(1).float() if self.cfg.arch == "mlp" else part.float()
                for k in range(1, l):
                    h = self._layer_out(k, self._bn(k, self.ops[k - 1](h).float(), [len(h)], False)[0])
                z = self.ops[l - 1](h).double()
                dims = (0, 2, 3) if z.dim() == 4 else (0,)
                total, sq, n = total + z.sum(dims), sq + z.square().sum(dims), n + z.numel() // z.shape[1]
            mean = total / n
            var = (sq / n - mean.square()).clamp_min(0)
            run_m, run_s = getattr(self, f"run_mean{l}"), getattr(self, f"run_std{l}")
            run_m.copy_(mean.view_as(run_m)), run_s.copy_((var + EPS).sqrt().view_as(run_s))
        self.train(was)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self._encoder(x, 0.0)[2]

    def classify(self, x: torch.Tensor) -> torch.Tensor:
        return self._encoder(x, 0.0)[3]

    # -- the decoder and the costs
    def decode_ladder(self, zt: list, top: torch.Tensor) -> dict[int, torch.Tensor]:
        """Top-down from the corrupted pass: zhat_l of every decoded layer, from u_L = BN(softmax(top))."""
        u, zhat, out = torch.softmax(top, 1), None, {}
        for l in range(self.L, self.lowest_decoded() - 1, -1):
            u = norm(u if zhat is None else self.V[str(l + 1)](zhat))
            out[l] = zhat = combinator(self.g[str(l)], zt[l], u)
        return out

    def denoise_costs(self, zt: list, top: torch.Tensor, clean: list, stats: list) -> dict[int, torch.Tensor]:
        """cost_l = mean over units of ((zhat_l - m_l) / s_l - z_l)^2, batch mean, per decoded layer."""
        costs = {}
        for l, zhat in self.decode_ladder(zt, top).items():
            m, s = stats[l] if stats[l] is not None else (0.0, 1.0)  # the input is not normalised
            costs[l] = ((zhat - m) / s - clean[l]).square().flatten(1).mean(1).mean()
        return costs

    def forward(self, batch: dict[str, torch.Tensor], player: str = "model") -> dict[str, torch.Tensor]:
        if player == "readout":
            return self.readout_loss(batch)
        xl, yl = self.labelled(batch)
        if self.cfg.variant == "supervised":  # the labelled rows alone; noise as the regulariser
            if self.cfg.noise:  # test-time statistics from a clean pass: noisy ones are wider and misscale
                with torch.no_grad():
                    self._encoder(xl, 0.0, track=True)
            logits = self._encoder(xl, self.cfg.noise, noisy=len(xl), track=not self.cfg.noise)[3]
            ce = self.masked_ce(logits, yl)
            return {"loss": ce, "ce": ce}
        (xc, xt), n = self.unlabelled_views(batch["x"]), xl.shape[0]
        u = n + xt.shape[0]  # rows [:n] corrupted labelled, [n:u] corrupted unlabelled, [u:] clean unlabelled
        groups = [n, u - n, xc.shape[0]]
        zs, stats, _, top = self._encoder(torch.cat([xl, xt, xc]), self.cfg.noise, groups, u, True)
        # split, not slices: a slice's backward zero-fills the whole layer, split's only the unused rows
        parts, (top_l, top_t, _) = [z.split(groups) for z in zs], top.split(groups)
        ce = self.masked_ce(top_l, yl)
        costs = self.denoise_costs([p[1] for p in parts], top_t, [p[2] for p in parts], stats)
        denoise = sum(self.lam[l] * c for l, c in costs.items())
        return {"loss": ce + denoise, "ce": ce, "denoise": denoise} | {f"cost{l}": c for l, c in costs.items()}

    def unlabelled_views(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """What the clean and the corrupted pass see of the unlabelled images (B, C, H, W)."""
        c, mode = self.cfg, self.cfg.augment_unlabelled
        view = (lambda v: augment(v, c.rotate, c.shift, c.hflip)) if mode != "none" else (lambda v: v)
        clean = view(x)
        return clean, (view(x) if mode == "independent" else clean)

    def players(self) -> list[Player]:
        return self.readout_players(self.cfg.readout_every)

    @torch.no_grad()
    def denoised_input(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The full ladder's bottom layer: (noised input, its denoised zhat_0), both (B, C, H, W)."""
        if self.lowest_decoded() != 0:
            raise ConfigError("only the full ladder decodes its input layer (model.variant=full)")
        zt, _, _, top = self._encoder(x, self.cfg.noise, noisy=len(x))
        return zt[0].view_as(x), self.decode_ladder(zt, top)[0].view_as(x)
