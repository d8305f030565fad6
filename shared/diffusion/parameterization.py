"""What the network predicts, and how its output becomes eps: eps-, v- and EDM-preconditioned prediction.

All three live on the same discrete 1000-step VP schedule (`GaussianDiffusion`), so the DDPM, DDIM
and DPM-Solver samplers work unchanged: whatever the network predicts is turned into eps at step t.
Notation per step t: alpha_t = sqrt(alpha_bar_t), sigma_vp_t = sqrt(1 - alpha_bar_t) (the VP scales),
and the EDM noise level sigma_t = sigma_vp_t / alpha_t = sqrt((1 - alpha_bar_t) / alpha_bar_t), so that
x_t = alpha_t (x_0 + sigma_t eps) (Karras et al. 2022, Eq. 7 with s(t) = alpha_t).

    eps   the network predicts eps (Ho et al. 2020, Eq. 14)
    v     the network predicts v = alpha_t eps - sigma_vp_t x_0 (Salimans & Ho 2022, "Progressive
          Distillation for Fast Sampling of Diffusion Models", Sec. 4 and Appendix D)
    edm   the network F is preconditioned as in Karras et al. 2022 ("Elucidating the Design Space of
          Diffusion-Based Generative Models"), Table 1:
              D(x; sigma) = c_skip x + c_out F(c_in x; c_noise)         (Eq. 7)
              c_skip = sigma_data^2 / (sigma^2 + sigma_data^2)
              c_out  = sigma sigma_data / sqrt(sigma^2 + sigma_data^2)
              c_in   = 1 / sqrt(sigma^2 + sigma_data^2)
          with x = x_t / alpha_t the variance-exploding image. c_noise is the schedule's own step
          index t (a monotone function of sigma, which is all Table 1's ln(sigma) / 4 provides), so the
          UNet's sinusoidal time embedding is unchanged. Training draws ln(sigma) ~ N(P_mean, P_std^2)
          (P_mean -1.2, P_std 1.2) and snaps it to the nearest step of the schedule; with the loss
          weight lambda(sigma) = (sigma^2 + sigma_data^2) / (sigma sigma_data)^2 the loss is the plain
          squared error of F against its target (x_0 - c_skip x) / c_out (Eq. 8 and Table 1).
"""

from __future__ import annotations

from enum import StrEnum
from typing import Protocol

import torch

# Karras et al. 2022, Table 1: the data's standard deviation and the training noise distribution.
SIGMA_DATA = 0.5
P_MEAN, P_STD = -1.2, 1.2


class Prediction(StrEnum):
    EPS = "eps"
    V = "v"
    EDM = "edm"


class Schedule(Protocol):
    """The per-step constants of `GaussianDiffusion` that the conversions read (float32 tables)."""

    alphas_cumprod: torch.Tensor
    sqrt_alphas_cumprod: torch.Tensor  # alpha_t
    sqrt_one_minus_alphas_cumprod: torch.Tensor  # sigma_vp_t
    sqrt_recip_alphas_cumprod: torch.Tensor  # 1 / alpha_t
    sqrt_recipm1_alphas_cumprod: torch.Tensor  # sigma_t (EDM)


def _at(values: torch.Tensor, t: torch.Tensor, ndim: int) -> torch.Tensor:
    return values.gather(0, t).reshape(t.shape[0], *([1] * (ndim - 1)))


def edm_coefficients(sigma: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(c_skip, c_out, c_in) of Karras et al. 2022, Table 1."""
    total = sigma**2 + SIGMA_DATA**2
    return SIGMA_DATA**2 / total, sigma * SIGMA_DATA / total.sqrt(), total.rsqrt()


def network_input(prediction: Prediction, schedule: Schedule, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """What the network sees: x_t itself, or c_in x_t / alpha_t under EDM preconditioning."""
    if prediction is not Prediction.EDM:
        return x_t
    _, _, c_in = edm_coefficients(_at(schedule.sqrt_recipm1_alphas_cumprod, t, x_t.ndim))
    return c_in * _at(schedule.sqrt_recip_alphas_cumprod, t, x_t.ndim) * x_t


def eps_from_output(
    prediction: Prediction, schedule: Schedule, output: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor
) -> torch.Tensor:
    """The network's output at step t turned into eps_theta(x_t, t)."""
    if prediction is Prediction.EPS:
        return output
    n = x_t.ndim
    if prediction is Prediction.V:
        # Salimans & Ho 2022, Appendix D: eps = sigma_vp x_t + alpha v
        return (
            _at(schedule.sqrt_one_minus_alphas_cumprod, t, n) * x_t + _at(schedule.sqrt_alphas_cumprod, t, n) * output
        )
    sigma = _at(schedule.sqrt_recipm1_alphas_cumprod, t, n)
    c_skip, c_out, _ = edm_coefficients(sigma)
    x = _at(schedule.sqrt_recip_alphas_cumprod, t, n) * x_t
    denoised = c_skip * x + c_out * output  # D(x; sigma), Eq. 7
    return (x - denoised) / sigma  # x = x_0 + sigma eps


def training_target(
    prediction: Prediction,
    schedule: Schedule,
    x_0: torch.Tensor,
    x_t: torch.Tensor,
    noise: torch.Tensor,
    t: torch.Tensor,
) -> torch.Tensor:
    """What the network's output is regressed on: eps, v, or EDM's effective target for F."""
    if prediction is Prediction.EPS:
        return noise
    n = x_t.ndim
    if prediction is Prediction.V:
        # v = alpha eps - sigma_vp x_0
        return _at(schedule.sqrt_alphas_cumprod, t, n) * noise - _at(schedule.sqrt_one_minus_alphas_cumprod, t, n) * x_0
    c_skip, c_out, _ = edm_coefficients(_at(schedule.sqrt_recipm1_alphas_cumprod, t, n))
    x = _at(schedule.sqrt_recip_alphas_cumprod, t, n) * x_t
    return (x_0 - c_skip * x) / c_out  # Karras et al. 2022, Eq. 8


def sample_timesteps(prediction: Prediction, schedule: Schedule, batch: int, device: torch.device) -> torch.Tensor:
    """Training steps: uniform over [0, T) (Ho et al. 2020, Algorithm 1), or EDM's log-normal sigma.

    EDM: ln(sigma) ~ N(P_mean, P_std^2) (Karras et al. 2022, Table 1), snapped to the step whose
    ln(sigma_t) is nearest (sigma_t increases with t); sigmas beyond the schedule's range clamp to its ends.
    """
    num_timesteps = schedule.alphas_cumprod.shape[0]
    if prediction is not Prediction.EDM:
        return torch.randint(0, num_timesteps, (batch,), device=device)
    log_sigmas = schedule.sqrt_recipm1_alphas_cumprod.to(device).log()
    drawn = torch.randn(batch, device=device) * P_STD + P_MEAN
    upper = torch.searchsorted(log_sigmas, drawn).clamp(1, num_timesteps - 1)
    nearer_lower = (drawn - log_sigmas[upper - 1]) < (log_sigmas[upper] - drawn)
    return torch.where(nearer_lower, upper - 1, upper)


def loss_weight(prediction: Prediction, snr: torch.Tensor, min_snr_gamma: float | None) -> torch.Tensor | None:
    """Per-sample weight of the squared error, or None for equal weights.

    Min-SNR-gamma (Hang et al. 2023, "Efficient Diffusion Training via Min-SNR Weighting Strategy",
    Sec. 3.4): min(SNR, gamma) / SNR for an eps target, min(SNR, gamma) / (SNR + 1) for a v target.
    EDM's lambda(sigma) already makes F's loss equally weighted, so it takes no extra weight.
    """
    if min_snr_gamma is None or prediction is Prediction.EDM:
        return None
    clipped = torch.clamp(snr, max=min_snr_gamma)
    return clipped / snr if prediction is Prediction.EPS else clipped / (snr + 1.0)
