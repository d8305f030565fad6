from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from shared.ebm.langevin import LangevinParams
from shared.ebm.pipeline import EBMPipeline, EBMSampleParams
from shared.weights import WeightsError
from tests.conftest import seeded_energy_net, tiny_energy_config

FAST = LangevinParams(steps=4, noise_scale=0.02)


@pytest.fixture
def pipeline() -> EBMPipeline:
    return EBMPipeline(seeded_energy_net(tiny_energy_config(spectral_norm=True)))


def test_save_and_load_round_trip(pipeline: EBMPipeline, tmp_path: Path) -> None:
    pipeline.save_pretrained(tmp_path, training={"steps": 7}, sampling=LangevinParams(steps=123, step_size=1.5))
    loaded = EBMPipeline.from_pretrained(tmp_path, device="cpu")
    assert loaded.config == pipeline.config
    assert loaded.default_langevin == LangevinParams(steps=123, step_size=1.5)
    assert loaded.card["training"] == {"steps": 7} and len(loaded.card["sha256"]) == 64
    x = torch.rand(2, 3, 8, 8)
    assert torch.equal(loaded.net.energy(x), pipeline.net.energy(x))  # fp32 weights: exact


def test_the_card_holds_the_guidance_and_sample_params_take_the_cards_values(
    pipeline: EBMPipeline, tmp_path: Path
) -> None:
    pipeline.save_pretrained(tmp_path, sampling=FAST, guidance_scale=2.5)
    assert json.loads((tmp_path / "config.json").read_text())["sampling"]["guidance_scale"] == 2.5
    loaded = EBMPipeline.from_pretrained(tmp_path, device="cpu")
    assert loaded.default_guidance_scale == 2.5 and loaded.default_langevin == FAST
    params = loaded.sample_params([4, 5], [0, None])
    assert params.guidance_scale == 2.5 and params.langevin == FAST and params.labels == (0, None)
    override = loaded.sample_params([4], [1], guidance_scale=1.0, steps=9, noise_scale=None)
    assert override.guidance_scale == 1.0 and override.langevin.steps == 9
    assert override.langevin.noise_scale == FAST.noise_scale  # None keeps the card's value
    with pytest.raises(ValueError, match="outside"):
        loaded.sample_params([4], [7])
    card = json.loads((tmp_path / "config.json").read_text())
    del card["sampling"]["guidance_scale"]  # a card written before guidance existed: no guidance
    assert EBMPipeline(pipeline.net, card).default_guidance_scale == 1.0


def test_guidance_moves_labelled_images_only(pipeline: EBMPipeline) -> None:
    chain = LangevinParams(steps=4, step_size=50.0, noise_scale=0.02, grad_clip=None)
    plain = pipeline.sample(EBMSampleParams(seeds=(1, 2), langevin=chain, labels=(0, None)))
    guided = pipeline.sample(EBMSampleParams(seeds=(1, 2), langevin=chain, labels=(0, None), guidance_scale=4.0))
    assert torch.equal(guided[1], plain[1])  # the unlabelled image follows the marginal either way
    assert (guided[0] - plain[0]).abs().max() > 1e-3
    with torch.no_grad():  # and the guided image is more of its class to the energy's own classifier
        p = torch.softmax(pipeline.net(torch.stack([plain[0], guided[0]])), 1)[:, 0]
    assert p[1] > p[0]


def test_wrong_kind_or_broken_card_is_a_weights_error(pipeline: EBMPipeline, tmp_path: Path) -> None:
    pipeline.save_pretrained(tmp_path)
    card_path = tmp_path / "config.json"
    card = json.loads(card_path.read_text())
    card_path.write_text(json.dumps({**card, "kind": "ddpm-unet"}))
    with pytest.raises(WeightsError, match="expected 'ebm-cnn'"):
        EBMPipeline.from_pretrained(tmp_path, device="cpu")
    card_path.write_text(json.dumps({**card, "energy": {**card["energy"], "base_channels": 16}}))
    with pytest.raises(WeightsError, match="do not match"):
        EBMPipeline.from_pretrained(tmp_path, device="cpu")


def test_a_seed_gives_the_same_image_alone_and_in_a_batch(pipeline: EBMPipeline) -> None:
    batch = pipeline.sample(EBMSampleParams(seeds=(1, 2, 3), langevin=FAST, labels=(0, None, 2)))
    alone = pipeline.sample(EBMSampleParams(seeds=(3,), langevin=FAST, labels=(2,)))
    assert batch.shape == (3, 3, 8, 8) and batch.min() >= -1 and batch.max() <= 1
    assert torch.allclose(batch[2:], alone, atol=1e-5)
    assert not torch.allclose(batch[0], batch[1])


def test_labels_are_checked_by_name_and_range(pipeline: EBMPipeline) -> None:
    assert pipeline.resolve_label("green") == 1
    with pytest.raises(ValueError, match="red, green, blue"):
        pipeline.resolve_label("purple")
    with pytest.raises(ValueError, match="outside"):
        pipeline.sample(EBMSampleParams(seeds=(1,), langevin=FAST, labels=(5,)))


def test_sampling_does_not_touch_the_network(pipeline: EBMPipeline) -> None:
    before = {k: v.clone() for k, v in pipeline.net.state_dict().items()}
    pipeline.sample(EBMSampleParams(seeds=(1, 2), langevin=FAST))
    assert all(torch.equal(before[k], v) for k, v in pipeline.net.state_dict().items())
    assert all(p.grad is None for p in pipeline.net.parameters())


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"seeds": ()}, "at least one"),
        ({"seeds": (-1,)}, "seeds"),
        ({"seeds": (1, 2), "labels": (0,)}, "labels"),
        ({"seeds": (1,), "guidance_scale": -1.0}, "guidance_scale"),
    ],
)
def test_sample_params_are_validated(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        EBMSampleParams(**kwargs)  # type: ignore[arg-type]
