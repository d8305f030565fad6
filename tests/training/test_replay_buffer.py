from __future__ import annotations

import pytest
import torch

from training.replay_buffer import ReplayBuffer


def test_starts_as_uniform_noise_in_the_data_range() -> None:
    buffer = ReplayBuffer(500, (3, 4, 4))
    assert len(buffer) == 500 and buffer.images.shape == (500, 3, 4, 4)
    assert buffer.images.min() >= -1 and buffer.images.max() < 1
    assert buffer.images.mean().abs() < 0.05


def test_sampled_chains_continue_except_a_reinitialised_fraction() -> None:
    torch.manual_seed(0)
    buffer = ReplayBuffer(100, (1, 2, 2), reinit_prob=0.25)
    buffer.images.fill_(5.0)  # a value noise can never take
    reinitialised = 0
    for _ in range(40):
        index, x = buffer.sample(50)
        assert index.min() >= 0 and index.max() < 100
        reinitialised += int((x[:, 0, 0, 0] != 5.0).sum())
    assert reinitialised / (40 * 50) == pytest.approx(0.25, abs=0.04)


def test_update_stores_chain_ends_and_state_round_trips() -> None:
    buffer = ReplayBuffer(10, (1, 2, 2), reinit_prob=0.0)
    index = torch.tensor([1, 7])
    buffer.update(index, torch.full((2, 1, 2, 2), 0.5))
    assert torch.all(buffer.images[[1, 7]] == 0.5)
    other = ReplayBuffer(10, (1, 2, 2), reinit_prob=0.3)
    other.load_state_dict(buffer.state_dict())
    assert torch.equal(other.images, buffer.images) and other.reinit_prob == 0.0


@pytest.mark.parametrize(("size", "prob", "message"), [(0, 0.05, "size"), (10, 1.5, "reinit_prob")])
def test_bad_settings_are_rejected(size: int, prob: float, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ReplayBuffer(size, (1, 2, 2), reinit_prob=prob)
