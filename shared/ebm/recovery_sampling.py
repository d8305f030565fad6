"""The recovery-likelihood chain: Langevin dynamics on the image, level by level from Gaussian noise.

At level t (Gao et al. 2021, arXiv:2012.08125, Sec. 3.3 and Algorithm 2), K steps of Langevin
dynamics on y = a_{t+1} x_t, started at x_{t+1}, on the potential (minus the log of Eq. 8)

    U(y) = E_theta(y, t) / s_t^2 + ||y - x_{t+1}||^2 / (2 sigma_{t+1}^2)        (no second term at t = T - 1)
    y <- y - (s_t^2 / 2) grad_y U(y) + noise_scale * s_t * z,     z ~ N(0, I)

(the energy is divided by s_t^2 as in the reference code, so the drift on the energy is grad E / 2
at every level), then x_t = y / a_{t+1}. Serving runs t = T-1, ..., 0 from x_T ~ N(0, I); training
runs one level per image, from the data's own x_{t+1}: the same chain. As in
shared/ebm/langevin.py, gradients are taken with respect to the image only (`energy_grad`); the
network's parameters stay frozen and the network is in eval mode.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from shared.ebm.langevin import LangevinParams, StepCallback, energy_grad, eval_mode
from shared.ebm.recovery import RecoverySchedule
from shared.seeding import randn_per_sample


def recovery_chain(
    net: nn.Module,
    schedule: RecoverySchedule,
    x_next: torch.Tensor,
    t: torch.Tensor,
    params: LangevinParams,
    *,
    labels: torch.Tensor | None = None,
    guidance_scale: float = 1.0,
    generators: Sequence[torch.Generator] | None = None,
    on_step: StepCallback | None = None,
) -> torch.Tensor:
    """Sample y ~ p(y | x_{t+1}) with params.steps Langevin steps; returns y (detached, not rescaled).

    params: steps = K, step_size = b^2 of s_t^2 = b^2 c_t^2 sigma_{t+1}^2, noise_scale = the factor
    on s_t (the reference code: 1.0 in training, 0.99 in testing), grad_clip = an optional clip of the
    drift (s_t^2 / 2) grad_y U per pixel and step (None: none); clamp is unused (x_t is noisy until level 0).
    """
    step_sq = schedule.step_size_sq(t, params.step_size, x_next)
    recovery = schedule.recovery_weight(t, x_next)
    x_next = x_next.detach()

    def potential(y: torch.Tensor) -> torch.Tensor:  # U(y), shape (B,)
        energy = net.energy(y, labels, t, guidance_scale)  # type: ignore[operator]
        quadratic = (recovery * (y - x_next) ** 2).flatten(1).sum(1)
        return energy / step_sq.flatten() + quadratic

    y = x_next.clone()
    for k in range(params.steps):
        _, grad = energy_grad(potential, y)
        drift = 0.5 * step_sq * grad
        if params.grad_clip is not None:
            drift = drift.clamp(-params.grad_clip, params.grad_clip)
        y = y - drift
        if params.noise_scale > 0:
            z = randn_per_sample(generators, y.shape[1:], device=y.device) if generators else torch.randn_like(y)
            y = y + params.noise_scale * step_sq.sqrt() * z
        if on_step is not None:
            on_step(k + 1, params.steps, y)
    return y.detach()


def recovery_sample(
    net: nn.Module,
    schedule: RecoverySchedule,
    x_top: torch.Tensor,
    params: LangevinParams,
    *,
    labels: torch.Tensor | None = None,
    guidance_scale: float = 1.0,
    generators: Sequence[torch.Generator] | None = None,
    callback: StepCallback | None = None,
) -> torch.Tensor:
    """x_T (Gaussian noise) -> x_0, through all T levels; callback counts T * K steps in all."""
    levels = schedule.num_levels
    total = levels * params.steps
    x = x_top.detach()
    with eval_mode(net):
        for i, level in enumerate(range(levels - 1, -1, -1)):
            t = torch.full((x.shape[0],), level, dtype=torch.long, device=x.device)

            def on_step(k: int, _: int, y: torch.Tensor, done: int = i * params.steps) -> None:
                if callback is not None:
                    callback(done + k, total, y)

            y = recovery_chain(
                net, schedule, x, t, params,
                labels=labels, guidance_scale=guidance_scale, generators=generators, on_step=on_step,
            )  # fmt: skip
            x = y / schedule.y_scale(t, y)
    return x
