"""eps-, v- and EDM-preconditioned prediction on the DDPM schedule: each converts back to the same eps,
the EDM noise levels follow their log-normal law, and a perfect network has zero loss."""

from __future__ import annotations

import math

import pytest
import torch

from shared.diffusion import parameterization as param
from shared.diffusion.parameterization import P_MEAN, P_STD, SIGMA_DATA, Prediction
from shared.diffusion.process import DiffusionConfig, GaussianDiffusion


@pytest.fixture(params=["linear", "cosine"])
def diffusion(request: pytest.FixtureRequest) -> GaussianDiffusion:
    return GaussianDiffusion(DiffusionConfig(schedule=request.param)).double()


def batch(diffusion: GaussianDiffusion, n: int = 64) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    x0 = torch.rand(n, 3, 8, 8, generator=gen, dtype=torch.float64) * 2 - 1
    noise = torch.randn(n, 3, 8, 8, generator=gen, dtype=torch.float64)
    t = torch.linspace(0, diffusion.num_timesteps - 1, n).round().long()
    return x0, noise, t, diffusion.q_sample(x0, t, noise)


@pytest.mark.parametrize("prediction", list(Prediction))
def test_the_target_converts_back_to_the_noise(diffusion: GaussianDiffusion, prediction: Prediction) -> None:
    x0, noise, t, x_t = batch(diffusion)
    target = param.training_target(prediction, diffusion, x0, x_t, noise, t)
    eps = param.eps_from_output(prediction, diffusion, target, x_t, t)
    # The schedule's tables are float32 (each rounded on its own), and EDM divides by sigma_0 = 0.01.
    torch.testing.assert_close(eps, noise, rtol=1e-4, atol=1e-4)


def test_v_is_alpha_eps_minus_sigma_x0_and_gives_x0_back(diffusion: GaussianDiffusion) -> None:
    """Salimans & Ho 2022, Appendix D: v = alpha eps - sigma x_0 and x_0 = alpha x_t - sigma v."""
    x0, noise, t, x_t = batch(diffusion)
    alpha = diffusion.sqrt_alphas_cumprod[t].view(-1, 1, 1, 1)
    sigma = diffusion.sqrt_one_minus_alphas_cumprod[t].view(-1, 1, 1, 1)
    v = param.training_target(Prediction.V, diffusion, x0, x_t, noise, t)
    torch.testing.assert_close(v, alpha * noise - sigma * x0, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(alpha * x_t - sigma * v, x0, rtol=1e-5, atol=1e-5)


def test_edm_denoiser_with_its_target_returns_x0_and_its_input_has_unit_variance() -> None:
    diffusion = GaussianDiffusion(DiffusionConfig()).double()
    gen = torch.Generator().manual_seed(1)
    x0 = SIGMA_DATA * torch.randn(4096, 1, 1, 1, generator=gen, dtype=torch.float64)  # data of std sigma_data
    noise = torch.randn(x0.shape, generator=gen, dtype=torch.float64)
    for step in (0, 100, 500, 999):
        t = torch.full((x0.shape[0],), step)
        x_t = diffusion.q_sample(x0, t, noise)
        inputs = param.network_input(Prediction.EDM, diffusion, x_t, t)
        assert inputs.std().item() == pytest.approx(1.0, abs=0.05), step  # c_in's purpose (Karras et al. Table 1)
        sigma = diffusion.sqrt_recipm1_alphas_cumprod[step]
        c_skip, c_out, _ = param.edm_coefficients(sigma)
        f = param.training_target(Prediction.EDM, diffusion, x0, x_t, noise, t)
        x = x_t * diffusion.sqrt_recip_alphas_cumprod[step]
        torch.testing.assert_close(c_skip * x + c_out * f, x0)  # D(x; sigma) = x_0


def test_eps_and_v_feed_the_network_x_t_unchanged(diffusion: GaussianDiffusion) -> None:
    _, _, t, x_t = batch(diffusion)
    for prediction in (Prediction.EPS, Prediction.V):
        assert param.network_input(prediction, diffusion, x_t, t) is x_t


def test_edm_noise_levels_are_log_normal_snapped_to_the_nearest_step() -> None:
    diffusion = GaussianDiffusion(DiffusionConfig())
    torch.manual_seed(0)
    t = param.sample_timesteps(Prediction.EDM, diffusion, 50_000, torch.device("cpu"))
    log_sigma = diffusion.sqrt_recipm1_alphas_cumprod[t].log().double()
    assert log_sigma.mean().item() == pytest.approx(P_MEAN, abs=0.05)
    assert log_sigma.std().item() == pytest.approx(P_STD, abs=0.05)
    # the snapping: the same draws, brute force
    torch.manual_seed(1)
    t = param.sample_timesteps(Prediction.EDM, diffusion, 500, torch.device("cpu"))
    torch.manual_seed(1)
    drawn = torch.randn(500) * P_STD + P_MEAN
    table = diffusion.sqrt_recipm1_alphas_cumprod.log()
    assert torch.equal(t, (table[None, :] - drawn[:, None]).abs().argmin(dim=1))


def test_uniform_steps_for_eps_and_v() -> None:
    diffusion = GaussianDiffusion(DiffusionConfig(num_timesteps=100))
    torch.manual_seed(0)
    t = param.sample_timesteps(Prediction.V, diffusion, 10_000, torch.device("cpu"))
    counts = torch.bincount(t, minlength=100).double()
    assert counts.min() > 50 and counts.max() < 150


def test_min_snr_weights_per_target() -> None:
    snr = torch.tensor([0.5, 5.0, 50.0])
    torch.testing.assert_close(param.loss_weight(Prediction.EPS, snr, 5.0), torch.tensor([1.0, 1.0, 0.1]))
    torch.testing.assert_close(param.loss_weight(Prediction.V, snr, 5.0), torch.tensor([0.5 / 1.5, 5 / 6, 5 / 51]))
    assert param.loss_weight(Prediction.EDM, snr, 5.0) is None
    assert param.loss_weight(Prediction.EPS, snr, None) is None


@pytest.mark.parametrize("prediction", list(Prediction))
def test_a_perfect_network_has_zero_loss_and_a_wrong_one_does_not(prediction: Prediction) -> None:
    diffusion = GaussianDiffusion(DiffusionConfig(prediction=prediction)).double()
    x0, noise, t, x_t = batch(diffusion, 16)
    seen: list[torch.Tensor] = []

    def oracle(inputs: torch.Tensor, steps: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        seen.append(inputs)
        return param.training_target(prediction, diffusion, x0, x_t, noise, steps)

    assert diffusion.training_loss(oracle, x0, t=t, noise=noise).item() == pytest.approx(0.0, abs=1e-12)
    torch.testing.assert_close(seen[0], param.network_input(prediction, diffusion, x_t, t))
    wrong = diffusion.training_loss(lambda i, s, y: oracle(i, s, y) + 0.1, x0, t=t, noise=noise).item()
    assert wrong == pytest.approx(0.01, rel=1e-6)


@pytest.mark.parametrize("prediction", list(Prediction))
def test_network_eps_is_the_samplers_view(prediction: Prediction) -> None:
    """network_eps(oracle) returns the true noise: the samplers see eps whatever the network predicts."""
    diffusion = GaussianDiffusion(DiffusionConfig(prediction=prediction)).double()
    x0, noise, t, x_t = batch(diffusion, 8)

    def oracle(inputs: torch.Tensor, steps: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        return param.training_target(prediction, diffusion, x0, x_t, noise, steps)

    eps = diffusion.network_eps(oracle, x_t, t, None)
    torch.testing.assert_close(eps.double(), noise, rtol=1e-4, atol=1e-4)


def test_unknown_prediction_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="unknown prediction 'x0'"):
        DiffusionConfig(prediction="x0")  # type: ignore[arg-type]
    assert DiffusionConfig.from_dict({"schedule": "linear", "num_timesteps": 1000}).prediction is Prediction.EPS
    assert math.isclose(SIGMA_DATA, 0.5)
