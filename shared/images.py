"""Turning sampled tensors into pictures: uint8 arrays, PNG bytes, grids."""

from __future__ import annotations

import io
import math
import os
from pathlib import Path

import torch
from PIL import Image
from torchvision.utils import make_grid


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """Images in [-1, 1], (B, C, H, W) float -> (B, C, H, W) uint8 on the CPU."""
    return ((images.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


def to_pil(image: torch.Tensor) -> Image.Image:
    """One uint8 (C, H, W) image -> PIL."""
    return Image.fromarray(image.permute(1, 2, 0).numpy())  # (H, W, C)


def grid_image(images: torch.Tensor, nrow: int | None = None, padding: int = 2) -> Image.Image:
    """uint8 (B, C, H, W) -> one PIL grid, about square unless nrow is given."""
    nrow = nrow or max(1, math.ceil(math.sqrt(images.shape[0])))
    return to_pil(make_grid(images, nrow=nrow, padding=padding, pad_value=255))


def png_bytes(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def save_images(images: torch.Tensor, directory: str | os.PathLike[str], prefix: str = "") -> list[Path]:
    """Write each uint8 (C, H, W) image of the batch as <prefix><k>.png; returns the paths."""
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for k, image in enumerate(images):
        path = out / f"{prefix}{k}.png"
        to_pil(image).save(path)
        paths.append(path)
    return paths


def save_grid_and_images(images: torch.Tensor, grid_path: Path, images_dir: Path | None = None) -> Path:
    """The grid at grid_path and each image as <images_dir>/<k>.png (default: <grid stem>_images/)."""
    grid_path.parent.mkdir(parents=True, exist_ok=True)
    grid_image(images).save(grid_path)
    images_dir = images_dir or grid_path.with_name(grid_path.stem + "_images")
    save_images(images, images_dir)
    return images_dir
