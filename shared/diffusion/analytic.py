"""Closed-form reference models for checking samplers without trained weights."""

from __future__ import annotations

import torch

from shared.diffusion.process import EpsModel, GaussianDiffusion


def gaussian_denoiser(diffusion: GaussianDiffusion, mu: float | torch.Tensor, s: float) -> EpsModel:
    """The exact eps-prediction for data x_0 ~ N(mu, s^2 I): E[eps | x_t] in closed form.

    x_t = sqrt(ab) x_0 + sqrt(1 - ab) eps is jointly Gaussian with eps, so
    E[eps | x_t] = Cov(eps, x_t) / Var(x_t) (x_t - E x_t) = sqrt(1 - ab) (x_t - sqrt(ab) mu) / (ab s^2 + 1 - ab).
    A sampler driven by it must reproduce N(mu, s^2); mu may be a tensor that broadcasts over x (an image).
    """

    def eps(x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        ab = diffusion.alphas_cumprod[t].view(-1, *([1] * (x.ndim - 1)))
        return (x - ab.sqrt() * mu) * (1 - ab).sqrt() / (ab * s * s + 1 - ab)

    return eps
