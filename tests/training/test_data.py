"""Tests for training.data: loading ImageFolder trees and archives, caching, and batching."""

from __future__ import annotations

import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from training import data
from training.data import ImageDataset, iterate_batches, load_image_dataset

CLASSES = ("cat", "airplane", "bird")  # created out of order; labels must follow sorted names
SORTED_CLASSES = ("airplane", "bird", "cat")
PER_CLASS = 4
SIZE = 8


def _colour(split: str, label: int, index: int) -> tuple[int, int, int]:
    return (10 * label + index, 100 + index, 200 if split == "train" else 50)


def _make_tree(root: Path) -> Path:
    """train/ and test/ with 3 classes x 4 solid-colour 8x8 PNGs, plus one JPEG in train/bird."""
    for split in ("train", "test"):
        for name in CLASSES:
            label = SORTED_CLASSES.index(name)
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(PER_CLASS):
                image = Image.new("RGB", (SIZE, SIZE), _colour(split, label, i))
                image.save(folder / f"{i:04d}.png")
    red = Image.new("RGB", (SIZE, SIZE), (255, 0, 0))
    red.save(root / "train" / "bird" / "9999.jpg", quality=95)
    return root


def _make_tarball(tree: Path, archive: Path) -> Path:
    with tarfile.open(archive, "w:gz") as tar:
        for split in ("train", "test"):
            tar.add(tree / split, arcname=split)
    return archive


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    return _make_tree(tmp_path / "tree")


def test_directory_split_has_sorted_labels_and_exact_pixels(tree: Path, tmp_path: Path) -> None:
    dataset = load_image_dataset(tree, "test", cache_dir=tmp_path / "cache")
    assert dataset.classes == SORTED_CLASSES
    assert len(dataset) == 3 * PER_CLASS
    assert dataset.images.shape == (3 * PER_CLASS, 3, SIZE, SIZE)
    assert dataset.images.dtype == torch.uint8
    assert dataset.labels.dtype == torch.int64
    assert dataset.labels.tolist() == [label for label in range(3) for _ in range(PER_CLASS)]
    for n in range(len(dataset)):
        label, index = int(dataset.labels[n]), n % PER_CLASS
        expected = torch.tensor(_colour("test", label, index), dtype=torch.uint8)
        assert torch.equal(dataset.images[n], expected[:, None, None].expand(3, SIZE, SIZE))


def test_train_split_includes_the_jpeg(tree: Path, tmp_path: Path) -> None:
    dataset = load_image_dataset(tree, "train", cache_dir=tmp_path / "cache")
    assert len(dataset) == 3 * PER_CLASS + 1
    jpeg = dataset.images[dataset.labels == SORTED_CLASSES.index("bird")][-1].to(torch.int32)
    assert (jpeg[0] > 240).all() and (jpeg[1:] < 15).all()  # red, within JPEG error
    train_pngs = 3 * PER_CLASS
    assert (dataset.images[:, 2] == 200).sum() == train_pngs * SIZE * SIZE  # blue 200 in train/


def test_directory_without_split_folders_is_the_split(tree: Path, tmp_path: Path) -> None:
    dataset = load_image_dataset(tree / "test", "train", cache_dir=tmp_path / "cache")
    assert len(dataset) == 3 * PER_CLASS
    assert (dataset.images[:, 2] == 50).all()


def test_missing_split_folder_is_an_error(tree: Path, tmp_path: Path) -> None:
    (tree / "train").rename(tree / "other")
    with pytest.raises(ValueError, match="'train'"):
        load_image_dataset(tree, "train", cache_dir=tmp_path / "cache")


def test_tarball_is_extracted_once_and_decoded_images_are_cached(
    tree: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    archive = _make_tarball(tree, tmp_path / "tiny.tar.gz")
    cache = tmp_path / "cache"
    train = load_image_dataset(archive, "train", cache_dir=cache)
    (marker,) = cache.glob(f"*/{data._EXTRACTED_MARKER}")
    marker_mtime = marker.stat().st_mtime_ns

    def no_extraction(*args: object, **kwargs: object) -> None:
        raise AssertionError("archive extracted twice")

    monkeypatch.setattr(tarfile, "open", no_extraction)
    test = load_image_dataset(archive, "test", cache_dir=cache)  # decodes, reuses the extraction
    assert marker.stat().st_mtime_ns == marker_mtime
    assert len(test) == 3 * PER_CLASS and (test.images[:, 2] == 50).all()

    def no_decoding(file: str) -> np.ndarray:
        raise AssertionError("decoded again instead of using the cache")

    monkeypatch.setattr(data, "_decode", no_decoding)
    again = load_image_dataset(archive, "train", cache_dir=cache)
    assert torch.equal(again.images, train.images)
    assert torch.equal(again.labels, train.labels)
    assert again.classes == train.classes == SORTED_CLASSES
    assert len(list(cache.glob("*.safetensors"))) == 2


def test_a_concurrent_extraction_keeps_the_tree_another_run_is_reading(
    tree: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two training runs started together both extract; the later one must not delete the earlier
    one's finished tree under it (it did: FileNotFoundError while decoding)."""
    archive = _make_tarball(tree, tmp_path / "tiny.tar.gz")
    cache = tmp_path / "cache"
    target = cache / f"{archive.name}-{data._source_key(archive, 'all')}"
    real_open = tarfile.open

    def open_while_another_run_finishes(*args: object, **kwargs: object) -> tarfile.TarFile:
        # The other run completes its extraction while this one is still extracting.
        (target / "train").mkdir(parents=True)
        (target / "train" / "being-read.txt").write_text("in use")
        (target / data._EXTRACTED_MARKER).touch()
        return real_open(*args, **kwargs)

    monkeypatch.setattr(tarfile, "open", open_while_another_run_finishes)
    assert data._extract_once(archive, cache) == target
    assert (target / "train" / "being-read.txt").read_text() == "in use"
    assert not list(cache.glob(".extract-*"))  # this run's staging copy is cleaned up


def test_cache_is_invalidated_when_the_source_changes(tree: Path, tmp_path: Path) -> None:
    archive = _make_tarball(tree, tmp_path / "tiny.tgz")
    cache = tmp_path / "cache"
    assert len(load_image_dataset(archive, "test", cache_dir=cache)) == 3 * PER_CLASS
    Image.new("RGB", (SIZE, SIZE)).save(tree / "test" / "cat" / "extra.png")
    _make_tarball(tree, archive)
    assert len(load_image_dataset(archive, "test", cache_dir=cache)) == 3 * PER_CLASS + 1


def test_mismatched_image_size_names_the_file(tree: Path, tmp_path: Path) -> None:
    Image.new("RGB", (SIZE + 1, SIZE)).save(tree / "test" / "cat" / "wide.png")
    with pytest.raises(ValueError, match=r"wide\.png"):
        load_image_dataset(tree, "test", cache_dir=tmp_path / "cache")


def test_missing_source_raises_file_not_found(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="cifar10"):
        load_image_dataset(tmp_path / "nope", cache_dir=tmp_path / "cache")


def test_file_that_is_not_an_archive_is_rejected(tmp_path: Path) -> None:
    (tmp_path / "images.zip").write_bytes(b"")
    with pytest.raises(ValueError, match="archive"):
        load_image_dataset(tmp_path / "images.zip", cache_dir=tmp_path / "cache")


@pytest.fixture
def ramp() -> ImageDataset:
    """10 images whose pixel values encode the image index and whose columns differ."""
    n = 10
    columns = torch.arange(4, dtype=torch.uint8) * 60  # 0, 60, 120, 180
    images = (columns + torch.arange(n, dtype=torch.uint8)[:, None] * 7)[:, None, None, :]
    images = images.expand(n, 3, 4, 4).contiguous()  # (N, 3, H, W)
    return ImageDataset(images=images, labels=torch.arange(n), classes=tuple("abcdefghij"))


def _epoch(
    dataset: ImageDataset, seed: int, *, drop_last: bool = True, hflip: bool = True
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    generator = torch.Generator().manual_seed(seed)
    batches = iterate_batches(dataset, 3, generator=generator, drop_last=drop_last, hflip=hflip)
    return list(batches)


def test_epoch_covers_every_index_once_in_range(ramp: ImageDataset) -> None:
    batches = _epoch(ramp, 0, drop_last=False)
    assert [len(y) for _, y in batches] == [3, 3, 3, 1]
    labels = torch.cat([y for _, y in batches])
    assert sorted(labels.tolist()) == list(range(10))
    assert labels.tolist() != list(range(10))  # shuffled
    x = torch.cat([x for x, _ in batches])
    assert x.dtype == torch.float32 and labels.dtype == torch.int64
    assert x.shape == (10, 3, 4, 4)
    assert x.min() >= -1.0 and x.max() <= 1.0
    assert [len(y) for _, y in _epoch(ramp, 0)] == [3, 3, 3]  # drop_last


def test_batches_are_reproducible_for_a_seed(ramp: ImageDataset) -> None:
    first, again, other = _epoch(ramp, 7), _epoch(ramp, 7), _epoch(ramp, 8)
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(first, again, strict=True))
    assert any(not torch.equal(a[0], b[0]) for a, b in zip(first, other, strict=True))


def test_hflip_flips_some_images_and_keeps_labels(ramp: ImageDataset) -> None:
    flipped = 0
    for hflip in (True, False):
        for x, y in _epoch(ramp, 3, drop_last=False, hflip=hflip):
            plain = ramp.images[y].float() / 127.5 - 1.0
            for image, original in zip(x, plain, strict=True):
                if torch.equal(image, original.flip(-1)):
                    flipped += 1
                    assert hflip
                else:
                    assert torch.equal(image, original)
    assert 0 < flipped < 10


def test_default_data_source_prefers_the_shared_archive(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(data, "REPO_ROOT", tmp_path / "main")
    assert data.default_data_source() == "cifar10"
    archive = tmp_path / "shared" / "data" / "cifar10-jpeg.tar.gz"
    archive.parent.mkdir(parents=True)
    archive.touch()
    assert data.default_data_source() == str(archive)


def test_torchvision_cifar10_is_converted_to_chw(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import torchvision.datasets

    calls = []

    class FakeCIFAR10:
        def __init__(self, root: str, train: bool, download: bool) -> None:
            calls.append((root, train, download))
            self.classes = ["a", "b"]
            self.data = np.arange(2 * 4 * 5 * 3, dtype=np.uint8).reshape(2, 4, 5, 3)  # (N, H, W, C)
            self.targets = [1, 0]

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", FakeCIFAR10)
    dataset = load_image_dataset("cifar10", "test", cache_dir=tmp_path)
    assert calls == [(str(tmp_path), False, True)]
    assert dataset.images.shape == (2, 3, 4, 5)
    assert dataset.images[1, 2, 3, 4] == FakeCIFAR10(str(tmp_path), False, True).data[1, 3, 4, 2]
    assert dataset.labels.tolist() == [1, 0] and dataset.labels.dtype == torch.int64
    assert dataset.classes == ("a", "b")


def test_archive_members_outside_the_target_are_refused(tree: Path, tmp_path: Path) -> None:
    archive = tmp_path / "evil.tar"
    with tarfile.open(archive, "w") as tar:
        tar.add(tree / "train", arcname="train")
        tar.add(tree / "test" / "cat" / "0000.png", arcname="../../escaped.png")
    with pytest.raises(tarfile.FilterError):
        load_image_dataset(archive, cache_dir=tmp_path / "cache" / "deep")
    assert not list(tmp_path.rglob("escaped.png"))
    assert not list((tmp_path / "cache" / "deep").iterdir())  # no half-extracted staging left
