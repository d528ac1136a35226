"""What the semi-supervised models (`ladder`, `m2`, `aae-ssl`) share: the labelled pool and accuracy.

With 100 labels among 54,000 images a random engine batch holds ~0 labelled rows, so each step
draws its own `clf_batch` labelled images (without replacement) from a pool the caller hands over with `set_pool`
(non-persistent uint8 buffers: data, not weights), as the papers pair every unlabelled minibatch
with a labelled one. The labelled draw is augmented (random rotation / shift / flip per image) with
the same batch ops as the engine; the engine's batch is the unlabelled half. Without a pool (the
contract test, or a model fitted on labelled images alone) the engine's batch is the labelled half
too, and rows with label -1 take no part in the supervised term. forward() makes no host sync.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..data.augment import augment
from ..errors import ConfigError
from .base import AEConfig, Autoencoder, Player
from .blocks import Unflatten, numel


@dataclass
class SemiConfig(AEConfig):
    clf_batch: int = 100  # labelled images drawn from the pool per step (the papers' 100)
    rotate: float = 0.0  # augmentation of the labelled images: max rotation, degrees
    shift: int = 0  # max shift, pixels
    hflip: bool = False  # random horizontal flips: wrong for digits, fine for clothes

    def check(self) -> None:
        super().check()
        if self.clf_batch <= 0 or self.rotate < 0 or self.shift < 0:
            raise ConfigError("model.clf_batch must be > 0, model.rotate and model.shift >= 0")


class SemiSupervised(Autoencoder):
    """Base of the semi-supervised models: a labelled pool beside the engine's (unlabelled) batch."""

    Config = SemiConfig

    def __init__(self, cfg: SemiConfig, input_shape, num_classes=10):
        super().__init__(cfg, input_shape, num_classes)
        self.register_buffer("pool_x", torch.zeros(0, *self.input_shape, dtype=torch.uint8), persistent=False)
        self.register_buffer("pool_y", torch.zeros(0, dtype=torch.int64), persistent=False)
        self.images_per_label = 1.0  # set_pool

    def set_pool(self, x: torch.Tensor, y: torch.Tensor, n_train: int = 0) -> None:
        """The labelled images (N, C, H, W) uint8 and their labels (N,) each step draws from;
        `n_train`: the training images in all (M2 weighs its classifier by images per label)."""
        self.images_per_label = max(1.0, n_train / max(len(y), 1))
        if x.dtype != torch.uint8 or tuple(x.shape[1:]) != self.input_shape or len(x) != len(y) or (y < 0).any():
            raise ConfigError("set_pool needs uint8 images of the model's shape and their non-negative labels")
        self.pool_x, self.pool_y = x.to(self.pool_y.device), y.to(self.pool_y.device)

    def labelled(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Images (B, C, H, W) and labels (B,) for the supervised term, -1 where hidden; augmented."""
        x, y = batch["x"], batch["y"]
        if self.pool_y.numel():  # the pool's size is fixed for a run: a static branch
            # drawn without replacement, as the papers' labelled stream (the ladder's code cycles through
            # the shuffled labelled set): 100 labels and a batch of 100 give each label once a step, not
            # ~63% of them with repeats; a pool smaller than the batch is repeated whole
            n, k = self.pool_y.numel(), self.cfg.clf_batch
            idx = torch.randperm(n, device=x.device).repeat(-(-k // n))[:k]
            x, y = self.pool_x[idx].to(x.dtype) / 255, self.pool_y[idx]
        c = self.cfg
        return augment(x, c.rotate, c.shift, c.hflip), y

    @staticmethod
    def masked_ce(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Cross-entropy over the rows with a label (y >= 0), mean; 0 when there are none."""
        known = (y >= 0).float()
        ce = F.cross_entropy(logits.float(), y.clamp(min=0), reduction="none")
        return (ce * known).sum() / known.sum().clamp(min=1)

    def classify(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits (B, K) of clean images (eval mode for the test)."""
        raise NotImplementedError

    # -- a readout for the classifiers without a decoder of their own (ladder, VAT): a linear map
    # from the codes to images, trained on detached codes (it never changes the classifier), so that
    # they answer `reconstruct` like every model
    @staticmethod
    def readout(latent: int, input_shape: tuple[int, ...]) -> nn.Module:
        return nn.Sequential(nn.Linear(latent, numel(input_shape)), Unflatten(input_shape))

    def readout_loss(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The readout player's step: the reconstruction of detached codes."""
        with torch.no_grad():
            z = self.encode(batch["x"])
        r = self.recon_loss(self.decode(z), batch["x"])
        return {"loss": r, "recon": r}

    def readout_players(self, every: int) -> list[Player]:
        """The classifier ("model": every parameter but the readout's) and the readout every `every` steps."""
        dec = {id(p) for p in self.decoder.parameters()}
        return [Player("model", [p for p in self.parameters() if id(p) not in dec]),
                Player("readout", list(self.decoder.parameters()), every=every)]

    @torch.no_grad()
    def metrics(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        out = super().metrics(batch)
        known = batch["y"] >= 0
        hit = (self.classify(batch["x"]).argmax(1) == batch["y"]) & known
        out["acc"] = hit.sum() / known.sum().clamp(min=1)
        return out
