"""Diffusion recovery likelihood: the noise levels, the conditional energy and its Langevin step sizes.

Gao, Song, Poole, Wu & Kingma 2021, "Learning Energy-Based Models by Diffusion Recovery Likelihood"
(ICLR 2021, arXiv:2012.08125). Instead of one energy of clean images, learn energies f_theta(y, t)
of images at T + 1 noise levels, linked by the Gaussian steps (Sec. 3.1, Eq. 6)

    x_{t+1} = a_{t+1} x_t + sigma_{t+1} eps,        a_{t+1} = sqrt(1 - sigma_{t+1}^2),

and learn each level from the *conditional* of the cleaner image given the noisier one (Eq. 7-8),
written in the scaled variable y = a_{t+1} x_t:

    p_theta(y | x_{t+1}) ∝ exp( f_theta(y, t) - ||y - x_{t+1}||^2 / (2 sigma_{t+1}^2) ).

That conditional is close to a Gaussian around x_{t+1} (its quadratic term dominates for small
sigma), so a short Langevin chain started *at* x_{t+1} mixes: training and serving run the same
short chains, from noise, level by level (the top level T is pure noise; its chain has no
recovery term). This module holds the numbers; the chain itself is shared/ebm/recovery_sampling.py
and the loss shared/ebm/objective.py (network, process maths and sampling loop apart, as for the
diffusion model).

Noise levels (the reference implementation's schedule): the linear DDPM betas 1e-4 ... 0.02 over 1000
steps (Ho et al. 2020, Sec. 4), sampled at t = 0, s, 2s, ..., (T-1)s with s = 1000 // (2 (T - 1)),
plus the last step 999: level 0 is data after one DDPM step (sigma ~0.01), level T is pure noise
(a_cum ~ 0.006). a_t is the product of the sqrt(1 - beta) between consecutive levels.
Langevin step size at level t (Gao et al., Sec. 3.3 / reference code): s_t^2 = b^2 c_t^2 sigma_{t+1}^2
with c_t^2 = sigma_cum_t / sigma_cum_0 and b^2 = 2e-4 by default.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

BASE_STEPS = 1000  # the DDPM schedule the levels are taken from


@dataclass(frozen=True)
class RecoverySchedule:
    """T + 1 noise levels; index t in [0, T]. Tensors are float32 on the CPU, shape (T + 1,)."""

    num_levels: int = 6  # T: the number of recovery steps (Gao et al.: 6)
    beta_start: float = 1e-4
    beta_end: float = 0.02
    a: torch.Tensor = field(init=False, repr=False)  # a_t = sqrt(1 - sigma_t^2): x_t = a_t x_{t-1} + sigma_t eps
    sigma: torch.Tensor = field(init=False, repr=False)
    a_cum: torch.Tensor = field(init=False, repr=False)  # x_t = a_cum_t x_data + sigma_cum_t eps
    sigma_cum: torch.Tensor = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if not 2 <= self.num_levels <= BASE_STEPS // 2:
            raise ValueError(f"num_levels must be in [2, {BASE_STEPS // 2}], got {self.num_levels}")
        betas = torch.linspace(self.beta_start, self.beta_end, BASE_STEPS, dtype=torch.float64)
        stride = BASE_STEPS // (2 * (self.num_levels - 1))
        ends = [*(t * stride for t in range(self.num_levels)), BASE_STEPS - 1]  # DDPM step of each level
        log_sqrt_alpha = 0.5 * torch.log1p(-betas)
        starts = [0, *(e + 1 for e in ends[:-1])]
        a = torch.stack([log_sqrt_alpha[s : e + 1].sum().exp() for s, e in zip(starts, ends, strict=True)])
        a_cum = torch.cumprod(a, 0)
        for name, value in {
            "a": a,
            "sigma": (1 - a**2).sqrt(),
            "a_cum": a_cum,
            "sigma_cum": (1 - a_cum**2).sqrt(),
        }.items():
            object.__setattr__(self, name, value.float())

    # --- the forward (noising) process, Eq. 6 ---
    def q_sample(self, x: torch.Tensor, t: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
        """x_t = a_cum_t x + sigma_cum_t eps for data x and levels t (B,)."""
        noise = torch.randn_like(x) if noise is None else noise
        return _at(self.a_cum, t, x) * x + _at(self.sigma_cum, t, x) * noise

    def q_sample_pair(self, x: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(x_t, x_{t+1}) for t in [0, T - 1]: the training pair of the recovery likelihood."""
        x_t = self.q_sample(x, t)
        return x_t, _at(self.a, t + 1, x) * x_t + _at(self.sigma, t + 1, x) * torch.randn_like(x)

    # --- the conditional p(y | x_{t+1}), Eq. 8, in y = a_{t+1} x_t ---
    def y_scale(self, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """a_{t+1} for recovery levels; 1 at the top level (t = T - 1), whose chain has no recovery term."""
        return torch.where(_at_flat(t, self.num_levels - 1), 1.0, _at(self.a, t + 1, like))

    def recovery_weight(self, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """1 / (2 sigma_{t+1}^2) for recovery levels, 0 at the top level (sampled from pure noise)."""
        weight = 0.5 / _at(self.sigma, t + 1, like) ** 2
        return torch.where(_at_flat(t, self.num_levels - 1), 0.0, weight)

    def step_size_sq(self, t: torch.Tensor, b_sq: float, like: torch.Tensor) -> torch.Tensor:
        """s_t^2 = b^2 (sigma_cum_t / sigma_cum_0) sigma_{t+1}^2 (Gao et al. Sec. 3.3; reference code)."""
        c_sq = _at(self.sigma_cum, t, like) / self.sigma_cum[0]
        return b_sq * c_sq * _at(self.sigma, t + 1, like) ** 2

    def loss_weight(self, t: torch.Tensor) -> torch.Tensor:
        """sigma_1 / sigma_{t+1}: the per-level weight of the reference code's loss, shape (B,)."""
        return self.sigma[1] / self.sigma.to(t.device)[t + 1]


def _at(values: torch.Tensor, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """values[t] shaped (B, 1, 1, 1) to broadcast against images `like`."""
    return values.to(like.device, like.dtype)[t].view(-1, *([1] * (like.dim() - 1)))


def _at_flat(t: torch.Tensor, top: int) -> torch.Tensor:
    return (t == top).view(-1, 1, 1, 1)
