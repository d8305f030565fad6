"""The classifier trainer's pieces (schedule, crop) and a two-step run on a tiny ImageFolder that
exports weights the evaluation can load."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image

from shared.classifier import load_classifier
from training.train_classifier import main, one_cycle, random_crop


def test_one_cycle_rises_then_falls_to_zero() -> None:
    assert one_cycle(0.0, 0.2) == 0.0
    assert one_cycle(0.1, 0.2) == pytest.approx(0.5)
    assert one_cycle(0.2, 0.2) == pytest.approx(1.0)
    assert one_cycle(0.6, 0.2) == pytest.approx(0.5)
    assert one_cycle(1.0, 0.2) == 0.0 == one_cycle(1.5, 0.2)


def test_random_crop_shifts_each_image_within_its_reflect_padding() -> None:
    x = torch.arange(2 * 3 * 6 * 6, dtype=torch.float32).view(2, 3, 6, 6)
    gen = torch.Generator().manual_seed(0)
    assert torch.equal(random_crop(x, 0, gen), x)
    out = random_crop(x, 2, gen)
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2), mode="reflect")
    for b in range(2):
        windows = [padded[b, :, i : i + 6, j : j + 6] for i in range(5) for j in range(5)]
        assert any(torch.equal(out[b], w) for w in windows)


@pytest.fixture(scope="module")
def tiny_split_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """train/ and test/ of two classes of 8x8 images: reddish fields and bluish stripes."""
    root = tmp_path_factory.mktemp("tiny-cls")
    gen = torch.Generator().manual_seed(0)
    for split, count in (("train", 16), ("test", 6)):
        for label, name in enumerate(("reds", "stripes")):
            folder = root / split / name
            folder.mkdir(parents=True)
            for k in range(count):
                img = torch.zeros(8, 8, 3)
                if label == 0:
                    img[..., 0] = 0.8
                else:
                    img[::2, :, 2] = 0.9
                img = (img + 0.1 * torch.rand(8, 8, 3, generator=gen)).clamp(0, 1)
                Image.fromarray((img * 255).to(torch.uint8).numpy()).save(folder / f"{k}.png")
    return root


@pytest.mark.slow
def test_a_short_run_exports_a_loadable_classifier_with_its_accuracy(tmp_path: Path, tiny_split_data: Path) -> None:
    export = tmp_path / "model"
    argv = [
        f"--data={tiny_split_data}", f"--data-cache={tmp_path / 'cache'}", f"--out={tmp_path / 'run'}",
        f"--export={export}", "--batch-size=8", "--max-steps=3", "--stem-channels=4", "--widths=8,16",
        "--crop-padding=1", "--device=cpu",
    ]  # fmt: skip
    assert main(argv) == 0
    card = json.loads((export / "config.json").read_text())
    assert card["training"]["steps"] == 3 and 0.0 <= card["training"]["test_accuracy"] <= 1.0
    model = load_classifier(export)
    assert model.config.class_names == ("reds", "stripes") and not model.training
    assert model(torch.zeros(2, 3, 8, 8)).shape == (2, 2)
    assert (tmp_path / "run" / "checkpoint.pt").is_file()
