from __future__ import annotations

import json

import pytest
import torch

from shared.diffusion.unet import UNet, UNetConfig, timestep_embedding
from shared.weights import count_parameters
from tests.conftest import seeded_unet, tiny_unet_config


def test_output_shape_and_dtype(tiny_unet: UNet) -> None:
    x = torch.randn(3, 3, 8, 8)
    out = tiny_unet(x, torch.tensor([0, 50, 99]), torch.tensor([0, 1, 3]))
    assert out.shape == x.shape and out.dtype == torch.float32


def test_output_depends_on_time_and_label(tiny_unet: UNet) -> None:
    x = torch.randn(1, 3, 8, 8)
    base = tiny_unet(x, torch.tensor([10]), torch.tensor([0]))
    assert not torch.allclose(base, tiny_unet(x, torch.tensor([500]), torch.tensor([0])))
    assert not torch.allclose(base, tiny_unet(x, torch.tensor([10]), torch.tensor([1])))


def test_missing_labels_mean_the_null_label(tiny_unet: UNet) -> None:
    x, t = torch.randn(2, 3, 8, 8), torch.tensor([5, 5])
    assert torch.equal(tiny_unet(x, t, None), tiny_unet(x, t, torch.tensor([3, 3])))


def test_fresh_network_predicts_zero_and_has_gradients() -> None:
    """Zero-initialised output and residual branches: eps_theta starts at 0, yet every parameter learns."""
    unet = UNet(tiny_unet_config()).train()
    x = torch.randn(2, 3, 8, 8)
    out = unet(x, torch.tensor([1, 2]), torch.tensor([0, 1]))
    assert torch.count_nonzero(out) == 0
    for _ in range(3):  # zeroed layers learn on step 1; the time and label paths behind them by step 3
        unet.zero_grad()
        (unet(x, torch.tensor([1, 2]), torch.tensor([0, 1])) - x).pow(2).mean().backward()
        with torch.no_grad():
            for p in unet.parameters():
                p -= 0.1 * p.grad  # type: ignore[operator]
    missing = [n for n, p in unet.named_parameters() if p.grad is None or torch.count_nonzero(p.grad) == 0]
    # Only the unused rows of the label embedding may lack a gradient.
    assert missing == ["label_emb.weight"] or missing == []


def test_samples_are_independent_of_their_batch(tiny_unet: UNet) -> None:
    """GroupNorm and attention act within one image, so image 0's output ignores the others."""
    x = torch.randn(4, 3, 8, 8)
    t, y = torch.tensor([3, 30, 300, 3]), torch.tensor([0, 1, 2, 3])
    alone = tiny_unet(x[:1], t[:1], y[:1])
    assert torch.allclose(alone, tiny_unet(x, t, y)[:1], atol=1e-6)


def test_default_config_is_the_documented_ddpm_layout() -> None:
    config = UNetConfig()
    assert count_parameters(UNet(config)) == pytest.approx(6.48e6, rel=0.01)
    # The original DDPM CIFAR-10 network (Ho et al. 2020, App. B) is 35.7M parameters.
    ddpm = UNetConfig(base_channels=128, channel_mult=(1, 2, 2, 2), num_heads=1, num_classes=None)
    assert count_parameters(UNet(ddpm)) == pytest.approx(35.7e6, rel=0.005)


def test_config_json_round_trip() -> None:
    config = tiny_unet_config()
    data = json.loads(json.dumps(config.to_dict()))
    assert UNetConfig.from_dict(data) == config
    assert config.null_label == 3


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"image_size": 10, "channel_mult": (1, 2, 2)}, "divisible by 2"),
        ({"num_groups": 3}, "num_groups"),
        ({"num_heads": 3}, "num_heads"),
        ({"dropout": 1.0}, "dropout"),
        ({"class_names": ("a", "b")}, "class names"),
    ],
)
def test_config_rejects_inconsistent_values(overrides: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        tiny_unet_config(**overrides)


def test_from_dict_rejects_unknown_fields() -> None:
    with pytest.raises(ValueError, match="bogus"):
        UNetConfig.from_dict({**tiny_unet_config().to_dict(), "bogus": 1})


def test_timestep_embedding_is_sinusoidal() -> None:
    emb = timestep_embedding(torch.tensor([0, 7]), 8)
    assert emb.shape == (2, 8)
    assert torch.allclose(emb[0], torch.tensor([1.0, 1, 1, 1, 0, 0, 0, 0]))
    assert torch.allclose(emb[1, 0], torch.cos(torch.tensor(7.0))) and torch.allclose(
        emb[1, 4], torch.sin(torch.tensor(7.0))
    )


def test_seeded_unet_is_reproducible() -> None:
    a, b = seeded_unet(tiny_unet_config(), seed=3), seeded_unet(tiny_unet_config(), seed=3)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters(), strict=True))
