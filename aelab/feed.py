"""What the engine's loop feeds the model: each epoch's seeded order, batches, corruption and augmentation.

One generator per seed the model trains. A plain model trains one seed (`fit(..., seed=s)`); a
`SeedStack` declares its seeds (`model.seeds`) and gets, per step, each seed's own batch stacked
along a new leading dimension, (S, B, ...): seed s draws its order and noise exactly as `fit` with
`seed=s` draws them, so a stack of S seeds trains as S separate fits would.
Every draw is a pure function of (seed, epoch) and the draws before it in the epoch, so a
mid-epoch checkpoint (the generators' states) resumes exactly.
"""
from __future__ import annotations

import torch

from . import distributed
from .config import DataConfig, TrainConfig
from .data.augment import augment, corrupt


def prepare(batch: dict[str, torch.Tensor], cfg: TrainConfig, aug: DataConfig | None,
            gen: torch.Generator) -> dict[str, torch.Tensor]:
    """Augment the clean images (the target too), then corrupt what the model sees."""
    if aug is not None and (aug.rotate or aug.shift or aug.hflip):
        batch["x"] = augment(batch["x"], aug.rotate, aug.shift, aug.hflip, gen)
    batch["x_in"] = corrupt(batch["x"], cfg.corrupt, cfg.corrupt_level, gen)
    return batch


def draws(cfg: TrainConfig, aug: DataConfig | None) -> bool:
    """Whether `prepare` draws random numbers (corruption or augmentation) for each batch."""
    augmenting = aug is not None and bool(aug.rotate or aug.shift or aug.hflip)
    return augmenting or (cfg.corrupt != "none" and cfg.corrupt_level > 0)


class Feed:
    """The batches of one training split for the seeds of one fit."""

    def __init__(self, train, cfg: TrainConfig, aug: DataConfig | None, seeds: list[int], stacked: bool,
                 batch_size: int):
        self.train, self.cfg, self.aug, self.seeds, self.stacked = train, cfg, aug, list(seeds), stacked
        self.bsz, self.draws = batch_size, draws(cfg, aug)
        self.gens = [torch.Generator(train.device) for _ in seeds]
        self.dist = distributed.current()
        self.perms: list[torch.Tensor] = []

    def start_epoch(self, epoch: int, saved: dict[str, torch.Tensor]) -> None:
        """Seed each generator, draw each seed's order; a mid-epoch checkpoint's draws continue."""
        self.perms = []
        for j, (gen, seed) in enumerate(zip(self.gens, self.seeds)):
            gen.manual_seed(seed * 1_000_003 + epoch)  # a pure function of (seed, epoch): resumable
            self.perms.append(self.train.permutation(gen))  # the same on every rank: each takes its shard
            if self.dist.active:  # corruption noise differs per rank (its own rows)
                gen.manual_seed((seed * 1_000_003 + epoch) * 1_009 + self.dist.rank + 1)
            if f"gen.{j}" in saved:
                gen.set_state(saved[f"gen.{j}"])

    def batch_shape(self) -> tuple[int, ...]:
        """This rank's batch, (B, C, H, W), or (S, B, C, H, W) for a stack: the compiled step's input."""
        b = len(self.dist.shard(torch.arange(self.bsz)))
        return ((len(self.seeds),) if self.stacked else ()) + (b, *self.train.x.shape[1:])

    def state(self) -> dict[str, torch.Tensor]:
        return {f"gen.{j}": g.get_state() for j, g in enumerate(self.gens)}

    def batch(self, i: int) -> dict[str, torch.Tensor]:
        """Batch i of this epoch: (B, ...) tensors, or (S, B, ...) for a stack of S seeds."""
        rows = [self.dist.shard(p[i * self.bsz:(i + 1) * self.bsz]) for p in self.perms]
        if not self.stacked:
            return prepare(self.train.batch(rows[0]), self.cfg, self.aug, self.gens[0])
        if self.draws:  # each seed's noise from its own generator, in seed order
            parts = [prepare(self.train.batch(r), self.cfg, self.aug, g) for r, g in zip(rows, self.gens)]
            return {k: torch.stack([b[k] for b in parts]) for k in parts[0]}
        both = self.train.batch(torch.cat(rows))  # no draws: one gather for all seeds
        return {k: v.unflatten(0, (len(rows), -1)) for k, v in both.items()}
