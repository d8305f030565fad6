from __future__ import annotations

import pytest
import torch

from shared.diffusion.process import DiffusionConfig, GaussianDiffusion
from shared.diffusion.schedule import ScheduleKind, make_betas


@pytest.fixture(params=list(ScheduleKind))
def diffusion(request: pytest.FixtureRequest) -> GaussianDiffusion:
    return GaussianDiffusion(DiffusionConfig(schedule=request.param)).double()


def test_constants_are_float32_and_move_with_to() -> None:
    d = GaussianDiffusion()
    assert d.alphas_cumprod.dtype == torch.float32
    assert d.alphas_cumprod.shape == (1000,)
    assert d.state_dict() == {}  # nothing of the schedule ends up in a checkpoint


def test_q_sample_at_t0_is_nearly_x0(diffusion: GaussianDiffusion) -> None:
    x0 = torch.rand(4, 3, 8, 8, dtype=torch.float64) * 2 - 1
    noise = torch.randn_like(x0)
    xt = diffusion.q_sample(x0, torch.zeros(4, dtype=torch.long), noise)
    assert torch.allclose(xt, x0, atol=0.06)  # sqrt(1 - alpha_bar_1) <= 0.01
    assert not torch.equal(xt, x0)


@pytest.mark.parametrize("t", [0, 10, 250, 999])
def test_q_sample_matches_the_forward_chain(diffusion: GaussianDiffusion, t: int) -> None:
    """Closed form q(x_t | x_0) (Eq. 4) vs running x_s = sqrt(1 - beta_s) x_{s-1} + sqrt(beta_s) z (Eq. 2)."""
    n = 200_000
    gen = torch.Generator().manual_seed(t)
    x0 = torch.full((n,), 0.7, dtype=torch.float64)
    x = x0.clone()
    for s in range(t + 1):
        beta = diffusion.betas[s]
        x = torch.sqrt(1 - beta) * x + torch.sqrt(beta) * torch.randn(n, generator=gen, dtype=torch.float64)
    t_batch = torch.full((n,), t, dtype=torch.long)
    closed = diffusion.q_sample(x0, t_batch, torch.randn(n, generator=gen, dtype=torch.float64))
    expected_mean = diffusion.sqrt_alphas_cumprod[t] * 0.7
    expected_var = 1 - diffusion.alphas_cumprod[t]
    for sample in (x, closed):
        assert sample.mean().item() == pytest.approx(
            expected_mean.item(), abs=5 * (expected_var / n).sqrt().item() + 1e-6
        )
        assert sample.var().item() == pytest.approx(expected_var.item(), rel=0.02, abs=1e-6)


@pytest.mark.parametrize("t", [1, 17, 500, 999])
def test_posterior_matches_bayes_rule(diffusion: GaussianDiffusion, t: int) -> None:
    """q(x_{t-1} | x_t, x_0) ∝ q(x_t | x_{t-1}) q(x_{t-1} | x_0): a product of two Gaussians in x_{t-1}."""
    x0 = torch.randn(5, dtype=torch.float64)
    xt = torch.randn(5, dtype=torch.float64)
    t_batch = torch.full((5,), t, dtype=torch.long)
    mean, var, log_var = diffusion.q_posterior_mean_variance(x0.view(5, 1), xt.view(5, 1), t_batch)

    # Reference in float64 straight from the schedule (1 - alpha_bar_1 loses digits in float32).
    betas = torch.from_numpy(make_betas(diffusion.config.schedule, diffusion.num_timesteps))
    beta, alpha = betas[t], 1 - betas[t]
    ab_prev = torch.cumprod(1 - betas, 0)[t - 1]
    precision = 1 / (1 - ab_prev) + alpha / beta
    expected_var = 1 / precision
    expected_mean = expected_var * (ab_prev.sqrt() * x0 / (1 - ab_prev) + alpha.sqrt() * xt / beta)
    # The stored constants are float32 (computed in float64): agreement to float32 precision.
    assert torch.allclose(var.flatten(), expected_var.expand(5), rtol=1e-5)
    assert torch.allclose(log_var.flatten(), expected_var.log().expand(5), rtol=1e-5)
    assert torch.allclose(mean.flatten(), expected_mean, rtol=1e-5, atol=1e-6)


def test_posterior_at_t0_returns_x0(diffusion: GaussianDiffusion) -> None:
    x0, xt = torch.randn(3, 1, dtype=torch.float64), torch.randn(3, 1, dtype=torch.float64)
    mean, var, _ = diffusion.q_posterior_mean_variance(x0, xt, torch.zeros(3, dtype=torch.long))
    assert torch.allclose(mean, x0) and torch.all(var == 0)


def test_x0_and_eps_reparametrisations_invert_q_sample(diffusion: GaussianDiffusion) -> None:
    x0 = torch.rand(6, 3, 4, 4, dtype=torch.float64) * 2 - 1
    eps = torch.randn_like(x0)
    t = torch.tensor([0, 1, 100, 500, 800, 900])  # near T x_0 is ill-conditioned given x_t and eps
    xt = diffusion.q_sample(x0, t, eps)
    assert torch.allclose(diffusion.predict_x0_from_eps(xt, t, eps), x0, atol=1e-4)
    assert torch.allclose(diffusion.predict_eps_from_x0(xt, t, x0), eps, atol=1e-4)


def test_loss_is_l_simple_with_optional_min_snr_weights() -> None:
    diffusion = GaussianDiffusion()
    x0 = torch.rand(4, 3, 8, 8) * 2 - 1
    noise = torch.randn_like(x0)
    t = torch.tensor([0, 10, 500, 999])
    model = lambda x, t, y: torch.zeros_like(x)  # noqa: E731 - predicts eps = 0
    per_sample = noise.pow(2).mean(dim=(1, 2, 3))
    loss = diffusion.training_loss(model, x0, t=t, noise=noise)
    assert loss.item() == pytest.approx(per_sample.mean().item(), rel=1e-6)

    snr = diffusion.alphas_cumprod[t] / (1 - diffusion.alphas_cumprod[t])
    weighted = diffusion.training_loss(model, x0, t=t, noise=noise, min_snr_gamma=5.0)
    expected = (per_sample * torch.clamp(snr, max=5.0) / snr).mean()
    assert weighted.item() == pytest.approx(expected.item(), rel=1e-5)
    assert weighted < loss  # low-t, high-SNR samples are down-weighted


def test_loss_passes_labels_and_the_noised_input_to_the_model() -> None:
    diffusion = GaussianDiffusion()
    seen: dict[str, torch.Tensor] = {}

    def model(x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        seen.update(x=x, t=t, y=y)
        return torch.zeros_like(x)

    x0, labels = torch.zeros(2, 3, 4, 4), torch.tensor([1, 2])
    noise, t = torch.randn(2, 3, 4, 4), torch.tensor([999, 999])
    diffusion.training_loss(model, x0, labels, t=t, noise=noise)
    assert torch.equal(seen["y"], labels) and torch.equal(seen["t"], t)
    assert torch.allclose(seen["x"], diffusion.sqrt_one_minus_alphas_cumprod[999] * noise)


def test_config_rejects_bad_values() -> None:
    with pytest.raises(ValueError, match="linear, cosine"):
        DiffusionConfig(schedule="exp")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="num_timesteps"):
        DiffusionConfig(num_timesteps=1)
    assert DiffusionConfig.from_dict(DiffusionConfig(schedule="cosine").to_dict()) == DiffusionConfig(schedule="cosine")  # type: ignore[arg-type]
