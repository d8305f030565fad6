"""The noise-prediction network eps_theta(x_t, t, y): a DDPM-style UNet for small RGB images.

Architecture after Ho et al. 2020 (arXiv:2006.11239, Appendix B), itself a PixelCNN++ / Wide-ResNet
UNet: residual blocks with GroupNorm and SiLU, the timestep fed through a sinusoidal embedding
(Vaswani et al. 2017, Sec. 3.5) and an MLP into every block, self-attention at chosen resolutions,
dropout, and one down/upsampling per level. Optional class conditioning adds a label embedding to the
time embedding; label `num_classes` is the "null" label used for unconditional and classifier-free
guided sampling (Ho & Salimans 2022, arXiv:2207.12598).

Shapes: B batch, C channels, H x W spatial, E = 4 * base_channels embedding width.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from shared.config import JsonConfig


@dataclass(frozen=True)
class UNetConfig(JsonConfig):
    """Everything needed to rebuild the network; saved as JSON beside its weights."""

    image_size: int = 32
    in_channels: int = 3
    base_channels: int = 64
    channel_mult: tuple[int, ...] = (1, 2, 2)
    num_res_blocks: int = 2
    attention_resolutions: tuple[int, ...] = (16,)
    num_heads: int = 4
    dropout: float = 0.1
    num_groups: int = 32
    num_classes: int | None = 10  # None: unconditional only
    class_names: tuple[str, ...] = field(default=())

    def __post_init__(self) -> None:
        for name in ("channel_mult", "attention_resolutions", "class_names"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        levels = len(self.channel_mult)
        if self.image_size % (2 ** (levels - 1)):
            raise ValueError(f"image_size {self.image_size} is not divisible by 2^{levels - 1} ({levels} levels)")
        widths = {self.base_channels * m for m in self.channel_mult}
        if any(w % self.num_groups for w in widths):
            raise ValueError(f"every level width {sorted(widths)} must be divisible by num_groups={self.num_groups}")
        if any(w % self.num_heads for w in widths):
            raise ValueError(f"every level width {sorted(widths)} must be divisible by num_heads={self.num_heads}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.class_names and self.num_classes != len(self.class_names):
            raise ValueError(f"{len(self.class_names)} class names given for num_classes={self.num_classes}")

    @property
    def null_label(self) -> int | None:
        """The label index that means "no class" (None for an unconditional network)."""
        return self.num_classes


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding of integer timesteps (Vaswani et al. 2017, Sec. 3.5), shape (B, dim)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = t.float()[:, None] * freqs[None, :]  # (B, half)
    return torch.cat([torch.cos(args), torch.sin(args)], dim=1)


def zero_module(module: nn.Module) -> nn.Module:
    """Zero-initialise a layer so that a residual branch starts as the identity."""
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


class ResBlock(nn.Module):
    """GroupNorm-SiLU-conv, add the projected embedding, GroupNorm-SiLU-dropout-conv, plus a skip."""

    def __init__(self, in_ch: int, out_ch: int, emb_dim: int, dropout: float, groups: int) -> None:
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, in_ch)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.emb_proj = nn.Linear(emb_dim, out_ch)
        self.norm2 = nn.GroupNorm(groups, out_ch)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = zero_module(nn.Conv2d(out_ch, out_ch, 3, padding=1))
        self.skip = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = h + self.emb_proj(F.silu(emb))[:, :, None, None]  # (B, C_out, 1, 1) broadcast
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        return self.skip(x) + h


class AttentionBlock(nn.Module):
    """Multi-head self-attention over the H*W positions, as a residual branch."""

    def __init__(self, channels: int, num_heads: int, groups: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.norm = nn.GroupNorm(groups, channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj = zero_module(nn.Conv2d(channels, channels, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        qkv = self.qkv(self.norm(x))  # (B, 3C, H, W)
        qkv = qkv.reshape(b, 3, self.num_heads, c // self.num_heads, h * w).permute(1, 0, 2, 4, 3)
        q, k, v = qkv.unbind(0)  # each (B, heads, HW, C/heads)
        out = F.scaled_dot_product_attention(q, k, v)  # (B, heads, HW, C/heads)
        out = out.permute(0, 1, 3, 2).reshape(b, c, h, w)
        return x + self.proj(out)


class Downsample(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class Upsample(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class Level(nn.Module):
    """One resolution of the encoder or decoder: residual blocks, each followed by optional attention."""

    def __init__(self, blocks: list[ResBlock], attend: bool, channels: list[int], heads: int, groups: int) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(blocks)
        self.attns = nn.ModuleList([AttentionBlock(ch, heads, groups) if attend else nn.Identity() for ch in channels])


class UNet(nn.Module):
    """eps_theta(x_t, t, y) for images of shape (B, in_channels, image_size, image_size)."""

    def __init__(self, config: UNetConfig) -> None:
        super().__init__()
        self.config = cfg = config
        ch, groups, heads = cfg.base_channels, cfg.num_groups, cfg.num_heads
        emb_dim = 4 * ch

        self.time_mlp = nn.Sequential(nn.Linear(ch, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        # One extra row: the null label (index num_classes) for unconditional / CFG sampling.
        self.label_emb = nn.Embedding(cfg.num_classes + 1, emb_dim) if cfg.num_classes is not None else None
        self.conv_in = nn.Conv2d(cfg.in_channels, ch, 3, padding=1)

        # Encoder: remember the width of every activation that is kept as a skip connection.
        skip_widths = [ch]
        width, resolution = ch, cfg.image_size
        self.down = nn.ModuleList()
        self.downsample = nn.ModuleList()
        for i, mult in enumerate(cfg.channel_mult):
            out = ch * mult
            blocks = [
                ResBlock(width if j == 0 else out, out, emb_dim, cfg.dropout, groups) for j in range(cfg.num_res_blocks)
            ]
            self.down.append(Level(blocks, resolution in cfg.attention_resolutions, [out] * len(blocks), heads, groups))
            skip_widths += [out] * cfg.num_res_blocks
            width = out
            last = i == len(cfg.channel_mult) - 1
            self.downsample.append(nn.Identity() if last else Downsample(width))
            if not last:
                skip_widths.append(width)
                resolution //= 2

        self.mid_block1 = ResBlock(width, width, emb_dim, cfg.dropout, groups)
        self.mid_attn = AttentionBlock(width, heads, groups)
        self.mid_block2 = ResBlock(width, width, emb_dim, cfg.dropout, groups)

        # Decoder: num_res_blocks + 1 blocks per level, each consuming one skip connection.
        self.up = nn.ModuleList()
        self.upsample = nn.ModuleList()
        for i, mult in reversed(list(enumerate(cfg.channel_mult))):
            out = ch * mult
            blocks = []
            for _ in range(cfg.num_res_blocks + 1):
                blocks.append(ResBlock(width + skip_widths.pop(), out, emb_dim, cfg.dropout, groups))
                width = out
            self.up.append(Level(blocks, resolution in cfg.attention_resolutions, [out] * len(blocks), heads, groups))
            self.upsample.append(Upsample(width) if i > 0 else nn.Identity())
            if i > 0:
                resolution *= 2
        assert not skip_widths, "every skip connection is consumed"

        self.norm_out = nn.GroupNorm(groups, width)
        self.conv_out = zero_module(nn.Conv2d(width, cfg.in_channels, 3, padding=1))

    def forward(self, x: torch.Tensor, t: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """x: (B, C, H, W) noisy images; t: (B,) int timesteps; labels: (B,) int or None (= null label)."""
        emb = self.time_mlp(timestep_embedding(t, self.config.base_channels))  # (B, E)
        if self.label_emb is not None:
            if labels is None:
                labels = torch.full_like(t, self.config.num_classes or 0)
            emb = emb + self.label_emb(labels)

        h = self.conv_in(x)
        skips = [h]
        for level, down in zip(self.down, self.downsample, strict=True):
            for block, attn in zip(level.blocks, level.attns, strict=True):
                h = attn(block(h, emb))
                skips.append(h)
            if not isinstance(down, nn.Identity):
                h = down(h)
                skips.append(h)

        h = self.mid_block2(self.mid_attn(self.mid_block1(h, emb)), emb)

        for level, up in zip(self.up, self.upsample, strict=True):
            for block, attn in zip(level.blocks, level.attns, strict=True):
                h = attn(block(torch.cat([h, skips.pop()], dim=1), emb))  # (B, C + C_skip, H, W) in
            h = up(h)

        return self.conv_out(F.silu(self.norm_out(h)))
