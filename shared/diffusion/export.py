"""The UNet rewritten for a graph compiler: the same function, in operations a CPU runtime runs faster.

`export_view(unet)` returns a copy of the network in which three kinds of module compute what they
computed before, up to floating-point rounding, in a form that OpenVINO's CPU plugin keeps in its fast
channels-last (nhwc) layout; the torch path keeps the original modules (torch's own kernels prefer them).
What the rewrites saved, measured on the bench's 6.5M-parameter UNet (bf16, 2 cores, both idle,
16 rows as 2 single-thread streams of 8; median of 10 rounds, BENCHMARKS.md has the sampler-level
figures): all three together 156 -> 139 ms, one row on 2 threads 13.1 -> 12.5 ms.

- GroupNorm (Wu & He 2018, arXiv:1803.08494, Eq. 1-3). OpenVINO lowers it to a reshape to
  (B, G, C/G * H * W) and MVN, which need the planar layout: every norm cost a reorder out of nhwc and
  one back into it (12 of 168 ms). Here the statistics come from per-channel spatial means
  (ReduceMean over H, W keeps nhwc), averaged over each group's channels on the small (B, C) tensors;
  the variance is taken about the mean (two passes), not as E[x^2] - E[x]^2, which would cancel in bf16.
  The output is x * scale + shift, with the mean folded into the shift: where |mean| >> std that rounds
  worse in bf16 than (x - mean) * scale + bias would (not measured in OpenVINO; FID was unchanged).
- Self-attention (Vaswani et al. 2017, arXiv:1706.03762, Eq. 1): softmax(Q^T K / sqrt(d)) with Q, K, V
  kept as (B, heads, d, HW), the layout the 1x1 convolution produces; the matrix products transpose
  inside the kernel, so the permutes to (B, heads, HW, d) and back disappear.
- Nearest 2x upsampling followed by a 3x3 convolution. Each output pixel's 3x3 window over the
  upsampled map covers only 2x2 input pixels, so the pair equals four 2x2 convolutions on the small map
  (one per output phase, kernels summed from the 3x3 one) interleaved by a depth-to-space step
  (Shi et al. 2016, arXiv:1609.05158, Sec. 2.2): 4 instead of 9 multiply-adds per output value and input
  channel.
"""

from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F
from torch import nn

from shared.diffusion.unet import AttentionBlock, Upsample

# Names the rewrites below: cached samples made through an export (training/sources.py) are keyed by it,
# since a new rewrite changes the bf16 rounding and so the images. Change it whenever `convert` changes.
EXPORT_FORM = "channel-stats-groupnorm+channels-first-attention+subpixel-upsample"


class ChannelStatsGroupNorm(nn.Module):
    """nn.GroupNorm from per-channel spatial statistics: no reshape of the (B, C, H, W) feature map."""

    def __init__(self, norm: nn.GroupNorm) -> None:
        super().__init__()
        self.groups, self.eps = norm.num_groups, norm.eps
        self.weight, self.bias = norm.weight, norm.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, _, _ = x.shape
        g = self.groups

        def group_mean(per_channel: torch.Tensor) -> torch.Tensor:  # (B, C) -> each group's mean, (B, C)
            return per_channel.reshape(b, g, c // g).mean(-1, keepdim=True).expand(b, g, c // g).reshape(b, c)

        mean = group_mean(x.mean(dim=(2, 3)))  # mu_i of Eq. 1; groups have equal sizes, so means of means
        centred = x - mean[:, :, None, None]
        var = group_mean((centred * centred).mean(dim=(2, 3)))  # sigma_i^2 of Eq. 2 (biased, as GroupNorm)
        scale = torch.rsqrt(var + self.eps) * self.weight  # Eq. 3 and the per-channel affine gamma, beta
        shift = self.bias - mean * scale
        return x * scale[:, :, None, None] + shift[:, :, None, None]


class ChannelsFirstAttention(nn.Module):
    """AttentionBlock with Q, K, V in (B, heads, d, HW): the same residual attention without permutes."""

    def __init__(self, block: AttentionBlock) -> None:
        super().__init__()
        self.num_heads = block.num_heads
        self.scale = 1.0 / math.sqrt(block.qkv.in_channels // block.num_heads)  # 1 / sqrt(d_k) of Eq. 1
        self.norm, self.qkv, self.proj = convert(block.norm), block.qkv, block.proj

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        d = c // self.num_heads
        q, k, v = self.qkv(self.norm(x)).reshape(b, 3, self.num_heads, d, h * w).unbind(1)  # (B, heads, d, HW)
        weights = (torch.matmul(q.transpose(-1, -2), k) * self.scale).softmax(-1)  # (B, heads, HW, HW)
        out = torch.matmul(v, weights.transpose(-1, -2))  # (B, heads, d, HW): V softmax(Q^T K / sqrt d)^T
        return x + self.proj(out.reshape(b, c, h, w))


def fold_taps(kernel: torch.Tensor, dim: int, phase: int) -> torch.Tensor:
    """A 3-tap kernel axis as the 2 taps that act on the small map for output phase 0 or 1 (see below)."""
    first, middle, last = kernel.unbind(dim)
    return torch.stack((first, middle + last) if phase == 0 else (first + middle, last), dim=dim)


class SubpixelUpsample(nn.Module):
    """conv3x3(nearest_upsample_2x(x)) as four 2x2 convolutions on x and a depth-to-space interleave.

    Output row 2i + a reads upsampled rows 2i + a - 1 .. 2i + a + 1, i.e. input rows {i - 1, i} for a = 0
    (kernel rows 0 | 1 + 2) and {i, i + 1} for a = 1 (rows 0 + 1 | 2); columns likewise. Zero padding of
    the upsampled map is zero padding of the input, so the borders agree too.
    """

    def __init__(self, upsample: Upsample) -> None:
        super().__init__()
        w = upsample.conv.weight.detach()  # (O, I, 3, 3)
        kernels, self.pads = [], []
        for a in (0, 1):
            for c in (0, 1):
                kernels.append(fold_taps(fold_taps(w, -2, a), -1, c))  # (O, I, 2, 2)
                self.pads.append((1 - c, c, 1 - a, a))  # F.pad order: left, right, top, bottom
        self.kernels = nn.ParameterList(nn.Parameter(k, requires_grad=False) for k in kernels)
        self.bias = nn.Parameter(upsample.conv.bias.detach().clone(), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.shape
        phases = [F.conv2d(F.pad(x, pad), k, self.bias) for k, pad in zip(self.kernels, self.pads, strict=True)]
        out = torch.cat(phases, dim=1).reshape(b, 2, 2, -1, h, w)  # (B, a, c, O, H, W)
        return out.permute(0, 3, 4, 1, 5, 2).reshape(b, -1, 2 * h, 2 * w)  # [o, 2i + a, 2j + c]


def convert(module: nn.Module) -> nn.Module:
    """The export form of one module (the module itself where there is none)."""
    if isinstance(module, nn.GroupNorm):
        if not module.affine:
            raise ValueError("the export form of GroupNorm needs its affine weights (the UNet's have them)")
        return ChannelStatsGroupNorm(module)
    if isinstance(module, AttentionBlock):
        return ChannelsFirstAttention(module)
    if isinstance(module, Upsample):
        conv = module.conv
        layout = (conv.kernel_size, conv.stride, conv.padding, conv.dilation, conv.groups)
        if layout != ((3, 3), (1, 1), (1, 1), (1, 1), 1):
            raise ValueError(f"the sub-pixel form is derived for a 3x3, stride 1, padding 1 convolution, not {conv}")
        return SubpixelUpsample(module)
    return module


def export_view(unet: nn.Module) -> nn.Module:
    """A copy of `unet` (eval mode) with every GroupNorm, AttentionBlock and Upsample in its export form."""
    view = copy.deepcopy(unet).eval()
    for parent in list(view.modules()):
        for name, child in list(parent.named_children()):
            replacement = convert(child)
            if replacement is not child:
                setattr(parent, name, replacement)
    return view
