"""Sampling loops: DDPM ancestral sampling, DDIM and DPM-Solver++(2M), with classifier-free guidance.

The loops own neither the network nor the schedule: they take an eps-model callable and a
`GaussianDiffusion`. Each sample's noise comes from its own seeded generator (`shared.seeding`),
so an image depends only on (weights, parameters, seed), never on what else shared its batch.

References:
    Ho et al. 2020, "Denoising Diffusion Probabilistic Models" (arXiv:2006.11239)      -- DDPM
    Song et al. 2021, "Denoising Diffusion Implicit Models" (arXiv:2010.02502)          -- DDIM
    Lu et al. 2022, "DPM-Solver++: Fast Solver for Guided Sampling of Diffusion Probabilistic Models"
        (arXiv:2211.01095)                                                              -- DPM-Solver++(2M)
    Ho & Salimans 2022, "Classifier-Free Diffusion Guidance" (arXiv:2207.12598)         -- CFG
    Kynkaanniemi et al. 2024, "Applying Guidance in a Limited Interval Improves Sample and
        Distribution Quality in Diffusion Models" (arXiv:2404.07724)                    -- guidance interval
"""

from __future__ import annotations

import math
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
    DPMPP_2M = "dpmpp_2m"


class VarianceKind(StrEnum):
    """sigma_t^2 of the DDPM reverse step (Ho et al. 2020, Sec. 3.2: both gave similar results)."""

    BETA = "beta"  # sigma_t^2 = beta_t, optimal for x_0 ~ N(0, I)
    POSTERIOR = "posterior"  # sigma_t^2 = beta_tilde_t, optimal for x_0 deterministic


class Spacing(StrEnum):
    """How a few-step sampler picks its sub-sequence tau of [0, T).

    uniform and quadratic in t: Song et al. 2021, Appendix D.2 (DDIM); logsnr: uniform in
    lambda_t = log(alpha_t / sigma_t), half the log-SNR (Lu et al. 2022, "DPM-Solver", arXiv:2206.00927,
    its step-size schedule "uniform logSNR", recommended there for low-resolution images).
    """

    UNIFORM = "uniform"
    QUADRATIC = "quadratic"
    LOGSNR = "logsnr"


def default_spacing(sampler: SamplerKind | str) -> Spacing:
    """The spacing a sampler uses unless told otherwise: DDIM uniform in t, DPM-Solver++(2M) uniform in lambda.

    Measured on the exact denoiser of a Gaussian (tests/shared/diffusion/test_samplers.py): with steps
    uniform in t, the 2M steps near t = 0 span large, unequal lambda intervals (the step ratio r_i falls to
    about 0.3) and 50 steps were no more accurate than DDIM's; uniform in lambda makes every r_i about 1.
    """
    return Spacing.LOGSNR if SamplerKind(sampler) is SamplerKind.DPMPP_2M else Spacing.UNIFORM


def parse_enum(enum_cls: type[Enum], value: object, what: str) -> Enum:
    """enum_cls(value), or a ValueError that lists the allowed values."""
    try:
        return enum_cls(value)
    except ValueError:
        allowed = ", ".join(str(m.value) for m in enum_cls)
        raise ValueError(f"unknown {what} {value!r}; expected one of: {allowed}") from None


def edm_sigmas(alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """The EDM noise level of each step, sigma_t = sqrt((1 - alpha_bar_t) / alpha_bar_t).

    Karras et al. 2022, "Elucidating the Design Space of Diffusion-Based Generative Models", Eq. 1 with
    x = x_t / sqrt(alpha_bar_t) (their VP column of Table 1): the std of the noise in the rescaled image.
    Computed in float64, so that an interval bound equal to a step's sigma is not split by rounding.
    """
    a = alphas_cumprod.double()
    return ((1.0 - a) / a).sqrt()


def check_guidance_interval(interval: Sequence[float] | None) -> tuple[float, float] | None:
    """(sigma_lo, sigma_hi) as floats with 0 <= sigma_lo < sigma_hi, both finite; None stays None."""
    if interval is None:
        return None
    if len(interval) != 2:
        raise ValueError(f"guidance_interval is [sigma_lo, sigma_hi], got {len(interval)} values")
    lo, hi = float(interval[0]), float(interval[1])
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise ValueError(f"guidance_interval bounds must be finite, got [{lo}, {hi}]")
    if lo < 0 or hi <= lo:
        raise ValueError(f"guidance_interval needs 0 <= sigma_lo < sigma_hi, got [{lo}, {hi}]")
    return lo, hi


def guided_eps_model(
    model: EpsModel,
    guidance_scale: float,
    null_label: int | None,
    *,
    interval: Sequence[float] | None = None,
    alphas_cumprod: torch.Tensor | None = None,
) -> EpsModel:
    """Wrap eps_theta with classifier-free guidance, paying for the unconditional pass only where it acts.

    Ho & Salimans 2022, Eq. 6: eps~ = (1 + w) eps(x, c) - w eps(x, null), written here with the
    guidance scale s = 1 + w as eps(x, null) + s * (eps(x, c) - eps(x, null)).

    Guidance acts on a row only when the row has a label (a null label is an unconditional sample: both
    terms coincide, eps~ = eps(x, null)) and, with `interval` = (sigma_lo, sigma_hi), only when its step's
    noise level sigma_t (`edm_sigmas`) lies in (sigma_lo, sigma_hi] (Kynkaanniemi et al. 2024, "Applying
    Guidance in a Limited Interval Improves Sample and Distribution Quality in Diffusion Models", Eq. 2;
    `alphas_cumprod` gives sigma_t). Each call runs the network once: on the B rows as given, plus one
    unconditional copy of each guided row (B + G rows in one batch). With no guided row that is exactly
    the unguided call (same batch, same bytes); rows that are not guided get eps(x, label) untouched.
    """
    interval = check_guidance_interval(interval)
    if null_label is None or guidance_scale == 1.0:
        return model
    in_interval = None  # per step t: does sigma_t lie in (sigma_lo, sigma_hi]?
    if interval is not None:
        if alphas_cumprod is None:
            raise ValueError("a guidance interval needs the schedule (alphas_cumprod) to know sigma_t")
        sigmas = edm_sigmas(alphas_cumprod.cpu())
        in_interval = ((sigmas > interval[0]) & (sigmas <= interval[1])).to(alphas_cumprod.device)

    def eps(x: torch.Tensor, t: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        if labels is None:
            return model(x, t, None)
        guided = labels != null_label
        if in_interval is not None:
            guided = guided & in_interval[t]
        rows = guided.nonzero().squeeze(1)
        if rows.numel() == 0:
            return model(x, t, labels)
        batch = x.shape[0]
        null = torch.full_like(rows, null_label)
        both = model(torch.cat([x, x[rows]]), torch.cat([t, t[rows]]), torch.cat([labels, null]))  # (B + G, C, H, W)
        eps_cond, eps_uncond = both[:batch], both[batch:]
        guided_rows = eps_uncond + guidance_scale * (eps_cond[rows] - eps_uncond)
        return eps_cond.index_copy(0, rows, guided_rows)

    return eps


def ddim_timesteps(
    num_timesteps: int,
    steps: int,
    spacing: Spacing | str = Spacing.UNIFORM,
    alphas_cumprod: torch.Tensor | None = None,
) -> list[int]:
    """The increasing sub-sequence tau_1 < ... < tau_S of [0, T) that DDIM visits (0-based).

    uniform: evenly spaced from 0 to T - 1 (steps == T gives every step);
    quadratic: tau_i proportional to i^2 (Song et al. 2021, Appendix D.2), denser near t = 0;
    logsnr: the steps nearest to S values of lambda_t = log(sqrt(alpha_bar_t) / sqrt(1 - alpha_bar_t))
    evenly spaced from lambda_{T-1} to lambda_0 (Lu et al. 2022, arXiv:2206.00927), which needs
    `alphas_cumprod`; where two targets round to one step (near t = T - 1, for S close to T) the later
    ones move down a step, so there are always S distinct steps.
    """
    spacing = parse_enum(Spacing, spacing, "timestep spacing")
    if not 1 <= steps <= num_timesteps:
        raise ValueError(f"steps must be in [1, {num_timesteps}], got {steps}")
    if steps == 1:
        return [num_timesteps - 1]
    if spacing is Spacing.LOGSNR:
        if alphas_cumprod is None or len(alphas_cumprod) != num_timesteps:
            raise ValueError("logsnr spacing needs the schedule's alphas_cumprod")
        a = alphas_cumprod.double().cpu()
        lam = 0.5 * (torch.log(a) - torch.log1p(-a))  # decreasing in t
        targets = torch.linspace(float(lam[-1]), float(lam[0]), steps, dtype=torch.float64)
        nearest = (lam[None, :] - targets[:, None]).abs().argmin(dim=1).tolist()  # from t = T - 1 down to 0
        descending = [num_timesteps - 1]
        for i, t in enumerate(nearest[1:], start=1):
            descending.append(min(max(int(t), steps - 1 - i), descending[-1] - 1))
        return descending[::-1]
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
    taus = ddim_timesteps(diffusion.num_timesteps, steps, spacing, diffusion.alphas_cumprod)
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


@torch.inference_mode()
def dpmpp_2m_sample(
    model: EpsModel,
    diffusion: GaussianDiffusion,
    seeds: Sequence[int],
    shape: Sequence[int],
    *,
    steps: int = 20,
    spacing: Spacing | str = Spacing.LOGSNR,
    labels: torch.Tensor | None = None,
    clip_denoised: bool = True,
    callback: StepCallback | None = None,
) -> torch.Tensor:
    """DPM-Solver++(2M) (Lu et al. 2022, arXiv:2211.01095, Algorithm 2); returns x_0 in [-1, 1].

    A multistep second-order solver of the diffusion ODE in its data-prediction form, stepping in the
    half-log-SNR lambda_t = log(alpha_t / sigma_t), alpha_t = sqrt(alpha_bar_t), sigma_t = sqrt(1 - alpha_bar_t):
        h_i = lambda_{t_i} - lambda_{t_{i-1}},  r_i = h_{i-1} / h_i,
        D_i = (1 + 1 / (2 r_i)) x_theta(x_{t_{i-1}}) - 1 / (2 r_i) x_theta(x_{t_{i-2}}),
        x_{t_i} = (sigma_{t_i} / sigma_{t_{i-1}}) x_{t_{i-1}} - alpha_{t_i} (e^{-h_i} - 1) D_i.
    x_theta is the model's x_0 prediction (Ho et al. 2020, Eq. 15, from the possibly guided eps; clipped to
    [-1, 1] with `clip_denoised`, the thresholding that the data-prediction form was designed to allow).
    The first step has no history and takes Algorithm 2's first-order update D_1 = x_theta(x_{t_0}),
    which is exactly a DDIM (eta = 0) step. So is the last one, from t = 0 to the clean image: there
    sigma = 0 and h = infinity, and the update reduces to x = x_theta(x_{t=0}) (DPM-Solver's "lower
    order at the final step", DDIM's last step too).

    Timesteps (`ddim_timesteps`): by default uniform in lambda (`Spacing.LOGSNR`), which DPM-Solver's
    authors recommend for low-resolution images and which keeps r_i close to 1; on the exact denoiser
    of a Gaussian (s = 0.2) its 20 / 50 steps came within 9e-3 / 1.5e-3 of the exact ODE solution, where
    steps uniform in t gave 0.15 / 0.09 (the few steps near t = 0 span most of the lambda range, so
    r_i drops to about 0.3 and the extrapolation in D_i overshoots) and DDIM 0.18 / 0.07. `steps` is the
    number of network evaluations, as for DDIM; uniform and quadratic are accepted too.
    Deterministic: a sample's only randomness is its x_T, drawn from its own seeded generator.
    """
    taus = ddim_timesteps(diffusion.num_timesteps, steps, spacing, diffusion.alphas_cumprod)
    loop = _Loop(model, diffusion, seeds, shape, labels, clip_denoised, callback)
    alpha_bar = diffusion.alphas_cumprod.double().cpu()
    x = loop.noise()  # x_T ~ N(0, I)
    pairs = list(zip(reversed(taus), [*reversed(taus[:-1]), -1], strict=True))  # (t, t_prev)
    x0_last: torch.Tensor | None = None
    h_last = 0.0
    for i, (t, t_prev) in enumerate(pairs):
        _, _, x_0 = loop.predict(x, t)
        if t_prev < 0:
            x = x_0  # sigma_next = 0: the update reduces to the data prediction
        else:
            a_t, a_prev = float(alpha_bar[t]), float(alpha_bar[t_prev])
            lam_t = 0.5 * (math.log(a_t) - math.log1p(-a_t))  # lambda = log(alpha / sigma)
            lam_prev = 0.5 * (math.log(a_prev) - math.log1p(-a_prev))
            h = lam_prev - lam_t
            if x0_last is None:
                d = x_0  # first order: Algorithm 2's update for i = 1
            else:
                r = h_last / h
                d = (1 + 1 / (2 * r)) * x_0 - (1 / (2 * r)) * x0_last  # Algorithm 2: D_i
            sigma_ratio = math.sqrt((1 - a_prev) / (1 - a_t))
            x = sigma_ratio * x - math.sqrt(a_prev) * math.expm1(-h) * d  # Algorithm 2: x_{t_i}
            x0_last, h_last = x_0, h
        loop.notify(i + 1, len(pairs), x_0)
    return x.clamp(-1.0, 1.0)
