"""Corruption (for denoising) and augmentation of whole batches with tensor ops on the device.

Every random draw takes the engine's generator, so a seeded run is reproducible and resumable.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def corrupt(x: torch.Tensor, kind: str, level: float, gen: torch.Generator | None = None) -> torch.Tensor:
    """The input a denoising model sees; `x` (B, C, H, W) in [0, 1] is left untouched."""
    if kind == "none" or level == 0:
        return x
    r = torch.rand(x.shape, generator=gen, device=x.device)
    if kind == "gaussian":  # sigma = level, clipped back to the pixel range
        return (x + level * torch.randn(x.shape, generator=gen, device=x.device)).clamp_(0, 1)
    if kind == "dropout":  # each pixel zeroed with probability level
        return x * (r >= level)
    if kind == "saltpepper":  # each pixel set to 0 or 1 (evenly) with probability level
        salt = torch.rand(x.shape, generator=gen, device=x.device) < 0.5
        return torch.where(r < level, salt.to(x.dtype), x)
    raise ValueError(f"unknown corruption {kind!r}")


def augment(x: torch.Tensor, rotate: float = 0.0, shift: int = 0, hflip: bool = False,
            gen: torch.Generator | None = None) -> torch.Tensor:
    """Random rotation (degrees), shift (pixels) and horizontal flip, one draw per image, one affine warp."""
    if not (rotate or shift or hflip):
        return x
    b, _, h, w = x.shape
    u = torch.rand(b, 4, generator=gen, device=x.device) * 2 - 1  # (B, 4) uniform in [-1, 1]
    angle = u[:, 0] * math.radians(rotate)
    flip = torch.where(u[:, 3] < 0, -1.0, 1.0) if hflip else torch.ones_like(angle)
    cos, sin = torch.cos(angle), torch.sin(angle)
    theta = torch.stack([torch.stack([cos * flip, -sin, u[:, 1] * 2 * shift / w], 1),
                         torch.stack([sin * flip, cos, u[:, 2] * 2 * shift / h], 1)], 1)  # (B, 2, 3)
    grid = F.affine_grid(theta.to(x.dtype), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
