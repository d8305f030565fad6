"""Langevin dynamics moves the images and nothing else."""

from __future__ import annotations

import itertools

import pytest
import torch

from shared.ebm.energy import EnergyNet
from shared.ebm.langevin import LangevinParams, energy_grad, eval_mode, langevin_chain, sample_model
from shared.seeding import make_generators
from tests.conftest import seeded_energy_net, tiny_energy_config


def snapshot(net: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: t.detach().clone() for name, t in [*net.named_parameters(), *net.named_buffers()]}


@pytest.mark.parametrize("spectral_norm", [False, True])
@pytest.mark.parametrize("start_in_train_mode", [False, True])
def test_sampling_leaves_the_network_exactly_as_it_was(spectral_norm: bool, start_in_train_mode: bool) -> None:
    net = seeded_energy_net(tiny_energy_config(spectral_norm=spectral_norm))
    net.train(start_in_train_mode)
    if spectral_norm:
        net(torch.zeros(1, 3, 8, 8))  # a train-mode forward would advance the power iteration...
    before = snapshot(net)
    x0 = torch.rand(4, 3, 8, 8) * 2 - 1
    x = sample_model(net, x0, LangevinParams(steps=10, noise_scale=0.0), labels=torch.tensor([0, 1, 2, -1]))

    assert all(p.grad is None for p in net.parameters())  # no parameter gradient was ever created
    after = snapshot(net)
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)  # ...but sampling never does: eval mode
    assert net.training is start_in_train_mode  # the previous mode is back
    assert all(p.requires_grad for p in net.parameters())
    assert (x - x0).abs().mean() > 1e-3  # the input gradient was used: the images moved
    assert not x.requires_grad and x.grad_fn is None  # no graph is kept


def test_energy_grad_differentiates_the_input_only() -> None:
    net = seeded_energy_net(tiny_energy_config())
    x = torch.rand(3, 3, 8, 8)
    energy, grad = energy_grad(net.energy, x)
    assert grad.shape == x.shape and energy.shape == (3,)
    assert all(p.grad is None for p in net.parameters())
    # image i's gradient is its own: the same as when it is alone
    _, alone = energy_grad(net.energy, x[1:2])
    assert torch.allclose(grad[1:2], alone, atol=1e-6)


def test_without_noise_the_chain_is_gradient_descent_on_the_energy() -> None:
    net = seeded_energy_net(tiny_energy_config())
    energies: list[float] = []
    x0 = torch.rand(16, 3, 8, 8) * 2 - 1
    sample_model(
        net, x0, LangevinParams(steps=30, step_size=0.2, noise_scale=0.0, grad_clip=None),
        callback=lambda step, total, x: energies.append(net.energy(x).mean().item()),
    )  # fmt: skip
    start = net.energy(x0).mean().item()
    assert energies[-1] < start - 0.05
    decreasing = sum(b < a for a, b in itertools.pairwise([start, *energies]))
    assert decreasing >= 28  # all but a couple of the 30 steps lower the mean energy


def test_samples_an_analytic_gaussian_energy() -> None:
    """E(x) = 0.5 (x - mu)^T A (x - mu) gives p(x) = N(mu, A^-1); ULA with noise sqrt(step) samples it."""
    torch.manual_seed(0)
    a = torch.tensor([[2.0, 0.6], [0.6, 1.0]])
    mu = torch.tensor([0.5, -0.3])

    def energy(x: torch.Tensor) -> torch.Tensor:
        d = x - mu
        return 0.5 * ((d @ a) * d).sum(1)

    step = 0.01
    params = LangevinParams(steps=1500, step_size=step, noise_scale=step**0.5, grad_clip=None, clamp=None)
    x = langevin_chain(energy, torch.zeros(4000, 2), params)
    cov = torch.cov(x.T)
    assert torch.allclose(x.mean(0), mu, atol=0.05)
    assert torch.allclose(cov, torch.linalg.inv(a), atol=0.05)


def test_gradient_clip_bounds_each_move() -> None:
    net = seeded_energy_net(tiny_energy_config())
    x0 = torch.rand(2, 3, 8, 8) * 2 - 1
    x = sample_model(net, x0, LangevinParams(steps=1, step_size=1000.0, noise_scale=0.0, grad_clip=0.01, clamp=None))
    assert (x - x0).abs().max() <= 1000.0 / 2 * 0.01 + 1e-5


def test_chains_stay_in_the_data_range() -> None:
    net = seeded_energy_net(tiny_energy_config())
    x = sample_model(net, torch.rand(4, 3, 8, 8) * 2 - 1, LangevinParams(steps=5, step_size=100.0, noise_scale=0.5))
    assert x.min() >= -1 and x.max() <= 1


def test_seeded_chains_do_not_depend_on_their_batch() -> None:
    net = seeded_energy_net(tiny_energy_config())
    x0 = torch.rand(5, 3, 8, 8) * 2 - 1
    params = LangevinParams(steps=8, noise_scale=0.05)
    batch = sample_model(net, x0, params, generators=make_generators([10, 11, 12, 13, 14]))
    alone = sample_model(net, x0[3:4], params, generators=make_generators([13]))
    assert torch.allclose(batch[3:4], alone, atol=1e-5)
    again = sample_model(net, x0, params, generators=make_generators([10, 11, 12, 13, 14]))
    assert torch.equal(batch, again)
    with pytest.raises(ValueError, match="generators"):
        sample_model(net, x0, params, generators=make_generators([1]))


def test_callback_sees_every_step_and_can_stop_the_chain() -> None:
    net = seeded_energy_net(tiny_energy_config())
    steps: list[tuple[int, int]] = []

    def stop_at_3(step: int, total: int, x: torch.Tensor) -> None:
        steps.append((step, total))
        if step == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        sample_model(net, torch.zeros(1, 3, 8, 8), LangevinParams(steps=10), callback=stop_at_3)
    assert steps == [(1, 10), (2, 10), (3, 10)]
    assert net.training  # the mode is restored even when the chain is stopped


def test_eval_mode_restores_eval_too() -> None:
    net = EnergyNet(tiny_energy_config()).eval()
    with eval_mode(net):
        assert not net.training
    assert not net.training


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"steps": -1}, "steps"),
        ({"step_size": 0}, "step_size"),
        ({"noise_scale": -1}, "noise"),
        ({"grad_clip": 0}, "clip"),
    ],
)
def test_params_are_validated(kwargs: dict[str, float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        LangevinParams(**kwargs)  # type: ignore[arg-type]
