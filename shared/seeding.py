"""Per-sample random streams, so that a sample depends on its own seed and not on its batch.

Every sampler in the project (diffusion and EBM) draws sample i's noise from `torch.Generator`
number i, seeded with seeds[i]. The generators live on the CPU so that the same seed gives the
same noise on any device; each draw is then copied to the sampling device.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

MAX_SEED = 2**63 - 1


def make_generators(seeds: Sequence[int]) -> list[torch.Generator]:
    """One CPU generator per sample, seeded with its seed (0 <= seed <= 2**63 - 1)."""
    if not seeds:
        raise ValueError("at least one seed is required")
    generators = []
    for seed in seeds:
        if not 0 <= int(seed) <= MAX_SEED:
            raise ValueError(f"seed {seed} is outside [0, {MAX_SEED}]")
        generators.append(torch.Generator(device="cpu").manual_seed(int(seed)))
    return generators


def _per_sample(
    draw: Callable[..., torch.Tensor],
    generators: Sequence[torch.Generator],
    shape: Sequence[int],
    device: torch.device | str,
    dtype: torch.dtype,
) -> torch.Tensor:
    rows = [draw(tuple(shape), generator=g, dtype=dtype) for g in generators]
    return torch.stack(rows).to(device)


def randn_per_sample(
    generators: Sequence[torch.Generator],
    shape: Sequence[int],
    *,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Standard normal noise of shape (len(generators), *shape); row i comes from generators[i]."""
    return _per_sample(torch.randn, generators, shape, device, dtype)


def rand_per_sample(
    generators: Sequence[torch.Generator],
    shape: Sequence[int],
    *,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Uniform [0, 1) noise of shape (len(generators), *shape); row i comes from generators[i]."""
    return _per_sample(torch.rand, generators, shape, device, dtype)


def seeds_from(seed: int, n: int) -> tuple[int, ...]:
    """Image k of a request with seed s uses seed s + k, so any one image can be re-made alone."""
    return tuple(seed + k for k in range(n))
