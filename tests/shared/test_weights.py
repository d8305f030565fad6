from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from shared.weights import CARD_FILE, WEIGHTS_FILE, WeightsError, file_sha256, load_model_dir, save_model_dir

CARD = {"kind": "test", "nested": {"a": [1, 2, 3], "b": None}, "name": "tiny"}


def make_state() -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    return {
        "w": torch.randn(4, 3, generator=gen),
        "b": torch.randn(3, generator=gen),
        "steps": torch.tensor([7, 11], dtype=torch.int64),
    }


@pytest.fixture
def model_dir(tmp_path: Path) -> Path:
    return save_model_dir(tmp_path / "model", make_state(), CARD)


# ------------------------------------------------------------------------------------ round trip
def test_round_trip_casts_floats_to_fp16_and_keeps_ints(model_dir: Path) -> None:
    state, card = load_model_dir(model_dir)
    original = make_state()
    assert set(state) == set(original)
    for name in ("w", "b"):
        assert state[name].dtype == torch.float16
        torch.testing.assert_close(state[name], original[name].half())
    assert state["steps"].dtype == torch.int64
    assert torch.equal(state["steps"], original["steps"])
    assert card == CARD


def test_dtype_none_keeps_fp32_exactly(tmp_path: Path) -> None:
    original = make_state()
    save_model_dir(tmp_path, original, CARD, dtype=None)
    state, _ = load_model_dir(tmp_path)
    for name, tensor in original.items():
        assert state[name].dtype == tensor.dtype
        assert torch.equal(state[name], tensor)


def test_save_creates_nested_dirs_and_returns_path(tmp_path: Path) -> None:
    target = tmp_path / "a" / "b"
    out = save_model_dir(target, make_state(), CARD)
    assert out == target
    assert (target / WEIGHTS_FILE).is_file() and (target / CARD_FILE).is_file()


def test_card_is_pretty_sorted_json(model_dir: Path) -> None:
    text = (model_dir / CARD_FILE).read_text()
    assert json.loads(text) == CARD
    assert text.endswith("\n")
    assert list(json.loads(text)) == sorted(CARD)


def test_overwrite_leaves_no_tmp_files(model_dir: Path) -> None:
    new_card = {**CARD, "name": "second"}
    save_model_dir(model_dir, make_state(), new_card)
    assert sorted(p.name for p in model_dir.iterdir()) == sorted([WEIGHTS_FILE, CARD_FILE])
    assert not list(model_dir.glob("*.tmp"))
    _, card = load_model_dir(model_dir)
    assert card["name"] == "second"


def test_non_contiguous_tensors_are_saved(tmp_path: Path) -> None:
    t = torch.arange(12, dtype=torch.float32).reshape(3, 4).t()
    assert not t.is_contiguous()
    save_model_dir(tmp_path, {"t": t}, CARD, dtype=None)
    state, _ = load_model_dir(tmp_path)
    assert torch.equal(state["t"], t)


# -------------------------------------------------------------------------------------- failures
@pytest.mark.parametrize("missing", [WEIGHTS_FILE, CARD_FILE])
def test_missing_file_is_named(model_dir: Path, missing: str) -> None:
    (model_dir / missing).unlink()
    with pytest.raises(WeightsError, match=missing):
        load_model_dir(model_dir)


def test_missing_directory(tmp_path: Path) -> None:
    with pytest.raises(WeightsError, match="not found"):
        load_model_dir(tmp_path / "nope")


def test_invalid_json_card(model_dir: Path) -> None:
    (model_dir / CARD_FILE).write_text('{"kind": ')
    with pytest.raises(WeightsError, match="not valid JSON"):
        load_model_dir(model_dir)


def test_binary_card_is_a_weights_error(model_dir: Path) -> None:
    (model_dir / CARD_FILE).write_bytes(b"\xff\xfe\x00\x01garbage")
    with pytest.raises(WeightsError, match="JSON"):
        load_model_dir(model_dir)


def test_truncated_weights(model_dir: Path) -> None:
    weights = model_dir / WEIGHTS_FILE
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) - 10])
    with pytest.raises(WeightsError, match="not a readable safetensors file"):
        load_model_dir(model_dir)


@pytest.mark.parametrize("content", [b"", b"garbage, not safetensors at all", b"\x00" * 64])
def test_garbage_weights(model_dir: Path, content: bytes) -> None:
    (model_dir / WEIGHTS_FILE).write_bytes(content)
    with pytest.raises(WeightsError, match=WEIGHTS_FILE):
        load_model_dir(model_dir)


def test_weights_error_keeps_cause(model_dir: Path) -> None:
    (model_dir / WEIGHTS_FILE).write_bytes(b"junk")
    with pytest.raises(WeightsError) as info:
        load_model_dir(model_dir)
    assert info.value.__cause__ is not None


# ---------------------------------------------------------------------------------------- sha256
def test_file_sha256_matches_hashlib(model_dir: Path) -> None:
    weights = model_dir / WEIGHTS_FILE
    assert file_sha256(weights) == hashlib.sha256(weights.read_bytes()).hexdigest()


def test_file_sha256_of_multi_chunk_file(tmp_path: Path) -> None:
    data = bytes(range(256)) * 5000  # > 1 MiB: more than one read chunk
    path = tmp_path / "blob"
    path.write_bytes(data)
    assert file_sha256(path) == hashlib.sha256(data).hexdigest()
    assert file_sha256(str(path)) == file_sha256(path)


def test_sha256_tells_weights_apart(tmp_path: Path) -> None:
    a = save_model_dir(tmp_path / "a", make_state(), CARD)
    state = make_state()
    state["w"] = state["w"] + 1
    b = save_model_dir(tmp_path / "b", state, CARD)
    assert file_sha256(a / WEIGHTS_FILE) != file_sha256(b / WEIGHTS_FILE)


def test_reads_files_written_by_plain_safetensors(tmp_path: Path) -> None:
    save_file({"x": torch.ones(2)}, str(tmp_path / WEIGHTS_FILE))
    (tmp_path / CARD_FILE).write_text("{}")
    state, card = load_model_dir(tmp_path)
    assert torch.equal(state["x"], torch.ones(2)) and card == {}
