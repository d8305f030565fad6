"""Sampling loops: DDPM ancestral sampling and DDIM, with classifier-free guidance.

The loops own neither the network nor the schedule: they take an eps-model callable and a
`GaussianDiffusion`. Each sample's noise comes from its own seeded generator (`shared.seeding`),
so an image depends only on (weights, parameters, seed), never on what else shared its batch.

References:
    Ho et al. 2020, "Denoising Diffusion Probabilistic Models" (arXiv:2006.11239)      -- DDPM
    Song et al. 2021, "Denoising Diffusion Implicit Models" (arXiv:2010.02502)          -- DDIM
    Ho & Salimans 2022, "Classifier-Free Diffusion Guidance" (arXiv:2207.12598)         -- CFG
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from enum import Enum, StrEnum

import numpy as np
import torch

from shared.diffusion.process import EpsModel, GaussianDiffusion, extract
from shared.seeding import make_generators, randn_per_sample

# callback(step, total, x0_preview): called after each completed step (1-based), x0_preview is the
# current prediction of the clean images in [-1, 1], shape (B, C, H, W). Raising from it stops the
# loop: the worker uses that for cooperative cancellation.
StepCallback = Callable[[int, int, torch.Tensor], None]


class SamplerKind(StrEnum):
    DDPM = "ddpm"
    DDIM = "ddim"


class VarianceKind(StrEnum):
    """sigma_t^2 of the DDPM reverse step (Ho et al. 2020, Sec. 3.2: both gave similar results)."""

    BETA = "beta"  # sigma_t^2 = beta_t, optimal for x_0 ~ N(0, I)
    POSTERIOR = "posterior"  # sigma_t^2 = beta_tilde_t, optimal for x_0 deterministic


class Spacing(StrEnum):
    """How DDIM picks its sub-sequence tau of [0, T) (Song et al. 2021, Appendix D.2)."""

    UNIFORM = "uniform"
    QUADRATIC = "quadratic"


def parse_enum(enum_cls: type[Enum], value: object, what: str) -> Enum:
    """enum_cls(value), or a ValueError that lists the allowed values."""
    try:
        return enum_cls(value)
    except ValueError:
        allowed = ", ".join(str(m.value) for m in enum_cls)
        raise ValueError(f"unknown {what} {value!r}; expected one of: {allowed}") from None


def guided_eps_model(model: EpsModel, guidance_scale: float, null_label: int | None) -> EpsModel:
    """Wrap eps_theta with classifier-free guidance, paying for the unconditional pass only where it acts.

    Ho & Salimans 2022, Eq. 6: eps~ = (1 + w) eps(x, c) - w eps(x, null), written here with the
    guidance scale s = 1 + w as eps(x, null) + s * (eps(x, c) - eps(x, null)).

    Guidance acts on a row only when the row has a label: a null label is an unconditional sample, for
    which both terms coincide and eps~ = eps(x, null). Each call runs the network once: on the B rows as
    given, plus one unconditional copy of each labelled row (B + L rows in one batch). With no labelled
    row that is exactly the unguided call (same batch, same bytes); unlabelled rows get eps(x, null) untouched.
    """
    if null_label is None or guidance_scale == 1.0:
        return model

    def eps(x: torch.Tensor, t: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        if labels is None:
            return model(x, t, None)
        rows = (labels != null_label).nonzero().squeeze(1)
        if rows.numel() == 0:
            return model(x, t, labels)
        batch = x.shape[0]
        null = torch.full_like(rows, null_label)
        both = model(torch.cat([x, x[rows]]), torch.cat([t, t[rows]]), torch.cat([labels, null]))  # (B + L, C, H, W)
        eps_cond, eps_uncond = both[:batch], both[batch:]
        guided_rows = eps_uncond + guidance_scale * (eps_cond[rows] - eps_uncond)
        return eps_cond.index_copy(0, rows, guided_rows)

    return eps


def ddim_timesteps(num_timesteps: int, steps: int, spacing: Spacing | str = Spacing.UNIFORM) -> list[int]:
    """The increasing sub-sequence tau_1 < ... < tau_S of [0, T) that DDIM visits (0-based).

    uniform: evenly spaced from 0 to T - 1 (steps == T gives every step);
    quadratic: tau_i proportional to i^2 (Song et al. 2021, Appendix D.2), denser near t = 0.
    """
    spacing = parse_enum(Spacing, spacing, "timestep spacing")
    if not 1 <= steps <= num_timesteps:
        raise ValueError(f"steps must be in [1, {num_timesteps}], got {steps}")
    if steps == 1:
        return [num_timesteps - 1]
    if spacing is Spacing.UNIFORM:
        taus = np.round(np.linspace(0, num_timesteps - 1, steps)).astype(np.int64)
    else:
        taus = np.round(np.linspace(0, np.sqrt(num_timesteps - 1), steps) ** 2).astype(np.int64)
        # Near t = 0 the squares are closer than one step apart: push each up to stay strictly increasing.
        for i in range(1, steps):
            taus[i] = max(taus[i], taus[i - 1] + 1)
        if taus[-1] > num_timesteps - 1:
            raise ValueError(f"quadratic spacing cannot fit {steps} distinct steps in {num_timesteps}")
    return [int(t) for t in taus]


class _Loop:
    """What both samplers share: seeded noise, the x_0 prediction, progress callbacks."""

    def __init__(
        self,
        model: EpsModel,
        diffusion: GaussianDiffusion,
        seeds: Sequence[int],
        shape: Sequence[int],
        labels: torch.Tensor | None,
        clip_denoised: bool,
        callback: StepCallback | None,
    ) -> None:
        self.model, self.diffusion = model, diffusion
        self.device = diffusion.betas.device
        self.generators = make_generators(seeds)
        self.shape = tuple(shape)
        self.labels = labels.to(self.device) if labels is not None else None
        self.clip_denoised = clip_denoised
        self.callback = callback

    def noise(self) -> torch.Tensor:
        return randn_per_sample(self.generators, self.shape, device=self.device)

    def predict(self, x_t: torch.Tensor, t: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(t as a batch tensor, eps, x_0) at step t; with clipping, eps is re-derived from the clipped x_0."""
        t_batch = torch.full((x_t.shape[0],), t, device=self.device, dtype=torch.long)
        eps = self.model(x_t, t_batch, self.labels).float()
        x_0 = self.diffusion.predict_x0_from_eps(x_t, t_batch, eps)
        if self.clip_denoised:
            x_0 = x_0.clamp(-1.0, 1.0)
            eps = self.diffusion.predict_eps_from_x0(x_t, t_batch, x_0)
        return t_batch, eps, x_0

    def notify(self, step: int, total: int, x_0: torch.Tensor) -> None:
        if self.callback is not None:
            self.callback(step, total, x_0)


@torch.inference_mode()
def ddpm_sample(
    model: EpsModel,
    diffusion: GaussianDiffusion,
    seeds: Sequence[int],
    shape: Sequence[int],
    *,
    labels: torch.Tensor | None = None,
    variance: VarianceKind | str = VarianceKind.BETA,
    clip_denoised: bool = True,
    callback: StepCallback | None = None,
) -> torch.Tensor:
    """Ancestral sampling over all T steps (Ho et al. 2020, Algorithm 2); returns x_0 in [-1, 1].

    Each step draws x_{t-1} ~ N(mu_tilde_t(x_t, x_0_hat), sigma_t^2 I), where mu_tilde is the posterior
    mean of Eq. 7 evaluated at the predicted x_0_hat (Eq. 15). Without clipping this is exactly
    Algorithm 2's x_{t-1} = (x_t - beta_t / sqrt(1 - alpha_bar_t) eps) / sqrt(alpha_t) + sigma_t z (Eq. 11).
    No noise is added at the last step.
    """
    variance = parse_enum(VarianceKind, variance, "variance")
    loop = _Loop(model, diffusion, seeds, shape, labels, clip_denoised, callback)
    sigma2 = diffusion.betas if variance is VarianceKind.BETA else diffusion.posterior_variance
    total = diffusion.num_timesteps
    x = loop.noise()  # x_T ~ N(0, I)
    for i, t in enumerate(reversed(range(total))):
        t_batch, _, x_0 = loop.predict(x, t)
        mean, _, _ = diffusion.q_posterior_mean_variance(x_0, x, t_batch)
        x = mean + extract(sigma2, t_batch, x.ndim).sqrt() * loop.noise() if t > 0 else mean
        loop.notify(i + 1, total, x_0)
    return x.clamp(-1.0, 1.0)


@torch.inference_mode()
def ddim_sample(
    model: EpsModel,
    diffusion: GaussianDiffusion,
    seeds: Sequence[int],
    shape: Sequence[int],
    *,
    steps: int = 50,
    eta: float = 0.0,
    spacing: Spacing | str = Spacing.UNIFORM,
    labels: torch.Tensor | None = None,
    clip_denoised: bool = True,
    callback: StepCallback | None = None,
) -> torch.Tensor:
    """DDIM over a sub-sequence of `steps` timesteps (Song et al. 2021, Eq. 12); returns x_0 in [-1, 1].

    x_prev = sqrt(alpha_bar_prev) x_0_hat + sqrt(1 - alpha_bar_prev - sigma^2) eps + sigma z, with
    sigma = eta * sqrt((1 - alpha_bar_prev) / (1 - alpha_bar_t)) * sqrt(1 - alpha_bar_t / alpha_bar_prev)
    (Eq. 16). eta = 0 is deterministic; eta = 1 with every step is DDPM with sigma_t^2 = beta_tilde_t.
    """
    if eta < 0:
        raise ValueError(f"eta must be >= 0, got {eta}")
    taus = ddim_timesteps(diffusion.num_timesteps, steps, spacing)
    loop = _Loop(model, diffusion, seeds, shape, labels, clip_denoised, callback)
    alphas_cumprod = diffusion.alphas_cumprod
    x = loop.noise()  # x_T ~ N(0, I)
    pairs = list(zip(reversed(taus), [*reversed(taus[:-1]), -1], strict=True))  # (t, t_prev)
    for i, (t, t_prev) in enumerate(pairs):
        _, eps, x_0 = loop.predict(x, t)
        a_t = alphas_cumprod[t]
        a_prev = alphas_cumprod[t_prev] if t_prev >= 0 else torch.ones_like(a_t)
        sigma = eta * torch.sqrt((1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev))  # Eq. 16
        x = a_prev.sqrt() * x_0 + (1 - a_prev - sigma**2).clamp(min=0).sqrt() * eps
        if t_prev >= 0 and eta > 0:
            x = x + sigma * loop.noise()
        loop.notify(i + 1, len(pairs), x_0)
    return x.clamp(-1.0, 1.0)
