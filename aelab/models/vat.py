"""Virtual adversarial training (Miyato et al., TPAMI 2018): a reference arm from outside the
autoencoder family, on the ladder's MLP (784-1000-500-250-250-250-10, batch norm and ReLU).

The cost is the cross-entropy on the labelled rows plus `alpha` times the local distributional
smoothness on the unlabelled ones: LDS = KL(p(y|x) || p(y|x + r_adv)), with p(y|x) held fixed
(no gradient) and r_adv the direction, of L2 norm `eps` per image, that one power iteration finds
most sensitive: d ~ N(0, I) scaled to norm `xi`, g = grad_d KL(p(y|x) || p(y|x + d)), r_adv = eps g / |g|.
`entmin` adds the entropy of p(y|x) on the unlabelled rows (VAT+EntMin, the paper's best). The
power iteration's gradient is taken with torch.func.grad (the parameters are constants there), so
the step stays one graph. Batch statistics: labelled and unlabelled rows apart (as in the authors'
code); the running ones follow the clean unlabelled pass only, the perturbed passes leave them alone.
The authors' MNIST setting with 100 labels: eps = 0.3, xi = 1e-6 (their code's README); `eps` is the
one to choose on validation. `encode` gives the last hidden layer; a detached linear readout draws
images from it (semi_common), so VAT answers `reconstruct` like every model.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError
from .base import Player, register
from .blocks import numel
from .semi_common import SemiConfig, SemiSupervised


@dataclass
class VATConfig(SemiConfig):
    latent_dim: int = 250  # the last hidden layer (the ladder's MLP)
    hidden: tuple[int, ...] = (1000, 500, 250, 250)  # the widths below latent_dim
    eps: float = 0.3  # L2 norm of the virtual adversarial perturbation per image (choose on validation)
    xi: float = 1e-6  # norm of the power iteration's probe
    alpha: float = 1.0  # weight of the LDS term
    entmin: bool = False  # add the entropy of p(y|x) on the unlabelled rows (VAT+EntMin)
    readout_every: int = 10  # the readout decoder steps every k engine steps (it only draws pictures)

    def check(self) -> None:
        super().check()
        if min(self.hidden, default=1) <= 0 or self.eps < 0 or self.xi <= 0 or self.alpha < 0 or self.readout_every < 1:
            raise ConfigError("model.hidden positive, model.eps and model.alpha >= 0, model.xi > 0, "
                              "model.readout_every >= 1")


def unit_norm(d: torch.Tensor) -> torch.Tensor:
    """Each row of d (B, ...) scaled to L2 norm 1 (divided by its max first: no overflow or underflow)."""
    d = d / (d.abs().flatten(1).amax(1).view(-1, *[1] * (d.dim() - 1)) + 1e-12)
    return d / (d.square().flatten(1).sum(1).add(1e-6).sqrt().view(-1, *[1] * (d.dim() - 1)))


def kl_logits(p: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """KL(p || softmax(logits)), mean over rows; p (B, K) fixed probabilities."""
    return (p * (torch.log(p.clamp_min(1e-12)) - F.log_softmax(logits.float(), 1))).sum(1).mean()


@register("vat")
class VAT(SemiSupervised):
    Config = VATConfig

    def __init__(self, cfg: VATConfig, input_shape, num_classes=10):
        super().__init__(cfg, input_shape, num_classes)
        sizes = [numel(input_shape), *cfg.hidden, cfg.latent_dim]
        self.fc = nn.ModuleList(nn.Linear(a, b, bias=False) for a, b in zip(sizes[:-1], sizes[1:]))
        self.bn = nn.ModuleList(nn.BatchNorm1d(b) for b in sizes[1:])
        self.top = nn.Linear(cfg.latent_dim, num_classes)
        self.decoder = self.readout(cfg.latent_dim, input_shape)

    def _hidden(self, x: torch.Tensor, track: bool = False) -> torch.Tensor:
        """(B, C, H, W) -> the last hidden layer (B, latent); batch statistics in training mode,
        written to the running ones only where `track` (the clean unlabelled pass)."""
        h = x.flatten(1).float()
        for fc, bn in zip(self.fc, self.bn):
            stats = (bn.running_mean, bn.running_var) if track or not self.training else (None, None)
            h = F.relu(F.batch_norm(fc(h), *stats, bn.weight, bn.bias, self.training, bn.momentum, bn.eps))
        return h

    def logits(self, x: torch.Tensor, track: bool = False) -> torch.Tensor:
        return self.top(self._hidden(x, track)).float()

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self._hidden(x)

    def classify(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits(x)

    def virtual_adversary(self, x: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
        """r_adv (B, C, H, W): one power iteration from a random probe of norm xi, scaled to eps."""
        def kl(d: torch.Tensor) -> torch.Tensor:
            return kl_logits(p, self.logits(x + d))

        g = torch.func.grad(kl)(self.cfg.xi * unit_norm(torch.randn_like(x)))
        return self.cfg.eps * unit_norm(g.detach())

    def forward(self, batch: dict[str, torch.Tensor], player: str = "model") -> dict[str, torch.Tensor]:
        if player == "readout":
            return self.readout_loss(batch)
        xl, yl = self.labelled(batch)
        xu = batch["x"].float()
        ce = self.masked_ce(self.logits(xl), yl)
        logits_u = self.logits(xu, track=True)
        p = torch.softmax(logits_u, 1).detach()
        lds = kl_logits(p, self.logits(xu + self.virtual_adversary(xu, p)))
        out = {"ce": ce, "lds": lds}
        loss = ce + self.cfg.alpha * lds
        if self.cfg.entmin:
            out["entropy"] = -(torch.softmax(logits_u, 1) * F.log_softmax(logits_u, 1)).sum(1).mean()
            loss = loss + out["entropy"]
        return {"loss": loss, **out}

    def players(self) -> list[Player]:
        return self.readout_players(self.cfg.readout_every)
