"""The DDPM forward process, its posterior and the training loss; never owns the network.

Glossary (Ho et al. 2020, arXiv:2006.11239; "Eq. N" below means that paper unless named):
    x_0             a clean image scaled to [-1, 1]
    x_t             the noisy image at step t
    eps             the standard normal noise that produced x_t from x_0
    alpha_bar_t     see `schedule.py`
    beta_tilde_t    posterior variance (1 - alpha_bar_{t-1}) / (1 - alpha_bar_t) * beta_t   (Eq. 7)
    SNR(t)          alpha_bar_t / (1 - alpha_bar_t), the signal-to-noise ratio of q(x_t | x_0)

Indices are 0-based: t = 0 is the paper's t = 1, and alpha_bar_{-1} = 1.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from shared.config import JsonConfig
from shared.diffusion import parameterization as param
from shared.diffusion.parameterization import Prediction
from shared.diffusion.schedule import ScheduleKind, make_betas

# eps_theta(x_t, t, y): the network's noise prediction, y is an int64 label per sample (or None).
EpsModel = Callable[[torch.Tensor, torch.Tensor, torch.Tensor | None], torch.Tensor]
# The raw network F(input, t, y): its output is eps, v or EDM's F depending on `DiffusionConfig.prediction`.
NetworkFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor | None], torch.Tensor]


@dataclass(frozen=True)
class DiffusionConfig(JsonConfig):
    """The forward process: saved in the model card beside the weights."""

    schedule: ScheduleKind = ScheduleKind.LINEAR
    num_timesteps: int = 1000
    prediction: Prediction = Prediction.EPS  # what the network predicts (parameterization.py)

    def __post_init__(self) -> None:
        try:
            object.__setattr__(self, "prediction", Prediction(self.prediction))
        except ValueError:
            allowed = ", ".join(k.value for k in Prediction)
            raise ValueError(f"unknown prediction {self.prediction!r}; expected one of: {allowed}") from None
        try:
            object.__setattr__(self, "schedule", ScheduleKind(self.schedule))
        except ValueError:
            allowed = ", ".join(k.value for k in ScheduleKind)
            raise ValueError(f"unknown schedule {self.schedule!r}; expected one of: {allowed}") from None
        if self.num_timesteps < 2:
            raise ValueError(f"num_timesteps must be >= 2, got {self.num_timesteps}")


def extract(values: torch.Tensor, t: torch.Tensor, ndim: int) -> torch.Tensor:
    """values[t] reshaped to (B, 1, ..., 1) so that it broadcasts over a (B, C, H, W) batch."""
    out = values.gather(0, t)
    return out.reshape(t.shape[0], *([1] * (ndim - 1)))


class GaussianDiffusion(nn.Module):
    """Schedule constants as (non-persistent) buffers, so `.to(device)` moves them with a model."""

    betas: torch.Tensor
    alphas_cumprod: torch.Tensor
    alphas_cumprod_prev: torch.Tensor
    sqrt_alphas_cumprod: torch.Tensor
    sqrt_one_minus_alphas_cumprod: torch.Tensor
    sqrt_recip_alphas_cumprod: torch.Tensor
    sqrt_recipm1_alphas_cumprod: torch.Tensor
    posterior_variance: torch.Tensor
    posterior_log_variance_clipped: torch.Tensor
    posterior_mean_coef1: torch.Tensor
    posterior_mean_coef2: torch.Tensor

    def __init__(self, config: DiffusionConfig | None = None) -> None:
        super().__init__()
        self.config = config or DiffusionConfig()
        self.num_timesteps = self.config.num_timesteps
        self.prediction = self.config.prediction

        # All in float64, stored float32 (schedule.py explains why).
        betas = make_betas(self.config.schedule, self.num_timesteps)
        alphas = 1.0 - betas
        alphas_cumprod = np.cumprod(alphas)  # alpha_bar_t, Eq. 4
        alphas_cumprod_prev = np.append(1.0, alphas_cumprod[:-1])  # alpha_bar_{t-1}
        # Eq. 7: beta_tilde_t = (1 - alpha_bar_{t-1}) / (1 - alpha_bar_t) * beta_t
        posterior_variance = betas * (1.0 - alphas_cumprod_prev) / (1.0 - alphas_cumprod)
        # beta_tilde_0 = 0; its log is clipped to beta_tilde_1 (as in Ho et al.'s code).
        posterior_log_variance_clipped = np.log(np.append(posterior_variance[1], posterior_variance[1:]))
        # Eq. 7: mu_tilde_t(x_t, x_0) = coef1 * x_0 + coef2 * x_t
        coef1 = betas * np.sqrt(alphas_cumprod_prev) / (1.0 - alphas_cumprod)
        coef2 = (1.0 - alphas_cumprod_prev) * np.sqrt(alphas) / (1.0 - alphas_cumprod)

        constants = {
            "betas": betas,
            "alphas_cumprod": alphas_cumprod,
            "alphas_cumprod_prev": alphas_cumprod_prev,
            "sqrt_alphas_cumprod": np.sqrt(alphas_cumprod),
            "sqrt_one_minus_alphas_cumprod": np.sqrt(1.0 - alphas_cumprod),
            "sqrt_recip_alphas_cumprod": np.sqrt(1.0 / alphas_cumprod),
            "sqrt_recipm1_alphas_cumprod": np.sqrt(1.0 / alphas_cumprod - 1.0),
            "posterior_variance": posterior_variance,
            "posterior_log_variance_clipped": posterior_log_variance_clipped,
            "posterior_mean_coef1": coef1,
            "posterior_mean_coef2": coef2,
        }
        for name, value in constants.items():
            self.register_buffer(name, torch.from_numpy(value).to(torch.float32), persistent=False)

    # ----------------------------------------------------------------------------- forward process
    def q_sample(self, x_0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """Sample q(x_t | x_0) in closed form.

        Ho et al. 2020, Eq. 4: x_t = sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) eps.
        """
        return (
            extract(self.sqrt_alphas_cumprod, t, x_0.ndim) * x_0
            + extract(self.sqrt_one_minus_alphas_cumprod, t, x_0.ndim) * noise
        )

    def q_posterior_mean_variance(
        self, x_0: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Mean, variance and clipped log-variance of q(x_{t-1} | x_t, x_0) (Ho et al. 2020, Eqs. 6-7)."""
        mean = (
            extract(self.posterior_mean_coef1, t, x_t.ndim) * x_0
            + extract(self.posterior_mean_coef2, t, x_t.ndim) * x_t
        )
        variance = extract(self.posterior_variance, t, x_t.ndim)
        log_variance = extract(self.posterior_log_variance_clipped, t, x_t.ndim)
        return mean, variance, log_variance

    # ------------------------------------------------------------------ reparametrisations of eps
    def predict_x0_from_eps(self, x_t: torch.Tensor, t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """Ho et al. 2020, Eq. 15 (Eq. 4 solved for x_0).

        x_0 = (x_t - sqrt(1 - alpha_bar_t) eps) / sqrt(alpha_bar_t)
        """
        return (
            extract(self.sqrt_recip_alphas_cumprod, t, x_t.ndim) * x_t
            - extract(self.sqrt_recipm1_alphas_cumprod, t, x_t.ndim) * eps
        )

    def predict_eps_from_x0(self, x_t: torch.Tensor, t: torch.Tensor, x_0: torch.Tensor) -> torch.Tensor:
        """Eq. 4 solved for eps: eps = (x_t / sqrt(alpha_bar_t) - x_0) / sqrt(1 / alpha_bar_t - 1)."""
        return (extract(self.sqrt_recip_alphas_cumprod, t, x_t.ndim) * x_t - x_0) / extract(
            self.sqrt_recipm1_alphas_cumprod, t, x_t.ndim
        )

    def snr(self, t: torch.Tensor) -> torch.Tensor:
        """SNR(t) = alpha_bar_t / (1 - alpha_bar_t) (Kingma et al. 2021, Eq. 3 in VDM notation)."""
        alpha_bar = self.alphas_cumprod.gather(0, t)
        return alpha_bar / (1.0 - alpha_bar)

    # ------------------------------------------------------------------------ the network as eps
    def network_eps(
        self, network: NetworkFn, x_t: torch.Tensor, t: torch.Tensor, labels: torch.Tensor | None
    ) -> torch.Tensor:
        """eps_theta(x_t, t) from the raw network, whatever it predicts (parameterization.py)."""
        output = network(param.network_input(self.prediction, self, x_t, t), t, labels).float()
        return param.eps_from_output(self.prediction, self, output, x_t, t)

    def eps_model(self, network: NetworkFn) -> EpsModel:
        """The raw network wrapped as the eps-model callable the samplers take."""
        return lambda x_t, t, labels: self.network_eps(network, x_t, t, labels)

    # -------------------------------------------------------------------------------------- loss
    def training_loss(
        self,
        model: NetworkFn,
        x_0: torch.Tensor,
        labels: torch.Tensor | None = None,
        *,
        t: torch.Tensor | None = None,
        noise: torch.Tensor | None = None,
        min_snr_gamma: float | None = None,
    ) -> torch.Tensor:
        """The regression loss of the raw network `model`, averaged over the batch.

        eps-prediction is Ho et al. 2020, Eq. 14 (L_simple): E_{t ~ U, x_0, eps} || eps - eps_theta(x_t, t) ||^2
        with t drawn uniformly. v-prediction regresses v instead (Salimans & Ho 2022), EDM regresses F
        on its effective target with log-normal noise levels (Karras et al. 2022, Eq. 8; see
        parameterization.py). With `min_snr_gamma` each sample is weighted by min(SNR(t), gamma) / SNR(t)
        for eps, / (SNR(t) + 1) for v (Hang et al. 2023, "Efficient Diffusion Training via Min-SNR
        Weighting Strategy"), which speeds up convergence.
        """
        batch = x_0.shape[0]
        if t is None:
            t = param.sample_timesteps(self.prediction, self, batch, x_0.device)
        if noise is None:
            noise = torch.randn_like(x_0)
        x_t = self.q_sample(x_0, t, noise)
        output = model(param.network_input(self.prediction, self, x_t, t), t, labels)
        target = param.training_target(self.prediction, self, x_0, x_t, noise, t)
        per_sample = (output.float() - target).pow(2).mean(dim=tuple(range(1, x_0.ndim)))  # (B,)
        weight = param.loss_weight(self.prediction, self.snr(t), min_snr_gamma)
        if weight is not None:
            per_sample = per_sample * weight
        return per_sample.mean()
