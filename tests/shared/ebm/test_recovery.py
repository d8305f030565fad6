"""Diffusion recovery likelihood: the noise levels, the conditional chain, the loss and the served sampler."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from shared.ebm.langevin import LangevinParams
from shared.ebm.objective import recovery_likelihood_loss
from shared.ebm.pipeline import EBMPipeline, EBMSampleParams
from shared.ebm.recovery import BASE_STEPS, RecoverySchedule
from shared.ebm.recovery_sampling import recovery_chain, recovery_sample
from tests.conftest import seeded_energy_net, tiny_energy_config


def test_levels_are_the_reference_schedule_subsampled() -> None:
    schedule = RecoverySchedule(6)
    betas = torch.linspace(1e-4, 0.02, BASE_STEPS, dtype=torch.float64)
    alpha_bar = torch.cumprod(1 - betas, 0)
    ddpm_steps = [0, 100, 200, 300, 400, 500, 999]  # Gao et al.'s code for T = 6
    expected = alpha_bar[ddpm_steps].sqrt().float()
    torch.testing.assert_close(schedule.a_cum, expected, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(schedule.a**2 + schedule.sigma**2, torch.ones(7))
    torch.testing.assert_close(schedule.a_cum**2 + schedule.sigma_cum**2, torch.ones(7))
    assert schedule.sigma_cum[0] == pytest.approx(0.01, rel=1e-3)  # level 0: data after one DDPM step
    assert schedule.a_cum[-1] < 0.01  # level T: noise


def test_the_pair_has_the_forward_process_marginals() -> None:
    schedule = RecoverySchedule(6)
    torch.manual_seed(0)
    x = torch.full((4000, 1, 2, 2), 0.5)
    for level in (0, 2, 5):
        t = torch.full((x.shape[0],), level)
        x_t, x_next = schedule.q_sample_pair(x, t)
        for sample, k in ((x_t, level), (x_next, level + 1)):
            assert sample.mean().item() == pytest.approx(0.5 * schedule.a_cum[k].item(), abs=0.02)
            assert sample.std().item() == pytest.approx(schedule.sigma_cum[k].item(), rel=0.05, abs=0.01)


class Quadratic(nn.Module):
    """E(y) = scale ||y||^2 / 2: the chain divides E by s_t^2 and steps s_t^2 / 2, so its drift is scale * y / 2."""

    def __init__(self, scale: float) -> None:
        super().__init__()
        self.scale = scale
        self.weight = nn.Parameter(torch.ones(()))

    def energy(
        self, y: torch.Tensor, labels: torch.Tensor | None, t: torch.Tensor, guidance_scale: float = 1.0
    ) -> torch.Tensor:
        return self.weight * self.scale * y.pow(2).flatten(1).sum(1) / 2


def test_one_chain_step_is_the_langevin_update_of_eq_8() -> None:
    schedule, b_sq = RecoverySchedule(6), 2e-4
    net = Quadratic(scale=0.4)
    x_next = torch.randn(2, 3, 4, 4)
    params = LangevinParams(steps=1, step_size=b_sq, noise_scale=0.0, grad_clip=None, clamp=None)
    top = torch.full((2,), 5)
    y = recovery_chain(net, schedule, x_next, top, params)  # no recovery term at the top level
    torch.testing.assert_close(y, x_next - 0.5 * 0.4 * x_next)
    two = LangevinParams(steps=2, step_size=b_sq, noise_scale=0.0, grad_clip=None, clamp=None)
    t = torch.full((2,), 1)
    y1 = x_next - 0.2 * x_next  # step 1 starts at x_{t+1}: the recovery term's gradient is zero there
    s_sq = schedule.step_size_sq(t, b_sq, x_next)
    recovery = 0.5 * s_sq / schedule.sigma[2] ** 2 * (y1 - x_next)  # (s^2 / 2) grad ||y - x||^2 / (2 sigma^2)
    torch.testing.assert_close(recovery_chain(net, schedule, x_next, t, two), y1 - 0.2 * y1 - recovery)
    assert net.weight.grad is None  # the parameters stayed out of it


def test_the_chain_noise_has_std_noise_scale_times_s_t() -> None:
    schedule, b_sq = RecoverySchedule(6), 2e-4
    net = Quadratic(scale=0.0)
    x_next = torch.zeros(64, 3, 8, 8)
    t = torch.full((64,), 5)
    torch.manual_seed(0)
    y = recovery_chain(net, schedule, x_next, t, LangevinParams(steps=1, step_size=b_sq, noise_scale=0.5, clamp=None))
    expected = 0.5 * math.sqrt(schedule.step_size_sq(t[:1], b_sq, x_next[:1]).item())
    assert y.std().item() == pytest.approx(expected, rel=0.05)


def test_the_loss_is_the_weighted_energy_difference_and_trains_the_right_way() -> None:
    net = seeded_energy_net(tiny_energy_config(num_levels=6))
    y_pos, y_neg = torch.randn(4, 3, 8, 8), torch.randn(4, 3, 8, 8)
    t, labels = torch.tensor([0, 1, 4, 5]), torch.tensor([0, 1, -1, 2])
    weight = RecoverySchedule(6).loss_weight(t)
    terms = recovery_likelihood_loss(net, y_pos, y_neg, t, weight, labels=labels)
    with torch.no_grad():
        expected = (weight * (net.energy(y_pos, labels, t) - net.energy(y_neg, labels, t))).mean()
    torch.testing.assert_close(terms.loss.detach(), expected, rtol=1e-5, atol=1e-6)
    optimizer = torch.optim.SGD(net.parameters(), lr=1e-3)
    terms.loss.backward()
    optimizer.step()
    with torch.no_grad():  # data energy down, negatives' energy up
        gap = net.energy(y_pos, labels, t).mean() - net.energy(y_neg, labels, t).mean()
    assert gap < terms.energy_pos - terms.energy_neg


def test_the_cross_entropy_is_added_and_teaches_the_energys_classifier() -> None:
    """ce_weight * CE(softmax f(y+, t), c) on the data: the class logit of the true class rises."""
    net = seeded_energy_net(tiny_energy_config(num_levels=6))
    y_pos, y_neg = torch.randn(4, 3, 8, 8), torch.randn(4, 3, 8, 8)
    t, labels, classes = torch.tensor([0, 1, 4, 5]), torch.tensor([0, 1, -1, 2]), torch.tensor([0, 1, 1, 2])
    weight = RecoverySchedule(6).loss_weight(t)
    plain = recovery_likelihood_loss(net, y_pos, y_neg, t, weight, labels=labels)
    with_ce = recovery_likelihood_loss(net, y_pos, y_neg, t, weight, labels=labels, classes=classes, ce_weight=0.5)
    with torch.no_grad():
        ce = nn.functional.cross_entropy(net(y_pos, t), classes)
    assert plain.cross_entropy == 0.0 and with_ce.cross_entropy == pytest.approx(ce.item(), rel=1e-5)
    torch.testing.assert_close(with_ce.loss.detach(), plain.loss.detach() + 0.5 * ce, rtol=1e-5, atol=1e-6)
    assert recovery_likelihood_loss(net, y_pos, y_neg, t, weight, labels=labels, classes=classes).cross_entropy == 0.0
    optimizer = torch.optim.SGD(net.parameters(), lr=1e-2)
    ce_only = recovery_likelihood_loss(net, y_pos, y_neg, t, 0 * weight, classes=classes, ce_weight=1.0)
    ce_only.loss.backward()
    optimizer.step()
    with torch.no_grad():
        assert nn.functional.cross_entropy(net(y_pos, t), classes) < ce


def test_the_level_changes_the_energy() -> None:
    net = seeded_energy_net(tiny_energy_config(num_levels=6))
    nn.init.normal_(net.features[1].level.weight)  # zero-initialised: give the levels different offsets
    x = torch.randn(1, 3, 8, 8).expand(2, -1, -1, -1)
    energies = net.energy(x, None, torch.tensor([0, 3]))
    assert (energies[0] - energies[1]).abs() > 1e-3
    with pytest.raises(ValueError, match="noise level"):
        net.energy(x)


@pytest.fixture
def pipeline() -> EBMPipeline:
    net = seeded_energy_net(tiny_energy_config(num_levels=3))
    card = {"sampling": {"steps": 4, "step_size": 2e-3, "noise_scale": 0.99, "grad_clip": None, "clamp": None}}
    return EBMPipeline(net, card)


def test_served_samples_are_seeded_per_image_and_depend_on_their_seed(pipeline: EBMPipeline) -> None:
    chain = pipeline.default_langevin
    both = pipeline.sample(EBMSampleParams(seeds=(3, 7), langevin=chain, labels=(0, 1)))
    alone = pipeline.sample(EBMSampleParams(seeds=(7,), langevin=chain, labels=(1,)))
    again = pipeline.sample(EBMSampleParams(seeds=(3, 7), langevin=chain, labels=(0, 1)))
    assert torch.equal(both, again)  # same seeds, same shapes, same path: bit-exact
    torch.testing.assert_close(both[1:], alone, atol=1e-4, rtol=0)  # batch of 2 vs alone: same image
    assert (both[0] - both[1]).abs().mean() > 0.1  # different seeds: different images
    assert both.min() >= -1 and both.max() <= 1


def test_the_served_chain_counts_levels_times_steps(pipeline: EBMPipeline) -> None:
    seen: list[tuple[int, int]] = []
    params = EBMSampleParams(seeds=(0,), langevin=pipeline.default_langevin)
    pipeline.sample(params, callback=lambda k, total, x: seen.append((k, total)))
    assert pipeline.total_steps(pipeline.default_langevin) == 12 == len(seen)
    assert seen == [(k, 12) for k in range(1, 13)]
    assert pipeline.recipe == "recovery-likelihood"


def test_recovery_sample_runs_the_levels_from_the_top_down() -> None:
    schedule = RecoverySchedule(3)
    calls: list[int] = []

    class Recorder(nn.Module):
        def energy(
            self, y: torch.Tensor, labels: torch.Tensor | None, t: torch.Tensor, guidance_scale: float = 1.0
        ) -> torch.Tensor:
            calls.append(int(t[0]))
            return (0 * y).flatten(1).sum(1)

    chain = LangevinParams(steps=2, step_size=1e-3, clamp=None)
    x = recovery_sample(Recorder(), schedule, torch.randn(1, 3, 4, 4), chain)
    assert calls == [2, 2, 1, 1, 0, 0]
    assert torch.isfinite(x).all()
