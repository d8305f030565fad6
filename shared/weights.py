"""Shipped model files: weights in safetensors beside a JSON card that describes them.

A model directory holds
    model.safetensors   the inference weights (no pickle: safe to load from anywhere)
    config.json         the network config, process config, class names, training summary
Loading never needs the training code or its defaults: everything is in config.json.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import torch
from safetensors.torch import load_file, save_file
from torch import nn

logger = logging.getLogger(__name__)

M = TypeVar("M", bound=nn.Module)

WEIGHTS_FILE = "model.safetensors"
CARD_FILE = "config.json"


class WeightsError(RuntimeError):
    """A model directory is missing, incomplete or does not match its config."""


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def save_model_dir(
    directory: str | os.PathLike[str],
    state_dict: dict[str, torch.Tensor],
    card: dict[str, Any],
    *,
    dtype: torch.dtype | None = torch.float16,
) -> Path:
    """Write weights (floating tensors cast to `dtype`, None keeps them) and the card; returns the dir."""
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    tensors = {
        name: (t.detach().to(dtype) if dtype is not None and t.is_floating_point() else t.detach()).contiguous().cpu()
        for name, t in state_dict.items()
    }
    tmp = out / (WEIGHTS_FILE + ".tmp")
    save_file(tensors, str(tmp), metadata={"format": "pt"})
    tmp.chmod(0o644)  # safetensors writes 0600; a container's non-root user must read shipped weights
    os.replace(tmp, out / WEIGHTS_FILE)
    _atomic_write_bytes(out / CARD_FILE, (json.dumps(card, indent=2, sort_keys=True) + "\n").encode())
    logger.info("saved %d tensors to %s", len(tensors), out)
    return out


def load_model_dir(directory: str | os.PathLike[str]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(state_dict, card) of a model directory; raises WeightsError with what is wrong."""
    path = Path(directory)
    weights, card_path = path / WEIGHTS_FILE, path / CARD_FILE
    for needed in (weights, card_path):
        if not needed.is_file():
            raise WeightsError(f"{needed} not found: a model directory needs {WEIGHTS_FILE} and {CARD_FILE}")
    try:
        card = json.loads(card_path.read_bytes())
    except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError
        raise WeightsError(f"{card_path} is not valid JSON: {exc}") from exc
    if not isinstance(card, dict):
        raise WeightsError(f"{card_path} must hold a JSON object, not {type(card).__name__}")
    try:
        state = load_file(str(weights))
    except Exception as exc:  # safetensors raises its own error types for truncated or foreign files
        raise WeightsError(f"{weights} is not a readable safetensors file: {exc}") from exc
    return state, card


def file_sha256(path: str | os.PathLike[str]) -> str:
    """Hex SHA-256 of a file, to tell which weights a worker serves."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def from_card(directory: str | os.PathLike[str], parse: Callable[[], M]) -> M:
    """parse(), with a broken or incomplete config.json reported as a WeightsError."""
    try:
        return parse()
    except (KeyError, TypeError, ValueError) as exc:
        raise WeightsError(f"{Path(directory) / CARD_FILE} does not describe a valid model: {exc!r}") from exc


def load_network(
    directory: str | os.PathLike[str], kind: str, build: Callable[[dict[str, Any]], M]
) -> tuple[M, dict[str, Any]]:
    """Build the network its card describes, load its weights (strictly) and add the file's sha256."""
    state, card = load_model_dir(directory)
    if card.get("kind") != kind:
        raise WeightsError(f"{directory} holds a {card.get('kind')!r} model, expected {kind!r}")
    module = from_card(directory, lambda: build(card))
    expected = module.state_dict()
    state = {k: v.to(expected[k].dtype) if k in expected else v for k, v in state.items()}
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise WeightsError(f"weights in {directory} do not match its config: {exc}") from exc
    return module, {**card, "sha256": file_sha256(Path(directory) / WEIGHTS_FILE)}
