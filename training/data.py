"""CIFAR-10 (or any ImageFolder tree) as uint8 tensors, plus shuffled float batches for training.

A data source is one of:
- ``"cifar10"``: torchvision's download of the python release (needs internet);
- a ``.tar``/``.tar.gz``/``.tgz`` archive of an ImageFolder tree, extracted once into the cache;
- an ImageFolder directory (``<class>/<image>``), optionally split into ``train/`` and ``test/``.

Decoded images are cached as safetensors under ``cache_dir``, keyed by the source's resolved path,
size, mtime and the split, so only the first load of a tree pays for decoding.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tarfile
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import save_file
from tqdm import tqdm

logger = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CACHE_DIR = REPO_ROOT / "data" / "cache"
CIFAR10 = "cifar10"
ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar")
SPLITS = ("train", "test")
_EXTRACTED_MARKER = ".extracted"
_CACHE_VERSION = 1

Split = Literal["train", "test"]


@dataclass(frozen=True)
class ImageDataset:
    """Images with integer labels; ``classes[label]`` names a label."""

    images: torch.Tensor  # uint8 (N, 3, H, W)
    labels: torch.Tensor  # int64 (N,)
    classes: tuple[str, ...]

    def __len__(self) -> int:
        return int(self.labels.shape[0])


def default_data_source() -> str:
    """The team's offline CIFAR-10 archive beside the checkout if present, else ``"cifar10"``."""
    archive = REPO_ROOT.parent / "shared" / "data" / "cifar10-jpeg.tar.gz"
    return str(archive) if archive.is_file() else CIFAR10


def load_image_dataset(
    source: str | os.PathLike[str],
    split: Split = "train",
    cache_dir: str | os.PathLike[str] = DEFAULT_CACHE_DIR,
) -> ImageDataset:
    """Load one split of ``source`` (see the module docstring) as uint8 tensors."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    cache = Path(cache_dir)
    if str(source) == CIFAR10:
        return _load_torchvision_cifar10(split, cache)
    path = Path(source).expanduser().resolve()
    if not path.exists():
        raise FileNotFoundError(
            f"data source {str(source)!r} not found: expected {CIFAR10!r}, an ImageFolder "
            f"directory or a {'/'.join(ARCHIVE_SUFFIXES)} archive of one"
        )
    is_archive = path.is_file() and path.name.endswith(ARCHIVE_SUFFIXES)
    if not (is_archive or path.is_dir()):
        raise ValueError(f"data source {str(path)!r} is neither a directory nor a {ARCHIVE_SUFFIXES} archive")
    cache_file = cache / f"{path.name}-{split}-{_source_key(path, split)}.safetensors"
    if cache_file.is_file():
        logger.info("loading cached %s split of %s from %s", split, path, cache_file)
        return _read_cache(cache_file)
    root = _extract_once(path, cache) if is_archive else path
    dataset = _decode_image_folder(_split_dir(root, split))
    _write_cache(dataset, cache_file)
    return dataset


def iterate_batches(
    dataset: ImageDataset,
    batch_size: int,
    *,
    generator: torch.Generator,
    device: torch.device | str = "cpu",
    hflip: bool = True,
    drop_last: bool = True,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """One shuffled epoch of ``(x, y)``: x float32 (B, 3, H, W) in [-1, 1], y int64 (B,).

    Both are on ``device``. Order and flips come from ``generator`` (a CPU generator), so an
    epoch is reproducible.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    n = len(dataset)
    order = torch.randperm(n, generator=generator)
    flip = torch.rand(n, generator=generator) < 0.5 if hflip else torch.zeros(n, dtype=torch.bool)
    stop = n - n % batch_size if drop_last else n
    for start in range(0, stop, batch_size):
        index = order[start : start + batch_size]
        x = dataset.images[index].to(device, non_blocking=True)  # uint8 (B, 3, H, W)
        y = dataset.labels[index].to(device, non_blocking=True)
        x = x.float().div_(127.5).sub_(1.0)
        flip_b = flip[start : start + batch_size].to(device)[:, None, None, None]  # (B, 1, 1, 1)
        yield torch.where(flip_b, x.flip(-1), x), y


def _load_torchvision_cifar10(split: Split, cache: Path) -> ImageDataset:
    from torchvision import datasets

    data = datasets.CIFAR10(root=str(cache), train=split == "train", download=True)
    hwc = torch.from_numpy(np.ascontiguousarray(data.data))  # (N, H, W, 3)
    images = hwc.permute(0, 3, 1, 2).contiguous()  # (N, 3, H, W)
    labels = torch.as_tensor(data.targets, dtype=torch.int64)
    return ImageDataset(images=images, labels=labels, classes=tuple(data.classes))


def _source_key(path: Path, split: str) -> str:
    stat = path.stat()
    key = {
        "path": str(path),
        "size": stat.st_size,
        "mtime_ns": stat.st_mtime_ns,
        "split": split,
        "version": _CACHE_VERSION,
    }
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]


def _extract_once(archive: Path, cache: Path) -> Path:
    """Extract ``archive`` into the cache unless a completed extraction is already there."""
    target = cache / f"{archive.name}-{_source_key(archive, 'all')}"
    if (target / _EXTRACTED_MARKER).is_file():
        return target
    cache.mkdir(parents=True, exist_ok=True)
    logger.info("extracting %s into %s", archive, target)
    staging = Path(tempfile.mkdtemp(prefix=".extract-", dir=cache))
    try:
        with tarfile.open(archive) as tar:
            tar.extractall(staging, filter="data")
        (staging / _EXTRACTED_MARKER).touch()
        if (target / _EXTRACTED_MARKER).is_file():
            # A concurrent run finished first and may be decoding its tree right now: keep it.
            return target
        shutil.rmtree(target, ignore_errors=True)  # a tree without its marker: an older crash's
        try:
            os.replace(staging, target)
        except OSError:
            if not (target / _EXTRACTED_MARKER).is_file():  # else a concurrent run finished first
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def _split_dir(root: Path, split: str) -> Path:
    if (root / split).is_dir():
        return root / split
    present = [s for s in SPLITS if (root / s).is_dir()]
    if present:
        raise ValueError(f"{root} has split folders {present} but no {split!r} folder")
    return root


def _decode_image_folder(root: Path) -> ImageDataset:
    """Decode every image of an ImageFolder tree to RGB; all images must share one size."""
    from torchvision.datasets import ImageFolder

    folder = ImageFolder(str(root))
    if not folder.samples:
        raise ValueError(f"no images found under {root}")
    first = _decode(folder.samples[0][0])
    images = np.empty((len(folder.samples), *first.shape), dtype=np.uint8)  # (N, H, W, 3)
    for i, (file, _) in enumerate(tqdm(folder.samples, desc=f"decoding {root.name}", unit="img")):
        pixels = first if i == 0 else _decode(file)
        if pixels.shape != first.shape:
            raise ValueError(
                f"{file} is {pixels.shape[1]}x{pixels.shape[0]} but {folder.samples[0][0]} is "
                f"{first.shape[1]}x{first.shape[0]}; all images must share one size "
                "(no resizing is done)"
            )
        images[i] = pixels
    labels = torch.tensor([label for _, label in folder.samples], dtype=torch.int64)
    chw = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()  # (N, 3, H, W)
    logger.info("decoded %d images of %s from %s", len(labels), tuple(chw.shape[1:]), root)
    return ImageDataset(images=chw, labels=labels, classes=tuple(folder.classes))


def _decode(file: str) -> np.ndarray:
    with Image.open(file) as image:
        return np.asarray(image.convert("RGB"))  # (H, W, 3)


def _write_cache(dataset: ImageDataset, cache_file: Path) -> None:
    cache_file.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".safetensors", dir=cache_file.parent)
    os.close(fd)
    try:
        save_file(
            {"images": dataset.images, "labels": dataset.labels},
            tmp,
            metadata={"classes": json.dumps(list(dataset.classes))},
        )
        os.replace(tmp, cache_file)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    logger.info("cached decoded images at %s", cache_file)


def _read_cache(cache_file: Path) -> ImageDataset:
    with safe_open(str(cache_file), framework="pt") as f:
        classes = tuple(json.loads(f.metadata()["classes"]))
        images, labels = f.get_tensor("images"), f.get_tensor("labels")
    return ImageDataset(images=images, labels=labels, classes=classes)
