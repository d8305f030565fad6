from __future__ import annotations

import pytest
import torch

from shared.ebm.objective import contrastive_divergence_loss
from tests.conftest import seeded_energy_net, tiny_energy_config


def grads(net: torch.nn.Module, scalar: torch.Tensor) -> list[torch.Tensor]:
    return list(torch.autograd.grad(scalar, list(net.parameters())))


@pytest.mark.parametrize("num_classes", [None, 3])
def test_cd_gradient_pushes_data_energy_down_and_negative_energy_up(num_classes: int | None) -> None:
    """The sign check: grad L = grad E(x+) - grad E(x-), so descending L lowers E(x+) and raises E(x-)."""
    net = seeded_energy_net(tiny_energy_config(num_classes=num_classes, class_names=()))
    gen = torch.Generator().manual_seed(0)
    x_pos = torch.rand(8, 3, 8, 8, generator=gen) * 0.2 + 0.4  # "data": mid-grey images
    x_neg = torch.rand(8, 3, 8, 8, generator=gen) * 2 - 1  # "negatives": noise
    g_loss = grads(net, contrastive_divergence_loss(net, x_pos, x_neg, alpha=0.0).loss)
    g_pos = grads(net, net.energy(x_pos).mean())
    g_neg = grads(net, net.energy(x_neg).mean())
    # One batch of 2B against two batches of B: the sums round apart in the last bits, by up to 2.5e-6 on
    # an AMD EPYC (gradients here are 0.03-1.5); a wrong sign or a missing term is off by ~0.1.
    for gl, gp, gn in zip(g_loss, g_pos, g_neg, strict=True):
        torch.testing.assert_close(gl, gp - gn, rtol=1e-4, atol=1e-5)

    before_pos, before_neg = net.energy(x_pos).mean().item(), net.energy(x_neg).mean().item()
    optimizer = torch.optim.SGD(net.parameters(), lr=1e-3)
    for _ in range(20):
        optimizer.zero_grad()
        contrastive_divergence_loss(net, x_pos, x_neg, alpha=0.0).loss.backward()
        optimizer.step()
    after_pos, after_neg = net.energy(x_pos).mean().item(), net.energy(x_neg).mean().item()
    assert after_pos < before_pos
    assert after_pos - after_neg < before_pos - before_neg - 0.1  # data now sits lower than noise


def test_the_regulariser_and_the_jem_cross_entropy_are_added() -> None:
    net = seeded_energy_net(tiny_energy_config())
    x_pos, x_neg = torch.rand(4, 3, 8, 8), torch.rand(4, 3, 8, 8)
    labels = torch.tensor([0, 1, 2, 0])
    e_pos, e_neg = net.energy(x_pos), net.energy(x_neg)
    plain = contrastive_divergence_loss(net, x_pos, x_neg, alpha=0.5)
    expected = e_pos.mean() - e_neg.mean() + 0.5 * (e_pos.pow(2).mean() + e_neg.pow(2).mean())
    assert plain.loss.item() == pytest.approx(expected.item(), rel=1e-5)
    assert plain.cross_entropy == 0.0
    with_ce = contrastive_divergence_loss(net, x_pos, x_neg, labels=labels, alpha=0.5, ce_weight=2.0)
    ce = torch.nn.functional.cross_entropy(net(x_pos), labels)
    assert with_ce.cross_entropy == pytest.approx(ce.item(), rel=1e-5)
    assert with_ce.loss.item() == pytest.approx(expected.item() + 2.0 * ce.item(), rel=1e-5)


def test_negatives_get_no_gradient() -> None:
    net = seeded_energy_net(tiny_energy_config())
    x_neg = torch.rand(2, 3, 8, 8, requires_grad=True)
    contrastive_divergence_loss(net, torch.rand(2, 3, 8, 8), x_neg).loss.backward()
    assert x_neg.grad is None
