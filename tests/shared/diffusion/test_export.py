"""The UNet's export form computes the same function as the UNet, module by module and as a whole."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from shared.diffusion.export import ChannelsFirstAttention, ChannelStatsGroupNorm, SubpixelUpsample, export_view
from shared.diffusion.unet import AttentionBlock, Upsample
from tests.conftest import seeded_unet, tiny_unet_config

# fp32, another order of the same float operations: ~1e-7 measured; a wrong tap, group or transpose is O(0.1)
TOLERANCE = 1e-5


def randomise(module: nn.Module, seed: int = 0) -> nn.Module:
    """Every parameter N(0, 0.3^2): plain initialisation zeroes attention's output projection and sets
    GroupNorm's affine to 1 / 0, which would hide a mix-up of those parameters."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.3)
    return module.eval()


def features(*shape: int, offset: float = 0.0, seed: int = 1) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)) + offset


@pytest.mark.parametrize("groups", [1, 4, 16])
@pytest.mark.parametrize("offset", [0.0, 20.0])
def test_channel_stats_group_norm_is_group_norm(groups: int, offset: float) -> None:
    # offset 20: a mean far above the spread, where E[x^2] - E[x]^2 would lose the variance to cancellation
    norm = randomise(nn.GroupNorm(groups, 16))
    x = features(3, 16, 5, 7, offset=offset)
    torch.testing.assert_close(ChannelStatsGroupNorm(norm)(x), norm(x), atol=TOLERANCE, rtol=TOLERANCE)


@pytest.mark.parametrize("size", [(4, 4), (5, 7), (1, 1)])
def test_subpixel_upsample_is_nearest_upsample_then_conv(size: tuple[int, int]) -> None:
    # odd and one-pixel maps: every border row and column comes from the zero padding on both forms
    upsample = randomise(Upsample(6))
    x = features(2, 6, *size)
    out = SubpixelUpsample(upsample)(x)
    assert out.shape == (2, 6, 2 * size[0], 2 * size[1])
    torch.testing.assert_close(out, upsample(x), atol=TOLERANCE, rtol=TOLERANCE)


@pytest.mark.parametrize("heads", [1, 2, 4])
def test_channels_first_attention_is_the_attention_block(heads: int) -> None:
    block = randomise(AttentionBlock(8, heads, 4))
    x = features(3, 8, 4, 6)
    out = ChannelsFirstAttention(block)(x)
    torch.testing.assert_close(out, block(x), atol=TOLERANCE, rtol=TOLERANCE)
    assert (out - x).abs().max() > 0.1, "the residual branch is not zero, so the comparison tests attention"


@pytest.mark.parametrize("num_classes", [3, None])
def test_the_export_view_is_the_same_network(num_classes: int | None) -> None:
    config = tiny_unet_config(dropout=0.5)
    config = config if num_classes else tiny_unet_config(dropout=0.5, num_classes=None, class_names=())
    unet = seeded_unet(config)  # every parameter random, attention's projection and GroupNorm's affine too
    unet.train()  # the view is in eval mode whatever the module's mode (dropout off), the module keeps its own
    view = export_view(unet)
    assert unet.training and not view.training
    gen = torch.Generator().manual_seed(2)
    x, t = torch.randn(4, 3, 8, 8, generator=gen), torch.tensor([0, 33, 66, 99])
    labels = torch.tensor([0, 1, 2, 3]) if num_classes else None  # 3 is the null label
    kinds = {type(m) for m in view.modules()}
    assert {ChannelStatsGroupNorm, ChannelsFirstAttention, SubpixelUpsample} <= kinds
    assert not {nn.GroupNorm, AttentionBlock, Upsample} & kinds
    with torch.no_grad():
        expected = unet.eval()(x, t, labels)
        torch.testing.assert_close(view(x, t, labels), expected, atol=TOLERANCE, rtol=TOLERANCE)
    # the original is untouched: its own modules, weights shared by value only
    assert any(isinstance(m, nn.GroupNorm) for m in unet.modules())
    with torch.no_grad():
        next(view.parameters()).add_(1.0)
        torch.testing.assert_close(unet(x, t, labels), expected)


def test_convert_refuses_modules_its_rewrites_were_not_derived_for() -> None:
    odd = Upsample(4)
    odd.conv = nn.Conv2d(4, 4, 5, padding=2)
    with pytest.raises(ValueError, match="3x3"):
        export_view(nn.Sequential(odd))
    with pytest.raises(ValueError, match="affine"):
        export_view(nn.Sequential(nn.GroupNorm(2, 4, affine=False)))
