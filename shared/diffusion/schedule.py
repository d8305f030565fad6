"""Noise schedules beta_1..beta_T for the DDPM forward process.

Glossary (Ho et al. 2020, "Denoising Diffusion Probabilistic Models", arXiv:2006.11239):
    beta_t          variance of the one-step kernel q(x_t | x_{t-1}) = N(sqrt(1 - beta_t) x_{t-1}, beta_t I)
    alpha_t         1 - beta_t
    alpha_bar_t     prod_{s<=t} alpha_s, so q(x_t | x_0) = N(sqrt(alpha_bar_t) x_0, (1 - alpha_bar_t) I)

Time is 0-based in code: index t in [0, T) stands for the paper's step t + 1.
Schedules are computed in float64 (cumulative products of 1000 factors lose digits in float32)
and handed out as float64 numpy arrays; `GaussianDiffusion` stores them as float32 tensors.
"""

from __future__ import annotations

import math
from enum import StrEnum

import numpy as np


class ScheduleKind(StrEnum):
    """The beta schedules this project supports."""

    LINEAR = "linear"
    COSINE = "cosine"


def linear_betas(num_timesteps: int, beta_start: float = 1e-4, beta_end: float = 0.02) -> np.ndarray:
    """Ho et al. 2020, Sec. 4: betas linear from 1e-4 to 0.02 over T = 1000 steps.

    For other T the end points are rescaled by 1000 / T (as in improved-diffusion) so that the
    total amount of noise stays comparable.
    """
    scale = 1000.0 / num_timesteps
    return np.linspace(scale * beta_start, scale * beta_end, num_timesteps, dtype=np.float64)


def cosine_betas(num_timesteps: int, s: float = 0.008, max_beta: float = 0.999) -> np.ndarray:
    """Nichol & Dhariwal 2021 ("Improved DDPM", arXiv:2102.09672), Eq. 17.

    alpha_bar(t) = f(t) / f(0),  f(t) = cos^2(((t / T + s) / (1 + s)) * pi / 2),
    beta_t = 1 - alpha_bar(t) / alpha_bar(t - 1), clipped at 0.999 to avoid the singularity at t = T.
    """

    def f(t: np.ndarray) -> np.ndarray:
        return np.cos((t / num_timesteps + s) / (1 + s) * math.pi / 2) ** 2

    t = np.arange(num_timesteps + 1, dtype=np.float64)
    alpha_bar = f(t) / f(np.zeros(1))
    betas = 1.0 - alpha_bar[1:] / alpha_bar[:-1]
    return np.clip(betas, 0.0, max_beta)


def make_betas(kind: ScheduleKind | str, num_timesteps: int) -> np.ndarray:
    """The betas of schedule `kind` (a `ScheduleKind` or its value) over `num_timesteps` steps."""
    try:
        kind = ScheduleKind(kind)
    except ValueError:
        allowed = ", ".join(k.value for k in ScheduleKind)
        raise ValueError(f"unknown noise schedule {kind!r}; expected one of: {allowed}") from None
    if num_timesteps < 1:
        raise ValueError(f"num_timesteps must be >= 1, got {num_timesteps}")
    if kind is ScheduleKind.LINEAR:
        return linear_betas(num_timesteps)
    return cosine_betas(num_timesteps)
