from __future__ import annotations

import json

import pytest
import torch

from shared.ebm.energy import EnergyConfig, EnergyNet
from shared.weights import count_parameters
from tests.conftest import seeded_energy_net, tiny_energy_config


def test_one_energy_per_image() -> None:
    net = seeded_energy_net(tiny_energy_config())
    x = torch.rand(5, 3, 8, 8) * 2 - 1
    assert net(x).shape == (5, 3)
    assert net.energy(x).shape == (5,)


def test_jem_energies_follow_the_logits() -> None:
    """JEM: E(x, y) = -f(x)[y] and E(x) = -logsumexp_y f(x)[y]; label -1 asks for the marginal."""
    net = seeded_energy_net(tiny_energy_config())
    x = torch.rand(4, 3, 8, 8) * 2 - 1
    logits = net(x)
    labels = torch.tensor([0, 2, -1, 1])
    energy = net.energy(x, labels)
    assert torch.allclose(net.energy(x), -torch.logsumexp(logits, 1))
    assert torch.allclose(energy[[0, 1, 3]], -logits[[0, 1, 3], [0, 2, 1]])
    assert torch.allclose(energy[2], -torch.logsumexp(logits[2], 0))
    # the marginal is a soft minimum over classes: below every class energy
    assert torch.all(net.energy(x)[:, None] <= -logits + 1e-6)


def test_guidance_sharpens_the_class_by_the_energys_own_classifier() -> None:
    """E_w(x, y) = E(x) - w log p(y | x): w = 1 is E(x, y), w = 0 the marginal; unlabelled rows unchanged."""
    net = seeded_energy_net(tiny_energy_config())
    x = torch.rand(4, 3, 8, 8) * 2 - 1
    labels = torch.tensor([0, 2, -1, 1])
    log_p = torch.log_softmax(net(x), 1)[[0, 1, 3], [0, 2, 1]]
    marginal = net.energy(x)
    assert torch.allclose(net.energy(x, labels, guidance_scale=1.0), net.energy(x, labels))
    assert torch.allclose(net.energy(x, labels, guidance_scale=0.0), marginal)
    guided = net.energy(x, labels, guidance_scale=3.0)
    assert torch.allclose(guided[[0, 1, 3]], marginal[[0, 1, 3]] - 3.0 * log_p, atol=1e-5)
    assert torch.equal(guided[2], marginal[2])
    assert not torch.allclose(guided, net.energy(x, labels))


def test_unconditional_network_is_a_scalar_energy() -> None:
    net = seeded_energy_net(tiny_energy_config(num_classes=None, class_names=()))
    x = torch.rand(2, 3, 8, 8)
    assert torch.allclose(net.energy(x), net(x).squeeze(1))
    with pytest.raises(ValueError, match="unconditional"):
        net.energy(x, torch.tensor([0, 1]))


def test_spectral_norm_wraps_every_layer() -> None:
    net = EnergyNet(tiny_energy_config(spectral_norm=True))
    layers = [m for m in net.modules() if isinstance(m, torch.nn.Conv2d | torch.nn.Linear)]
    assert layers and all(hasattr(m, "parametrizations") for m in layers)
    assert any("_u" in name for name, _ in net.named_buffers())


def test_images_do_not_interact() -> None:
    """No normalisation layers: an image's energy ignores the rest of its batch."""
    net = seeded_energy_net(tiny_energy_config())
    x = torch.rand(6, 3, 8, 8) * 2 - 1
    assert torch.allclose(net.energy(x[:1]), net.energy(x)[:1], atol=1e-6)


def test_default_config_size() -> None:
    assert 0.2e6 < count_parameters(EnergyNet(EnergyConfig())) < 2e6


def test_config_round_trip_and_validation() -> None:
    config = tiny_energy_config(spectral_norm=True)
    assert EnergyConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    with pytest.raises(ValueError, match="divisible"):
        tiny_energy_config(image_size=6, channel_mult=(1, 2, 2))
    with pytest.raises(ValueError, match="num_classes"):
        tiny_energy_config(num_classes=1, class_names=())
    with pytest.raises(ValueError, match="unknown"):
        EnergyConfig.from_dict({**config.to_dict(), "depth": 3})
