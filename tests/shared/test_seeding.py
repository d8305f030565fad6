from __future__ import annotations

import pytest
import torch

from shared.seeding import MAX_SEED, make_generators, randn_per_sample

SHAPE = (3, 4, 4)


def test_one_generator_per_seed() -> None:
    gens = make_generators([0, 1, 2])
    assert len(gens) == 3
    assert all(g.device.type == "cpu" for g in gens)
    assert [g.initial_seed() for g in gens] == [0, 1, 2]


@pytest.mark.parametrize("seeds", [[], ()])
def test_empty_seeds_rejected(seeds: list[int]) -> None:
    with pytest.raises(ValueError, match="at least one seed"):
        make_generators(seeds)


@pytest.mark.parametrize("bad", [-1, MAX_SEED + 1, 2**64])
def test_out_of_range_seed_rejected(bad: int) -> None:
    with pytest.raises(ValueError, match=str(bad)):
        make_generators([0, bad])


@pytest.mark.parametrize("edge", [0, MAX_SEED])
def test_range_edges_accepted(edge: int) -> None:
    (gen,) = make_generators([edge])
    assert gen.initial_seed() == edge


def test_row_depends_only_on_its_seed() -> None:
    batch = randn_per_sample(make_generators([5, 6, 7]), SHAPE)
    assert batch.shape == (3, *SHAPE)
    for i, seed in enumerate([5, 6, 7]):
        alone = randn_per_sample(make_generators([seed]), SHAPE)
        assert torch.equal(batch[i], alone[0])
    other = randn_per_sample(make_generators([99, 6]), SHAPE)
    assert torch.equal(other[1], batch[1])
    assert not torch.equal(other[0], batch[0])


def test_same_seeds_reproduce_and_different_seeds_differ() -> None:
    a = randn_per_sample(make_generators([1, 2]), SHAPE)
    b = randn_per_sample(make_generators([1, 2]), SHAPE)
    assert torch.equal(a, b)
    assert not torch.equal(a[0], a[1])


def test_generators_advance_between_draws() -> None:
    gens = make_generators([3])
    first = randn_per_sample(gens, SHAPE)
    second = randn_per_sample(gens, SHAPE)
    assert not torch.equal(first, second)


def test_noise_is_roughly_standard_normal() -> None:
    x = randn_per_sample(make_generators(list(range(8))), (32, 32))
    assert abs(x.mean().item()) < 0.05
    assert abs(x.std().item() - 1.0) < 0.05


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_dtype_honoured(dtype: torch.dtype) -> None:
    x = randn_per_sample(make_generators([0]), SHAPE, dtype=dtype)
    assert x.dtype == dtype


def test_device_honoured() -> None:
    x = randn_per_sample(make_generators([0]), SHAPE, device=torch.device("meta"))
    assert x.device.type == "meta" and x.shape == (1, *SHAPE)
    assert randn_per_sample(make_generators([0]), SHAPE, device="cpu").device.type == "cpu"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_same_noise_on_cuda_as_on_cpu() -> None:
    cpu = randn_per_sample(make_generators([4, 5]), SHAPE)
    cuda = randn_per_sample(make_generators([4, 5]), SHAPE, device="cuda")
    assert cuda.device.type == "cuda"
    assert torch.equal(cuda.cpu(), cpu)
