"""Langevin dynamics on the input image: gradient descent on x, never on the network's parameters.

Unadjusted Langevin (Welling & Teh 2011, Eq. 4; Du & Mordatch 2019, Eq. 3):
    x_{k+1} = x_k - (step_size / 2) * clip(grad_x E(x_k)) + noise_scale * z_k,   z_k ~ N(0, I)
then clamped to the data range. With noise_scale = sqrt(step_size), no clipping and no clamping,
this chain's stationary distribution tends to p(x) ∝ exp(-E(x)) as step_size -> 0. EBM practice
(Du & Mordatch 2019; Nijkamp et al. 2019) uses a much smaller noise than sqrt(step_size): short-run
chains that behave like noisy gradient descent.

Gradient control, which is the point of this module:
- only the chain state x requires grad; gradients are taken with `torch.autograd.grad(E.sum(), x)`,
  so the parameters' `.grad` is never created or accumulated (no `.backward()` here);
- the network is put in eval mode for the chain and its previous mode restored afterwards, so
  train-time state (spectral-norm power iterations, dropout) does not change while sampling;
- each step builds a fresh graph and drops it (`retain_graph=False`, x is detached every step).
Summing the per-image energies is safe: image i's energy depends only on x_i, so
d(sum_j E(x_j)) / dx_i = dE(x_i) / dx_i.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from shared.seeding import randn_per_sample

# energy_fn(x) -> (B,) energies of the images x; the chain only ever differentiates it w.r.t. x.
EnergyFn = Callable[[torch.Tensor], torch.Tensor]
# callback(step, total, x): after each completed step (1-based); raising from it stops the chain.
StepCallback = Callable[[int, int, torch.Tensor], None]


@dataclass(frozen=True)
class LangevinParams:
    steps: int = 60
    step_size: float = 2.0
    noise_scale: float = 0.01
    grad_clip: float | None = 0.03  # element-wise clip of grad_x E, None: no clipping
    clamp: tuple[float, float] | None = (-1.0, 1.0)  # the data range

    def __post_init__(self) -> None:
        if self.clamp is not None:
            object.__setattr__(self, "clamp", (float(self.clamp[0]), float(self.clamp[1])))
        if self.steps < 0:
            raise ValueError(f"steps must be >= 0, got {self.steps}")
        if self.step_size <= 0:
            raise ValueError(f"step_size must be > 0, got {self.step_size}")
        if self.noise_scale < 0:
            raise ValueError(f"noise_scale must be >= 0, got {self.noise_scale}")
        if self.grad_clip is not None and self.grad_clip <= 0:
            raise ValueError(f"grad_clip must be > 0 or None, got {self.grad_clip}")


@contextlib.contextmanager
def eval_mode(module: nn.Module) -> Iterator[nn.Module]:
    """Eval mode for the duration, then the module's previous mode (train or eval) again."""
    was_training = module.training
    module.eval()
    try:
        yield module
    finally:
        module.train(was_training)


def energy_grad(energy_fn: EnergyFn, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(E(x), grad_x E(x)) with the gradient taken with respect to the input alone."""
    x = x.detach().requires_grad_(True)
    with torch.enable_grad():
        energy = energy_fn(x)  # (B,)
        (grad,) = torch.autograd.grad(energy.sum(), x, retain_graph=False)
    return energy.detach(), grad


def langevin_chain(
    energy_fn: EnergyFn,
    x_init: torch.Tensor,
    params: LangevinParams,
    *,
    generators: Sequence[torch.Generator] | None = None,
    callback: StepCallback | None = None,
) -> torch.Tensor:
    """Run `params.steps` Langevin steps from x_init; returns the final x (detached).

    With `generators` (see `shared.seeding`), image i's noise comes from generators[i] (serving:
    reproducible per image, whatever the batch); without, from the global RNG (training: fast).
    """
    if generators is not None and len(generators) != x_init.shape[0]:
        raise ValueError(f"{len(generators)} generators for a batch of {x_init.shape[0]}")
    x = x_init.detach().clone()
    for step in range(params.steps):
        _, grad = energy_grad(energy_fn, x)
        if params.grad_clip is not None:
            grad = grad.clamp(-params.grad_clip, params.grad_clip)  # element-wise
        x = x - (params.step_size / 2) * grad
        if params.noise_scale > 0:
            if generators is None:
                z = torch.randn_like(x)
            else:
                z = randn_per_sample(generators, x.shape[1:], device=x.device, dtype=x.dtype)
            x = x + params.noise_scale * z
        if params.clamp is not None:
            x = x.clamp(*params.clamp)
        if callback is not None:
            callback(step + 1, params.steps, x)
    return x.detach()


def model_energy(model: nn.Module, labels: torch.Tensor | None = None, guidance_scale: float = 1.0) -> EnergyFn:
    """E(x) (or E(x, y) for the given labels, guided by `guidance_scale`) of an `EnergyNet`, as a function of x."""
    return lambda x: model.energy(x, labels, guidance_scale=guidance_scale)  # type: ignore[operator]


def sample_model(
    model: nn.Module,
    x_init: torch.Tensor,
    params: LangevinParams,
    *,
    labels: torch.Tensor | None = None,
    guidance_scale: float = 1.0,
    generators: Sequence[torch.Generator] | None = None,
    callback: StepCallback | None = None,
) -> torch.Tensor:
    """Langevin chains on a network's energy, with the network in eval mode and left unchanged."""
    energy_fn = model_energy(model, labels, guidance_scale)
    with eval_mode(model):
        return langevin_chain(energy_fn, x_init, params, generators=generators, callback=callback)
