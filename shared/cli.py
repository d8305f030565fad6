"""What the sampling CLIs of both workers share: common flags, a progress bar, writing the PNGs."""

from __future__ import annotations

import argparse
import logging
import time
from collections.abc import Callable
from pathlib import Path

import torch
from tqdm import tqdm

from shared.images import save_grid_and_images

logger = logging.getLogger(__name__)

# run(callback) -> uint8 images (N, C, H, W); callback(step, total, preview) advances the bar.
Run = Callable[[Callable[[int, int, torch.Tensor], None]], torch.Tensor]


def add_common_arguments(parser: argparse.ArgumentParser, default_weights: Path) -> None:
    parser.add_argument("--weights", type=Path, default=default_weights, help="model directory (safetensors + JSON)")
    parser.add_argument("--n", type=int, default=16, help="number of images")
    parser.add_argument(
        "--class-label", default=None, help="class name or index; 'all' cycles through the classes; default: any"
    )
    parser.add_argument("--seed", type=int, default=0, help="image k uses seed + k")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--out", type=Path, default=Path("out/grid.png"), help="grid PNG path")
    parser.add_argument("--images-dir", type=Path, default=None, help="individual PNGs (default: next to --out)")


def sample_and_save(run: Run, total_steps: int, desc: str, args: argparse.Namespace) -> Path:
    """Run with a tqdm bar over the steps, then write the grid and the images; returns the images dir."""
    start = time.perf_counter()
    with tqdm(total=total_steps, desc=desc, unit="step") as bar:
        images = run(lambda step, total, preview: bar.update(1))
    elapsed = time.perf_counter() - start
    images_dir = save_grid_and_images(images, args.out, args.images_dir)
    logger.info(
        "%d images in %.1f s (%.2f s/image); grid %s, images in %s",
        images.shape[0], elapsed, elapsed / images.shape[0], args.out, images_dir,
    )  # fmt: skip
    return images_dir


def configure_logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
