"""The energy network E_theta(x): a CNN that maps an image to one scalar, low for likely images.

p_theta(x) = exp(-E_theta(x)) / Z(theta)  (LeCun et al. 2006; Du & Mordatch 2019, Eq. 1).

With `num_classes` set the network is read the JEM way (Grathwohl et al. 2020, "Your Classifier is
Secretly an Energy Based Model", arXiv:1912.03263): its outputs are class logits f(x), and
    E(x, y) = -f(x)[y]                         (JEM Eq. 4's numerator: p(x, y) ∝ exp(f(x)[y]))
    E(x)    = -log sum_y exp(f(x)[y])           (JEM Eq. 5: the marginal over y)
so one network samples unconditionally or for a requested class, and also classifies.

With `num_levels` set the energy is also conditioned on a noise level t (diffusion recovery
likelihood, Gao et al. 2021, "Learning Energy-Based Models by Diffusion Recovery Likelihood",
arXiv:2012.08125, Sec. 3: f_theta(y, t)): a learned per-channel offset of each residual block, the
way DDPM UNets add their time embedding (Ho et al. 2020, Appendix B); see shared/ebm/recovery.py.

Design: residual blocks with SiLU (smooth, so grad_x E is smooth for Langevin dynamics), no
normalisation layers (batch statistics would couple the samples of a chain), average-pool
downsampling, global sum pooling, optional spectral normalisation (Miyato et al. 2018) on every
conv and linear layer to bound the Lipschitz constant of E.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm

from shared.config import JsonConfig


@dataclass(frozen=True)
class EnergyConfig(JsonConfig):
    """Everything needed to rebuild the energy network; saved as JSON beside its weights."""

    image_size: int = 32
    in_channels: int = 3
    base_channels: int = 64
    channel_mult: tuple[int, ...] = (1, 2, 2)
    num_res_blocks: int = 1
    spectral_norm: bool = False
    num_classes: int | None = 10  # None: a single scalar energy, unconditional only
    num_levels: int | None = None  # noise levels of a recovery-likelihood energy; None: one clean-data energy
    class_names: tuple[str, ...] = field(default=())

    def __post_init__(self) -> None:
        for name in ("channel_mult", "class_names"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        levels = len(self.channel_mult)
        if self.image_size % (2 ** (levels - 1)):
            raise ValueError(f"image_size {self.image_size} is not divisible by 2^{levels - 1} ({levels} levels)")
        if self.num_classes is not None and self.num_classes < 2:
            raise ValueError(f"num_classes must be >= 2 or None, got {self.num_classes}")
        if self.class_names and self.num_classes != len(self.class_names):
            raise ValueError(f"{len(self.class_names)} class names given for num_classes={self.num_classes}")
        if self.num_levels is not None and self.num_levels < 1:
            raise ValueError(f"num_levels must be >= 1 or None, got {self.num_levels}")


class ResBlock(nn.Module):
    """SiLU-conv-SiLU-conv plus a (1x1 when the width changes) skip connection.

    With num_levels, a learned per-channel offset for the noise level is added after the first conv.
    """

    def __init__(self, in_ch: int, out_ch: int, num_levels: int | None = None) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1)
        self.skip = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()
        self.level = nn.Embedding(num_levels, out_ch) if num_levels else None
        if self.level is not None:
            nn.init.zeros_(self.level.weight)

    def forward(self, x: torch.Tensor, level: torch.Tensor | None = None) -> torch.Tensor:
        h = self.conv1(F.silu(x))
        if self.level is not None:
            if level is None:
                raise ValueError("this energy is conditioned on a noise level: pass level (B,)")
            h = h + self.level(level)[:, :, None, None]
        return self.skip(x) + self.conv2(F.silu(h))


class EnergyNet(nn.Module):
    """f_theta(x): (B, C, H, W) in [-1, 1] -> (B, K) logits (K = num_classes, or 1 for a plain energy)."""

    def __init__(self, config: EnergyConfig) -> None:
        super().__init__()
        self.config = cfg = config
        layers: list[nn.Module] = [nn.Conv2d(cfg.in_channels, cfg.base_channels, 3, padding=1)]
        width = cfg.base_channels
        for i, mult in enumerate(cfg.channel_mult):
            for _ in range(cfg.num_res_blocks):
                layers.append(ResBlock(width, cfg.base_channels * mult, cfg.num_levels))
                width = cfg.base_channels * mult
            if i < len(cfg.channel_mult) - 1:
                layers.append(nn.AvgPool2d(2))
        self.features = nn.ModuleList(layers)
        self.head = nn.Linear(width, cfg.num_classes or 1)
        if cfg.spectral_norm:
            for module in list(self.modules()):
                if isinstance(module, nn.Conv2d | nn.Linear):
                    spectral_norm(module)

    def forward(self, x: torch.Tensor, level: torch.Tensor | None = None) -> torch.Tensor:
        """Logits (B, K); `level` (B,) long: the noise level of each image (recovery-likelihood energies)."""
        h = x
        for layer in self.features:
            h = layer(h, level) if isinstance(layer, ResBlock) else layer(h)
        h = F.silu(h)  # (B, C, h, w)
        return self.head(h.sum(dim=(2, 3)))  # (B, K)

    def energy(
        self,
        x: torch.Tensor,
        labels: torch.Tensor | None = None,
        level: torch.Tensor | None = None,
        guidance_scale: float = 1.0,
    ) -> torch.Tensor:
        """E(x) per image, shape (B,) (E(x, t) at noise levels `level` for recovery-likelihood energies).

        For JEM networks, labels (B,) ask for E(x, y) = -f(x)[y]; a label of -1 (or no labels at
        all) asks for the marginal E(x) = -logsumexp_y f(x)[y] (JEM Eq. 5).

        guidance_scale w sharpens the class of labelled images: E_w(x, y) = E(x) + w (E(x, y) - E(x))
        = E(x) - w log p(y | x), the energy of p(x) p(y | x)^w (classifier guidance, Dhariwal & Nichol
        2021, Sec. 4.1, with the energy's own classifier; in the form of classifier-free guidance, Ho &
        Salimans 2022, Eq. 6). w = 1 is E(x, y) itself. Both terms come from the same logits: one pass.
        """
        logits = self(x, level)
        if self.config.num_classes is None:
            if labels is not None and bool((labels >= 0).any()):
                raise ValueError("this energy network is unconditional: it takes no class label")
            return logits.squeeze(1)
        return jem_energy(logits, labels, guidance_scale)


def jem_energy(logits: torch.Tensor, labels: torch.Tensor | None = None, guidance_scale: float = 1.0) -> torch.Tensor:
    """Energies (B,) from JEM logits (B, K): -f[y] for labels >= 0 (guided, see `EnergyNet.energy`), else
    the marginal -logsumexp f."""
    marginal = -torch.logsumexp(logits, dim=1)
    if labels is None:
        return marginal
    conditional = -logits.gather(1, labels.clamp(min=0).view(-1, 1)).squeeze(1)
    if guidance_scale != 1.0:
        conditional = marginal + guidance_scale * (conditional - marginal)
    return torch.where(labels >= 0, conditional, marginal)
