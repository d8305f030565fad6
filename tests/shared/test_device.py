"""torch_threads sets torch's intra-op pool for a block and gives the old size back, also on an error."""

from __future__ import annotations

import pytest
import torch

from shared.device import torch_threads


def test_torch_threads_sets_and_restores_the_pool() -> None:
    before = torch.get_num_threads()
    other = 1 if before > 1 else 2
    with torch_threads(other):
        assert torch.get_num_threads() == other
    assert torch.get_num_threads() == before
    with pytest.raises(RuntimeError, match="boom"), torch_threads(other):
        raise RuntimeError("boom")
    assert torch.get_num_threads() == before
