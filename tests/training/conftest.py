"""Helpers the training tests share."""

from __future__ import annotations

from pathlib import Path

import torch
from PIL import Image


def two_class_folder(root: Path, per_class: int, classes: tuple[str, str] = ("dark", "light")) -> Path:
    """train/ and test/ ImageFolders of 32x32 PNGs: a dark and a light class with seeded noise."""
    gen = torch.Generator().manual_seed(0)
    for split in ("train", "test"):
        for label, name in enumerate(classes):
            folder = root / split / name
            folder.mkdir(parents=True)
            for k in range(per_class):
                img = (0.25 + 0.5 * label + 0.1 * torch.randn(32, 32, 3, generator=gen)).clamp(0, 1)
                Image.fromarray((img * 255).to(torch.uint8).numpy()).save(folder / f"{k}.png")
    return root
