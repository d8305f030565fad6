"""Fixtures shared by the test tree: tiny seeded networks that run in milliseconds on a CPU."""

from __future__ import annotations

import pytest
import torch

from shared.diffusion.pipeline import DiffusionPipeline
from shared.diffusion.process import DiffusionConfig, GaussianDiffusion
from shared.diffusion.unet import UNet, UNetConfig
from shared.ebm.energy import EnergyConfig, EnergyNet

TINY_CLASSES = ("red", "green", "blue")


def tiny_unet_config(**overrides: object) -> UNetConfig:
    base: dict[str, object] = dict(
        image_size=8,
        base_channels=8,
        channel_mult=(1, 2),
        num_res_blocks=1,
        attention_resolutions=(4,),
        num_heads=2,
        num_groups=4,
        dropout=0.0,
        num_classes=3,
        class_names=TINY_CLASSES,
    )
    base.update(overrides)
    return UNetConfig(**base)  # type: ignore[arg-type]


def seeded_unet(config: UNetConfig, seed: int = 0) -> UNet:
    """A UNet whose every parameter is drawn from N(0, 0.1^2) with a fixed seed.

    Plain initialisation zeroes the output layer (eps = 0 everywhere), which would make sampling
    tests trivially pass; random weights give a network whose output depends on x, t and y.
    """
    torch.manual_seed(seed)
    unet = UNet(config)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in unet.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.1)
    return unet.eval()


@pytest.fixture
def tiny_config() -> UNetConfig:
    return tiny_unet_config()


@pytest.fixture
def tiny_unet(tiny_config: UNetConfig) -> UNet:
    return seeded_unet(tiny_config)


@pytest.fixture
def tiny_pipeline(tiny_unet: UNet) -> DiffusionPipeline:
    return DiffusionPipeline(tiny_unet, GaussianDiffusion(DiffusionConfig(num_timesteps=100)))


def tiny_energy_config(**overrides: object) -> EnergyConfig:
    base: dict[str, object] = dict(
        image_size=8, base_channels=8, channel_mult=(1, 2), num_res_blocks=1, num_classes=3, class_names=TINY_CLASSES
    )
    base.update(overrides)
    return EnergyConfig(**base)  # type: ignore[arg-type]


def seeded_energy_net(config: EnergyConfig, seed: int = 0) -> EnergyNet:
    torch.manual_seed(seed)
    return EnergyNet(config)
