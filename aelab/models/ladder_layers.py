"""The ladder's layers: the encoder's maps up, the decoder's maps back down, batch statistics, and g.

A layer spec is ("fc", width) | ("conv", width, size, padding, stride) | ("pool",) | ("gmp",). Each has
its map up (`up_op`: h_{l-1} -> z_pre_l, no bias: batch norm removes it) and its decoder's map back
down (`transpose_op`: V_l, layer l's shape -> layer l-1's: a linear map, a transposed conv landing
exactly on the input size, or an upsampling that undoes a pooling).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .blocks import Flatten, Unflatten, numel


def layer_specs(arch: str, hidden: tuple[int, ...], latent: int, k: int) -> list[tuple]:
    """The encoder's layers bottom-up for `arch` with `k` classes on top."""
    if arch == "mlp":
        return [("fc", w) for w in (*hidden, latent, k)]
    if arch == "conv-strided":
        return [("conv", 32, 3, 1, 2), ("conv", 64, 3, 1, 2), ("conv", 128, 3, 1, 2), ("fc", latent), ("fc", k)]
    # Conv-Small as in the authors' code: conv 5x5 full, pool, 3x3 valid, 3x3 full, pool, 3x3 valid, 1x1, mean pool, fc
    return [("conv", 32, 5, 4, 1), ("pool",), ("conv", 64, 3, 0, 1), ("conv", 64, 3, 2, 1), ("pool",),
            ("conv", 128, 3, 0, 1), ("conv", latent, 1, 0, 1), ("gmp",), ("fc", k)]


def up_op(spec: tuple, in_shape: tuple[int, ...]) -> nn.Module:
    """The layer's map h_{l-1} -> z_pre_l."""
    kind = spec[0]
    if kind == "fc":
        return nn.Sequential(Flatten(), nn.Linear(numel(in_shape), spec[1], bias=False))
    if kind == "conv":
        return nn.Conv2d(in_shape[0], spec[1], spec[2], stride=spec[4], padding=spec[3], bias=False)
    return nn.MaxPool2d(2) if kind == "pool" else nn.Sequential(nn.AdaptiveAvgPool2d(1), Flatten())


def transpose_op(spec: tuple, in_shape: tuple[int, ...], out_shape: tuple[int, ...]) -> nn.Module:
    """The decoder's V_l: layer l's shape `out_shape` back to layer l-1's `in_shape`."""
    kind = spec[0]
    if kind == "fc":
        return nn.Sequential(nn.Linear(out_shape[0], numel(in_shape), bias=False), Unflatten(in_shape))
    if kind == "conv":  # output_padding lands a strided conv's transpose exactly on the input size
        _, width, size, pad, stride = spec
        extra = [i - ((o - 1) * stride - 2 * pad + size) for i, o in zip(in_shape[1:], out_shape[1:])]
        return nn.ConvTranspose2d(width, in_shape[0], size, stride, pad, output_padding=tuple(extra), bias=False)
    return Upsample(in_shape)


class Upsample(nn.Module):
    """Undo a pooling: nearest-neighbour back to (C, H, W) (a global pool's output is broadcast)."""

    def __init__(self, shape: tuple[int, ...]):
        super().__init__()
        self.shape = tuple(shape)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        if z.dim() == 2:
            return z[:, :, None, None].expand(-1, *self.shape)
        return F.interpolate(z, size=self.shape[1:], mode="nearest")


def paper_init(module: nn.Module) -> None:
    """The authors' initialisation of every weight in `module`: std 1/sqrt(fan_in) (fc: normal, conv:
    uniform), where PyTorch's default gives 1/sqrt(3 fan_in). Batch norm follows every map, so the
    scale leaves the function unchanged, but not Adam's steps: they are a fixed size, so weights
    sqrt(3) smaller move sqrt(3) times faster relative to their size."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, std=m.in_features ** -0.5)
        elif isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):  # fan_in: the inputs summed per output
            w = m.weight
            fan_in = (w.shape[0] if isinstance(m, nn.ConvTranspose2d) else w.shape[1]) * w[0, 0].numel()
            nn.init.uniform_(w, -(3 / fan_in) ** 0.5, (3 / fan_in) ** 0.5)


def unit_shape(shape: tuple[int, ...]) -> tuple[int, ...]:
    """Per-unit parameters: one per feature, or one per channel of a conv map (C, 1, 1)."""
    return (shape[0], 1, 1) if len(shape) == 3 else tuple(shape)


def stats(z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Batch mean and std (B, ...) -> unit shape, over the batch (and the map of a conv layer): the
    plain formula (tests and the reference); the training step uses `normalise`, the same math."""
    dims = (0, 2, 3) if z.dim() == 4 else (0,)
    mean = z.mean(dims, keepdim=True)
    var = (z - mean).square().mean(dims, keepdim=True)
    return mean[0], (var[0] + EPS).sqrt()


EPS = 1e-10  # on the variance, as in the authors' code


class _NormStats(torch.autograd.Function):
    """z (B, C) or (B, C, H, W) -> (zn, mean, std): batch norm without parameters and its statistics,
    in one native batch-norm pass forward and one backward (the plain formula costs ~10 elementwise
    ops and their backward). The statistics stay differentiable: the denoising cost divides by them."""

    @staticmethod
    def forward(ctx, z: torch.Tensor):
        zn, mean, invstd = torch.native_batch_norm(z, None, None, None, None, True, 0.0, EPS)
        ctx.save_for_backward(z, zn, mean, invstd)
        return zn, mean, invstd.reciprocal()

    @staticmethod
    def backward(ctx, g, g_mean, g_std):
        z, zn, mean, invstd = ctx.saved_tensors
        dz = torch.ops.aten.native_batch_norm_backward(g if g is not None else torch.zeros_like(z), z, None,
                                                       None, None, mean, invstd, True, EPS, [True, False, False])[0]
        if g_mean is not None or g_std is not None:  # d mean / dz = 1/N, d std / dz = zn/N, per channel
            shape = (1, -1) + (1,) * (z.dim() - 2)
            n = z.numel() // z.shape[1]
            dm = (g_mean if g_mean is not None else torch.zeros_like(mean)).view(shape) / n
            ds = (g_std if g_std is not None else torch.zeros_like(mean)).view(shape) / n
            dz = dz + torch.addcmul(dm, zn, ds)
        return dz


def normalise(z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Batch-normalised z and its batch mean and std in unit shape (differentiable, as `stats`)."""
    zn, mean, std = _NormStats.apply(z)
    unit = unit_shape(tuple(z.shape[1:]))
    return zn, mean.view(unit), std.view(unit)


def norm(z: torch.Tensor) -> torch.Tensor:
    """Batch-normalised z, no parameters."""
    return normalise(z)[0]


class _Combinator(torch.autograd.Function):
    """The vanilla g with a hand-written backward: ~25 elementwise ops and reductions where autograd's
    graph of the same formula runs ~50 (each broadcast multiply-add costs a product and a reduction
    per input); the parity test (tests/test_ladder_parity.py) holds it to the plain formula."""

    @staticmethod
    def forward(ctx, a: torch.Tensor, z: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        a1, a2, a3, a4, a5, a6, a7, a8, a9, a10 = a.unbind(0)
        s1 = torch.sigmoid(torch.addcmul(a3, a2, u))
        s2 = torch.sigmoid(torch.addcmul(a8, a7, u))
        mu = torch.addcmul(torch.addcmul(a5, a4, u), a1, s1)
        v = torch.addcmul(torch.addcmul(a10, a9, u), a6, s2)
        d = z - mu
        ctx.save_for_backward(a, u, s1, s2, d, v)
        return torch.addcmul(mu, d, v)

    @staticmethod
    def backward(ctx, g: torch.Tensor):
        a, u, s1, s2, d, v = ctx.saved_tensors
        a1, a2, a3, a4, a5, a6, a7, a8, a9, a10 = a.unbind(0)
        dz = g * v
        dv = g * d
        dmu = g - dz  # g (1 - v)
        dt1 = torch.ops.aten.sigmoid_backward(dmu * a1, s1)  # through sigmoid(a2 u + a3)
        dt2 = torch.ops.aten.sigmoid_backward(dv * a6, s2)
        du = torch.addcmul(torch.addcmul(torch.addcmul(dt1 * a2, dmu, a4), dt2, a7), dv, a9)
        unit = a.shape[1:]
        da = torch.stack([t.sum_to_size(unit) for t in (dmu * s1, dt1 * u, dt1, dmu * u, dmu,
                                                         dv * s2, dt2 * u, dt2, dv * u, dv)])
        return da, dz, du


def combinator(a: torch.Tensor, z: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """The vanilla g: `a` (10, *unit) per-unit parameters, z~ and u (B, *shape) -> zhat:
    mu = a1 sigmoid(a2 u + a3) + a4 u + a5, v = a6 sigmoid(a7 u + a8) + a9 u + a10, (z~ - mu) v + mu."""
    return _Combinator.apply(a, z, u)
