"""evaluate.py end to end on a tiny ImageFolder with a tiny classifier: the real and noise rows,
results.json and grids, and the same numbers from the sample cache on a second run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image

from shared.classifier import Classifier, ClassifierConfig, save_classifier
from training.evaluate import main


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("tiny-eval")
    gen = torch.Generator().manual_seed(0)
    for split in ("train", "test"):
        for label, name in enumerate(("dark", "light")):
            folder = root / "data" / split / name
            folder.mkdir(parents=True)
            for k in range(12):
                img = (0.25 + 0.5 * label + 0.1 * torch.randn(32, 32, 3, generator=gen)).clamp(0, 1)
                Image.fromarray((img * 255).to(torch.uint8).numpy()).save(folder / f"{k}.png")
    torch.manual_seed(0)
    net = Classifier(ClassifierConfig(stem_channels=4, widths=(8, 16), num_classes=2, class_names=("dark", "light")))
    save_classifier(net.eval(), root / "classifier", training={"test_accuracy": 0.5})
    return {
        "data": str(root / "data"),
        "cache": str(root / "cache"),
        "samples": str(root / "samples"),
        "classifier": str(root / "classifier"),
        "root": str(root),
    }


def run(setup: dict[str, str], out: str, *extra: str) -> dict:
    argv = [
        f"--data={setup['data']}", f"--data-cache={setup['cache']}", f"--cache-dir={setup['samples']}",
        f"--classifier={setup['classifier']}", f"--out={out}", "--n=10", "--kid-subset-size=5", *extra,
    ]  # fmt: skip
    assert main(argv) == 0
    return json.loads((Path(out) / "results.json").read_text())


def test_real_and_noise_rows_are_written_and_repeatable(setup: dict[str, str]) -> None:
    out = str(Path(setup["root"]) / "out")
    first = run(setup, out, "--model=real")
    assert [r["row"] for r in first["rows"]] == ["real"]
    row = first["rows"][0]
    assert row["n"] == 10 and row["fid"] >= 0 and 0 <= row["class_agreement"] <= 1
    assert first["reference"].startswith("CIFAR-10 test split, first 24 images")
    assert (Path(out) / "grid-real.png").is_file()
    assert len(list(Path(setup["samples"]).glob("real-10-*.safetensors"))) == 1
    again = run(setup, out, "--model=real")
    assert again["rows"][0]["fid"] == row["fid"] and again["rows"][0]["kid_mean"] == row["kid_mean"]
    noise = run(setup, out, "--model=noise", "--class-label=none")["rows"][0]
    assert noise["fid"] > row["fid"] and "class_agreement" not in noise
