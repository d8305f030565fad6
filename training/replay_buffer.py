"""The replay buffer of persistent Langevin chains for EBM training.

Chains start where earlier chains ended (persistent contrastive divergence, Tieleman 2008), with a
fraction reinitialised from uniform noise each batch so that the buffer keeps exploring (Du &
Mordatch 2019, Sec. 3.1: 5%).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch


class ReplayBuffer:
    """`size` images in [-1, 1] on `device`."""

    def __init__(
        self, size: int, shape: Sequence[int], *, reinit_prob: float = 0.05, device: torch.device | str = "cpu"
    ) -> None:
        if size < 1:
            raise ValueError(f"buffer size must be >= 1, got {size}")
        if not 0.0 <= reinit_prob <= 1.0:
            raise ValueError(f"reinit_prob must be in [0, 1], got {reinit_prob}")
        self.reinit_prob = reinit_prob
        self.images = self._noise((size, *shape), torch.device(device))

    @staticmethod
    def _noise(shape: Sequence[int], device: torch.device) -> torch.Tensor:
        return torch.rand(tuple(shape), device=device) * 2 - 1  # U[-1, 1)

    def __len__(self) -> int:
        return self.images.shape[0]

    def sample(self, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(indices, chain starts): random buffer entries, each replaced by fresh noise with prob reinit_prob."""
        index = torch.randint(0, len(self), (batch_size,), device=self.images.device)
        x = self.images[index]
        fresh = torch.rand(batch_size, device=x.device) < self.reinit_prob
        x = torch.where(fresh.view(-1, *([1] * (x.ndim - 1))), self._noise(x.shape, x.device), x)
        return index, x

    def update(self, index: torch.Tensor, x: torch.Tensor) -> None:
        """Store where the chains ended."""
        self.images[index] = x.detach()

    def state_dict(self) -> dict[str, Any]:
        return {"images": self.images, "reinit_prob": self.reinit_prob}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.images = state["images"].to(self.images.device)
        self.reinit_prob = float(state["reinit_prob"])
