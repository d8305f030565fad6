from __future__ import annotations

import itertools

import pytest
import torch

from shared.diffusion.analytic import gaussian_denoiser
from shared.diffusion.process import DiffusionConfig, GaussianDiffusion
from shared.diffusion.samplers import (
    Spacing,
    ddim_sample,
    ddim_timesteps,
    ddpm_sample,
    dpmpp_2m_sample,
    edm_sigmas,
    guided_eps_model,
)
from shared.diffusion.unet import UNet
from shared.seeding import make_generators, randn_per_sample

SHAPE = (3, 8, 8)


@pytest.fixture(scope="module")
def diffusion100() -> GaussianDiffusion:
    return GaussianDiffusion(DiffusionConfig(num_timesteps=100))


def eps_fn(unet: UNet):
    return lambda x, t, y: unet(x, t, y)


# ------------------------------------------------------------------------------------- timesteps
def test_uniform_spacing_with_every_step_is_the_full_chain() -> None:
    assert ddim_timesteps(1000, 1000) == list(range(1000))


@pytest.mark.parametrize("spacing", list(Spacing))
@pytest.mark.parametrize("steps", [2, 10, 50, 250])
def test_ddim_timesteps_are_strictly_increasing_within_range(spacing: Spacing, steps: int) -> None:
    taus = ddim_timesteps(1000, steps, spacing, GaussianDiffusion().alphas_cumprod)
    assert len(taus) == steps and taus[0] == 0 and taus[-1] <= 999
    assert all(b > a for a, b in itertools.pairwise(taus))


def test_logsnr_spacing_is_uniform_in_lambda_and_fits_any_step_count() -> None:
    alpha_bar = GaussianDiffusion().alphas_cumprod.double()
    lam = 0.5 * (alpha_bar.log() - (1 - alpha_bar).log())
    taus = ddim_timesteps(1000, 20, "logsnr", alpha_bar)
    assert taus[0] == 0 and taus[-1] == 999
    gaps = [float(lam[a] - lam[b]) for a, b in itertools.pairwise(taus)]
    assert max(gaps) / min(gaps) < 1.5  # about (lambda_0 - lambda_999) / 19 each; uniform in t: 11x apart
    for steps in (999, 1000):  # more steps than distinct nearest lambdas: still distinct, still all of [0, T)
        assert sorted(set(ddim_timesteps(1000, steps, "logsnr", alpha_bar))) == ddim_timesteps(
            1000, steps, "logsnr", alpha_bar
        )
    assert ddim_timesteps(1000, 1000, "logsnr", alpha_bar) == list(range(1000))
    with pytest.raises(ValueError, match="alphas_cumprod"):
        ddim_timesteps(1000, 20, "logsnr")


def test_quadratic_spacing_is_denser_near_zero() -> None:
    uniform, quad = ddim_timesteps(1000, 10, "uniform"), ddim_timesteps(1000, 10, "quadratic")
    assert quad[1] - quad[0] < uniform[1] - uniform[0]
    assert quad[-1] - quad[-2] > uniform[-1] - uniform[-2]


def test_ddim_timesteps_reject_bad_input() -> None:
    with pytest.raises(ValueError, match=r"\[1, 1000\]"):
        ddim_timesteps(1000, 0)
    with pytest.raises(ValueError, match="uniform, quadratic"):
        ddim_timesteps(1000, 10, "cubic")


# ------------------------------------------------------------------------------------ equivalence
def test_posterior_mean_step_is_algorithm_2() -> None:
    """The DDPM step through the posterior mean is Algorithm 2.

    mu_tilde(x_0_hat(x_t, eps), x_t) (Eqs. 7, 15) == (x_t - beta_t / sqrt(1 - alpha_bar_t) eps) / sqrt(alpha_t) (Eq. 11)
    """
    d = GaussianDiffusion()
    x_t, eps = torch.randn(4, 3, 8, 8), torch.randn(4, 3, 8, 8)
    t = torch.tensor([1, 10, 500, 999])
    mean, _, _ = d.q_posterior_mean_variance(d.predict_x0_from_eps(x_t, t, eps), x_t, t)
    beta = d.betas[t].view(-1, 1, 1, 1)
    algorithm2 = (x_t - beta / d.sqrt_one_minus_alphas_cumprod[t].view(-1, 1, 1, 1) * eps) / (1 - beta).sqrt()
    assert torch.allclose(mean, algorithm2, atol=1e-4)


def test_ddim_eta1_over_all_steps_is_ddpm_with_posterior_variance(tiny_unet: UNet) -> None:
    """Song et al. 2021, Sec. 4.1: eta = 1 with tau = [0, T) recovers DDPM with sigma_t^2 = beta_tilde_t."""
    d = GaussianDiffusion()  # the full T = 1000
    labels = torch.tensor([0, 3])
    ddpm = ddpm_sample(eps_fn(tiny_unet), d, [11, 12], SHAPE, labels=labels, variance="posterior")
    ddim = ddim_sample(eps_fn(tiny_unet), d, [11, 12], SHAPE, steps=1000, eta=1.0, labels=labels)
    assert torch.allclose(ddpm, ddim, atol=1e-4)
    assert (ddpm[0] - ddpm[1]).abs().max() > 0.1  # not trivially equal: the images differ


# -------------------------------------------------------------------------------- reproducibility
@pytest.mark.parametrize("variance", ["beta", "posterior"])
def test_ddpm_with_the_exact_denoiser_samples_the_data_distribution(
    diffusion100: GaussianDiffusion, variance: str
) -> None:
    x = ddpm_sample(
        gaussian_denoiser(diffusion100, 0.3, 0.2),
        diffusion100,
        range(2000),
        (1, 1, 1),
        variance=variance,
        clip_denoised=False,
    )
    assert x.mean().item() == pytest.approx(0.3, abs=0.02)
    assert x.std().item() == pytest.approx(0.2, rel=0.15)  # T = 100 is a coarse chain


def test_ddim_with_the_exact_denoiser_samples_the_data_distribution() -> None:
    d = GaussianDiffusion()
    x = ddim_sample(gaussian_denoiser(d, 0.3, 0.2), d, range(4000), (1, 1, 1), steps=1000, clip_denoised=False)
    assert x.mean().item() == pytest.approx(0.3, abs=0.01)
    assert x.std().item() == pytest.approx(0.2, rel=0.03)


# Golden values from the seeded tiny network (tests/conftest.py): seeds [0, 1], labels [1, null].
# They pin the whole loop (noise order, schedule, clipping, guidance plumbing); update them only for an
# intended change of the sampler's maths, and say so in the commit.
GOLDEN = {
    "ddpm": (-48.5508, [-0.354, -0.2611, -1.0, 0.4957, 0.6498, 0.5757]),
    "ddim": (-8.022, [-1.0, -0.7986, -0.1196, 0.8616, -0.8921, 1.0]),
}


@pytest.mark.parametrize("sampler", ["ddpm", "ddim"])
def test_golden_values(tiny_unet: UNet, diffusion100: GaussianDiffusion, sampler: str) -> None:
    labels = torch.tensor([1, 3])
    if sampler == "ddpm":
        x = ddpm_sample(eps_fn(tiny_unet), diffusion100, [0, 1], SHAPE, labels=labels)
    else:
        x = ddim_sample(eps_fn(tiny_unet), diffusion100, [0, 1], SHAPE, steps=10, eta=0.5, labels=labels)
    total, pixels = GOLDEN[sampler]
    assert x.sum().item() == pytest.approx(total, abs=2e-3)
    assert x[0, :, 4, 4].tolist() + x[1, :, 2, 5].tolist() == pytest.approx(pixels, abs=2e-4)


def test_same_seeds_same_images_other_seeds_other_images(tiny_unet: UNet, diffusion100: GaussianDiffusion) -> None:
    a = ddim_sample(eps_fn(tiny_unet), diffusion100, [5, 6], SHAPE, steps=10, eta=1.0)
    b = ddim_sample(eps_fn(tiny_unet), diffusion100, [5, 6], SHAPE, steps=10, eta=1.0)
    c = ddim_sample(eps_fn(tiny_unet), diffusion100, [6, 5], SHAPE, steps=10, eta=1.0)
    assert torch.equal(a, b)
    assert torch.equal(a[0], c[1]) and not torch.allclose(a[0], a[1])


@pytest.mark.parametrize("sampler", ["ddpm", "ddim"])
def test_a_seed_gives_the_same_image_alone_and_in_a_batch_of_8(
    tiny_unet: UNet, diffusion100: GaussianDiffusion, sampler: str
) -> None:
    def run(seeds: list[int], labels: list[int]) -> torch.Tensor:
        y = torch.tensor(labels)
        if sampler == "ddpm":
            return ddpm_sample(eps_fn(tiny_unet), diffusion100, seeds, SHAPE, labels=y)
        return ddim_sample(eps_fn(tiny_unet), diffusion100, seeds, SHAPE, steps=20, eta=0.5, labels=y)

    alone = run([42], [2])
    batch = run([7, 8, 9, 42, 10, 11, 12, 13], [0, 1, 2, 2, 3, 0, 1, 2])
    assert torch.allclose(alone[0], batch[3], atol=1e-5)
    assert (batch[2] - batch[3]).abs().max() > 0.1  # same label, other seed: another image


def test_outputs_are_in_range(tiny_unet: UNet, diffusion100: GaussianDiffusion) -> None:
    x = ddpm_sample(eps_fn(tiny_unet), diffusion100, [3, 4], SHAPE)
    assert x.min() >= -1 and x.max() <= 1 and x.std() > 0.05


# ------------------------------------------------------------------------------------- callbacks
def test_callback_reports_every_step_with_an_x0_preview(tiny_unet: UNet, diffusion100: GaussianDiffusion) -> None:
    calls: list[tuple[int, int, tuple[int, ...]]] = []
    ddim_sample(
        eps_fn(tiny_unet),
        diffusion100,
        [0, 1, 2],
        SHAPE,
        steps=7,
        callback=lambda step, total, x0: calls.append((step, total, tuple(x0.shape))),
    )
    assert calls == [(i, 7, (3, *SHAPE)) for i in range(1, 8)]


def test_raising_from_the_callback_stops_sampling(tiny_unet: UNet, diffusion100: GaussianDiffusion) -> None:
    class CancelledError(Exception):
        pass

    steps: list[int] = []

    def cancel_at_5(step: int, total: int, x0: torch.Tensor) -> None:
        steps.append(step)
        if step == 5:
            raise CancelledError

    with pytest.raises(CancelledError):
        ddpm_sample(eps_fn(tiny_unet), diffusion100, [0], SHAPE, callback=cancel_at_5)
    assert steps == [1, 2, 3, 4, 5]


# -------------------------------------------------------------------------------------- guidance
def test_classifier_free_guidance_extrapolates_from_unconditional() -> None:
    """Ho & Salimans 2022, Eq. 6 with s = 1 + w: eps_u + s (eps_c - eps_u)."""
    null = 9

    def model(x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        assert y is not None
        return x * 0 + (y != null).float().view(-1, 1, 1, 1) * 2.0 + 1.0  # eps_c = 3, eps_u = 1

    x, t = torch.zeros(2, 1, 2, 2), torch.tensor([5, 5])
    guided = guided_eps_model(model, 4.0, null)(x, t, torch.tensor([0, null]))
    assert torch.allclose(guided[0], torch.full((1, 2, 2), 1.0 + 4.0 * 2.0))
    assert torch.allclose(guided[1], torch.ones(1, 2, 2))  # a null-label sample stays unconditional
    assert guided_eps_model(model, 1.0, null) is model  # scale 1: plain conditional model, one pass


def test_guidance_costs_one_unconditional_row_per_labelled_sample() -> None:
    """One network call per step: the B rows as given, plus an unconditional copy of each labelled row only."""
    null = 9
    calls: list[list[int]] = []

    def model(x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        assert y is not None
        calls.append(y.tolist())
        return x * 0 + (y != null).float().view(-1, 1, 1, 1) * 2.0 + 1.0 + y.float().view(-1, 1, 1, 1) / 100

    guided = guided_eps_model(model, 4.0, null)
    x, t = torch.zeros(3, 1, 2, 2), torch.tensor([5, 5, 5])
    out = guided(x, t, torch.tensor([null, 2, null]))
    assert calls == [[null, 2, null, null]]
    assert torch.allclose(out[1], torch.full((1, 2, 2), 1.09 + 4.0 * (3.02 - 1.09)))
    assert torch.equal(out[[0, 2]], torch.full((2, 1, 2, 2), 1.09))  # unlabelled rows: eps(x, null) untouched
    calls.clear()
    assert torch.equal(guided(x, t, torch.full((3,), null)), model(x, t, torch.full((3,), null)))
    assert calls == [[null] * 3, [null] * 3]  # the wrapper's one call of B rows, then the reference call


def test_guidance_interval_is_open_below_and_closed_above(diffusion100: GaussianDiffusion) -> None:
    """Kynkaanniemi et al. 2024: guidance where sigma_t is in (sigma_lo, sigma_hi], sigma_t = sqrt((1 - ab) / ab)."""
    sigmas = edm_sigmas(diffusion100.alphas_cumprod)
    assert sigmas[50].item() == pytest.approx(
        ((1 - diffusion100.alphas_cumprod[50]) / diffusion100.alphas_cumprod[50]).sqrt().item()
    )
    assert all(b > a for a, b in itertools.pairwise(sigmas.tolist()))  # increasing with t
    null, rows = 9, []

    def model(x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        rows.append(x.shape[0])
        return x

    guided = guided_eps_model(
        model, 2.0, null, interval=(float(sigmas[20]), float(sigmas[60])), alphas_cumprod=diffusion100.alphas_cumprod
    )
    for step in (19, 20, 21, 60, 61):
        guided(torch.zeros(1, 1, 1, 1), torch.tensor([step]), torch.tensor([0]))
    assert rows == [1, 1, 2, 2, 1]
    with pytest.raises(ValueError, match="alphas_cumprod"):
        guided_eps_model(model, 2.0, null, interval=(0.0, 1.0))


# -------------------------------------------------------------------------------- DPM-Solver++(2M)
def gaussian_ode_solution(d: GaussianDiffusion, x_T: torch.Tensor, mu: torch.Tensor, s: float) -> torch.Tensor:
    """Where the probability-flow ODE takes x_T (at t = T - 1) for data N(mu, s^2 I), then x_0 = E[x_0 | x_{t=0}].

    x_t = sqrt(ab_t) x_0 + sqrt(1 - ab_t) eps with Gaussian x_0: the ODE keeps the standardised
    z = (x_t - sqrt(ab_t) mu) / sqrt(ab_t s^2 + 1 - ab_t) constant along a trajectory (its marginals stay
    Gaussian and the flow is affine), so x_{t=0} is exact; both samplers end with the denoiser's x_0 there.
    """
    ab = d.alphas_cumprod.double()
    a_T, a_0 = ab[-1], ab[0]
    z = (x_T.double() - a_T.sqrt() * mu) / (a_T * s * s + 1 - a_T).sqrt()
    x_t0 = a_0.sqrt() * mu + (a_0 * s * s + 1 - a_0).sqrt() * z
    return mu + a_0.sqrt() * s * s / (a_0 * s * s + 1 - a_0) * (x_t0 - a_0.sqrt() * mu)  # E[x_0 | x_t0]


def analytic_run(sampler, steps: int, d: GaussianDiffusion, spacing: str = "logsnr", seeds=range(64)) -> torch.Tensor:
    model = gaussian_denoiser(d, MU, S)
    return sampler(model, d, list(seeds), (1, 4, 4), steps=steps, spacing=spacing, clip_denoised=False)


@pytest.fixture(scope="module")
def diffusion1000() -> GaussianDiffusion:
    return GaussianDiffusion()


MU = torch.linspace(-0.2, 0.2, 16).view(1, 4, 4)  # an "image" mean; with S = 0.2 no value reaches the final clamp
S = 0.2


def test_dpmpp_2m_and_ddim_converge_to_the_same_images(diffusion1000: GaussianDiffusion) -> None:
    ddim = analytic_run(ddim_sample, 1000, diffusion1000, "uniform")  # every step
    dpm = analytic_run(dpmpp_2m_sample, 200, diffusion1000)
    assert (ddim - dpm).abs().max() < 1e-2  # measured 4e-3, mostly DDIM's own first-order error
    other_seeds = analytic_run(dpmpp_2m_sample, 200, diffusion1000, seeds=range(1, 65))
    assert (ddim - other_seeds).abs().max() > 0.3  # the tolerance is far below what another x_T gives


def test_dpmpp_2m_is_second_order_where_ddim_is_first(diffusion1000: GaussianDiffusion) -> None:
    """Errors against the exact ODE solution on the same (logsnr) timesteps; measured (max abs):

    steps   25       50       100
    DDIM    5.9e-2   3.0e-2   1.4e-2   (x 4 steps: / 4, first order)
    2M      5.5e-3   1.4e-3   3.7e-4   (x 4 steps: / 15, second order)
    """
    x_T = randn_per_sample(make_generators(list(range(64))), (1, 4, 4))
    exact = gaussian_ode_solution(diffusion1000, x_T, MU.double(), S)

    def error(sampler, steps: int, spacing: str = "logsnr") -> float:
        return (analytic_run(sampler, steps, diffusion1000, spacing).double() - exact).abs().max().item()

    ddim25, ddim100, dpm25, dpm50, dpm100 = (
        error(ddim_sample, 25),
        error(ddim_sample, 100),
        error(dpmpp_2m_sample, 25),
        error(dpmpp_2m_sample, 50),
        error(dpmpp_2m_sample, 100),
    )
    assert dpm25 < ddim25 / 5 and dpm100 < ddim100 / 10
    assert ddim25 / ddim100 < 6  # 4x the steps: about 4x less error
    assert dpm25 / dpm100 > 10  # about 16x less
    assert dpm50 < error(ddim_sample, 50, "uniform") / 20  # and against the service's DDIM default
    assert error(dpmpp_2m_sample, 50, "uniform") > 10 * dpm50  # uniform in t is the worse grid for 2M


def test_dpmpp_2m_first_order_steps_are_ddim(tiny_unet: UNet, diffusion100: GaussianDiffusion) -> None:
    """Two steps are the first-order start and the final x_0 step: DDIM (eta = 0) exactly, up to rounding."""
    labels = torch.tensor([0, 2])
    dpm = dpmpp_2m_sample(eps_fn(tiny_unet), diffusion100, [3, 4], SHAPE, steps=2, labels=labels)
    ddim = ddim_sample(eps_fn(tiny_unet), diffusion100, [3, 4], SHAPE, steps=2, labels=labels)
    torch.testing.assert_close(dpm, ddim, atol=1e-5, rtol=0)
    three = dpmpp_2m_sample(eps_fn(tiny_unet), diffusion100, [3, 4], SHAPE, steps=3, labels=labels)
    assert (
        three - ddim_sample(eps_fn(tiny_unet), diffusion100, [3, 4], SHAPE, steps=3, labels=labels)
    ).abs().max() > 1e-3


def test_dpmpp_2m_seed_gives_the_same_image_alone_and_in_a_batch(
    tiny_unet: UNet, diffusion100: GaussianDiffusion, monkeypatch: pytest.MonkeyPatch
) -> None:
    import shared.diffusion.samplers as samplers

    draws: list[int] = []
    real = samplers.randn_per_sample

    def counted(generators, shape, **kw):  # type: ignore[no-untyped-def]
        draws.append(len(generators))
        return real(generators, shape, **kw)

    monkeypatch.setattr(samplers, "randn_per_sample", counted)

    def run(seeds: list[int], labels: list[int]) -> torch.Tensor:
        return dpmpp_2m_sample(eps_fn(tiny_unet), diffusion100, seeds, SHAPE, steps=12, labels=torch.tensor(labels))

    alone = run([42], [2])
    batch = run([7, 8, 42, 10], [0, 2, 2, 1])
    assert draws == [1, 4]  # deterministic: x_T is each sample's only noise
    torch.testing.assert_close(batch[2], alone[0], atol=1e-5, rtol=0)
    assert (batch[1] - batch[2]).abs().max() > 0.1  # same label, other seed: another image


def test_dpmpp_2m_callback_contract(tiny_unet: UNet, diffusion100: GaussianDiffusion) -> None:
    calls: list[tuple[int, int, tuple[int, ...]]] = []
    dpmpp_2m_sample(
        eps_fn(tiny_unet),
        diffusion100,
        [0, 1],
        SHAPE,
        steps=5,
        callback=lambda step, total, x0: calls.append((step, total, tuple(x0.shape))),
    )
    assert calls == [(i, 5, (2, *SHAPE)) for i in range(1, 6)]
