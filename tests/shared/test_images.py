from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from shared.images import grid_image, png_bytes, save_images, to_pil, to_uint8


def uint8_batch(b: int, size: int = 8, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (b, 3, size, size), generator=gen, dtype=torch.uint8)


def pixels(image: Image.Image) -> torch.Tensor:
    """PIL RGB -> uint8 (C, H, W)."""
    return torch.from_numpy(np.array(image.convert("RGB"))).permute(2, 0, 1)  # (C, H, W)


def test_to_uint8_endpoints_and_midpoint() -> None:
    x = torch.tensor([-1.0, 0.0, 1.0]).reshape(1, 3, 1, 1)
    out = to_uint8(x)
    assert out.dtype == torch.uint8 and out.shape == x.shape
    assert out.flatten().tolist() == [0, 128, 255]


def test_to_uint8_clamps() -> None:
    x = torch.tensor([-5.0, -1.0001, 1.0001, 7.0]).reshape(1, 1, 2, 2)
    assert to_uint8(x).flatten().tolist() == [0, 0, 255, 255]


def test_to_uint8_rounds_and_is_monotonic() -> None:
    x = torch.linspace(-1, 1, 1001).reshape(1, 1, 1, 1001)
    out = to_uint8(x).flatten().to(torch.int64)
    assert torch.all(out[1:] >= out[:-1])
    expected = ((x.flatten() + 1) * 127.5).round().to(torch.int64)
    assert torch.equal(out, expected)
    assert set(out.tolist()) == set(range(256))


def test_to_uint8_accepts_other_dtypes_and_does_not_modify_input() -> None:
    x = torch.tensor([[-2.0, 0.5]], dtype=torch.float16).reshape(1, 1, 1, 2)
    before = x.clone()
    out = to_uint8(x)
    assert out.flatten().tolist() == [0, 191]  # (0.5 + 1) * 127.5 = 191.25
    assert torch.equal(x, before)


def test_to_pil_layout() -> None:
    image = uint8_batch(1, size=4)[0]
    pil = to_pil(image)
    assert pil.size == (4, 4) and pil.mode == "RGB"
    assert torch.equal(pixels(pil), image)


@pytest.mark.parametrize(
    ("count", "nrow", "size"),
    [
        (5, None, (3 * 10 + 2, 2 * 10 + 2)),  # nrow = ceil(sqrt(5)) = 3: 3 columns, 2 rows
        (4, None, (2 * 10 + 2, 2 * 10 + 2)),
        (9, None, (3 * 10 + 2, 3 * 10 + 2)),
        (5, 5, (5 * 10 + 2, 1 * 10 + 2)),
        (6, 1, (1 * 10 + 2, 6 * 10 + 2)),
    ],
)
def test_grid_size(count: int, nrow: int | None, size: tuple[int, int]) -> None:
    grid = grid_image(uint8_batch(count), nrow=nrow, padding=2)
    assert grid.size == size
    if nrow is None:
        assert grid.size[0] == math.ceil(math.sqrt(count)) * 10 + 2


def test_grid_places_images_and_pads_white() -> None:
    batch = uint8_batch(5)
    grid = pixels(grid_image(batch, padding=2))  # (3, 22, 32)
    for k in range(5):
        row, col = divmod(k, 3)
        top, left = 2 + row * 10, 2 + col * 10
        assert torch.equal(grid[:, top : top + 8, left : left + 8], batch[k])
    assert torch.all(grid[:, :2, :] == 255)
    assert torch.all(grid[:, 12:22, 22:32] == 255)  # the empty sixth cell


def test_png_bytes_round_trip() -> None:
    image = to_pil(uint8_batch(1)[0])
    data = png_bytes(image)
    assert data.startswith(b"\x89PNG\r\n\x1a\n")
    decoded = Image.open(io.BytesIO(data))
    assert decoded.format == "PNG"
    assert torch.equal(pixels(decoded), pixels(image))


def test_save_images_writes_decodable_pngs(tmp_path: Path) -> None:
    batch = uint8_batch(3)
    paths = save_images(batch, tmp_path / "out", prefix="s")
    assert [p.name for p in paths] == ["s0.png", "s1.png", "s2.png"]
    for k, path in enumerate(paths):
        with Image.open(path) as img:
            assert img.format == "PNG" and img.size == (8, 8)
            assert torch.equal(pixels(img), batch[k])


def test_save_images_default_prefix(tmp_path: Path) -> None:
    paths = save_images(uint8_batch(2), tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["0.png", "1.png"]
    assert all(p.parent == tmp_path for p in paths)


def test_from_float_to_png(tmp_path: Path) -> None:
    x = torch.linspace(-1, 1, 3 * 8 * 8).reshape(1, 3, 8, 8)
    (path,) = save_images(to_uint8(x), tmp_path)
    with Image.open(path) as img:
        assert torch.equal(pixels(img), to_uint8(x)[0])
