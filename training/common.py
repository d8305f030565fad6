"""What every trainer shares: CLI from a config dataclass, EMA, time budget, checkpoints, RNG state.

The diffusion and EBM trainers use these pieces; only their models, losses and sample grids differ.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import itertools
import json
import logging
import os
import shutil
import signal
import threading
import time
import types
import typing
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel

from training.data import DEFAULT_CACHE_DIR, ImageDataset, default_data_source, iterate_batches, load_image_dataset

logger = logging.getLogger(__name__)

C = TypeVar("C")
REPO_ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class RunConfig:
    """The flags every image trainer shares; each trainer's config adds its model's and sets its defaults."""

    # data and files
    data: str = field(default_factory=default_data_source)
    data_cache: str = str(DEFAULT_CACHE_DIR)
    out: str = "runs/model"
    export: str = str(REPO_ROOT / "models" / "model")
    resume: str | None = None
    overwrite_export: bool = False
    # length of the run
    epochs: int = 1
    batch_size: int = 64
    max_minutes: float | None = None
    max_steps: int | None = None
    # hardware and reproducibility
    device: str = "auto"
    seed: int = 0


RUN_HELP = {
    "data": "'cifar10' (torchvision download), an ImageFolder directory, or a .tar.gz of one",
    "data_cache": "where archives are extracted and decoded images cached",
    "out": "run directory: checkpoint.pt and samples/",
    "export": "where the inference weights (safetensors + config.json) are written",
    "resume": "a run directory / checkpoint.pt (exact continuation) or a model directory (warm start)",
    "overwrite_export": "replace the exported model even if it was trained on more images than this run",
    "max_minutes": "stop cleanly (checkpoint + export) after this much wall time",
    "max_steps": "stop after this many optimiser steps in total",
    "device": "auto (cuda, mps, cpu) or a torch device name",
}


class DivergenceError(RuntimeError):
    """Training produced non-finite values (or diverged beyond recovery); nothing is exported."""


def all_finite(module: nn.Module) -> bool:
    """True when every parameter and buffer of `module` is finite."""
    return all(
        bool(torch.isfinite(t).all()) for t in [*module.parameters(), *module.buffers()] if t.is_floating_point()
    )


CHECKPOINT_FILE = "checkpoint.pt"


# ------------------------------------------------------------------------- CLI from a dataclass
def _parse_tuple(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.replace(" ", "").split(",") if part)


def _field_type(cls: type, field: dataclasses.Field[Any]) -> Any:
    hint = typing.get_type_hints(cls)[field.name]
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if typing.get_origin(hint) in (typing.Union, types.UnionType) and len(args) == 1:
        return args[0]  # Optional[X] -> X
    return hint


def add_dataclass_arguments(parser: argparse.ArgumentParser, cls: type, help_texts: dict[str, str]) -> None:
    """One --flag per field of `cls`, typed and defaulted from the dataclass itself."""
    for spec in dataclasses.fields(cls):
        flag = "--" + spec.name.replace("_", "-")
        kind = _field_type(cls, spec)
        default = spec.default_factory() if spec.default is dataclasses.MISSING else spec.default  # type: ignore[misc]
        text = help_texts.get(spec.name, "")
        if kind is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=default, help=text)
        elif typing.get_origin(kind) is tuple:
            shown = ",".join(str(v) for v in default)
            parser.add_argument(flag, type=_parse_tuple, default=default, help=f"{text} (default {shown})")
        else:
            parser.add_argument(flag, type=kind, default=default, help=f"{text} (default {default})")


def dataclass_from_args(cls: type[C], args: argparse.Namespace) -> C:
    return cls(**{f.name: getattr(args, f.name) for f in dataclasses.fields(cls)})  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------------- EMA
def ema_with_warmup(decay: float) -> Callable[[list[torch.Tensor], list[torch.Tensor], torch.Tensor], None]:
    """EMA update for `AveragedModel(multi_avg_fn=...)` with the decay warm-up min(decay, (1 + n) / (10 + n)).

    Early averages would otherwise be dominated by the random initialisation (Tarvainen & Valpola 2017;
    the warm-up form is TensorFlow's ExponentialMovingAverage with num_updates).
    """

    @torch.no_grad()
    def update(ema_params: list[torch.Tensor], params: list[torch.Tensor], num_averaged: torch.Tensor) -> None:
        n = float(num_averaged)
        weight = 1.0 - min(decay, (1.0 + n) / (10.0 + n))
        torch._foreach_lerp_(ema_params, params, weight)

    return update


def ema_with_halflife(
    batch_size: int, ratio: float, max_images: float
) -> Callable[[list[torch.Tensor], list[torch.Tensor], torch.Tensor], None]:
    """EMA whose half-life grows with the images seen: min(max_images, ratio * images seen).

    Karras et al. 2022 ("Elucidating the Design Space...", Appendix F.3, their training code's
    ema_halflife_kimg = 500 with ema_rampup_ratio = 0.05): beta = 0.5 ** (batch / half-life). Early in a
    run the average covers only the last few percent of training, so short runs stay sharp; a fixed
    decay of 0.9999 averages over 10,000 steps, more than a CPU run of a few thousand steps has.
    """

    @torch.no_grad()
    def update(ema_params: list[torch.Tensor], params: list[torch.Tensor], num_averaged: torch.Tensor) -> None:
        images_seen = (float(num_averaged) + 1.0) * batch_size
        halflife = max(min(max_images, ratio * images_seen), 1e-8)
        beta = 0.5 ** (batch_size / halflife)
        torch._foreach_lerp_(ema_params, params, 1.0 - beta)

    return update


def make_ema(model: nn.Module, decay: float, halflife: tuple[int, float, float] | None = None) -> AveragedModel:
    """EMA of `model`: a fixed decay with warm-up, or with `halflife` = (batch, ratio, max images) EDM's rule."""
    update = ema_with_halflife(*halflife) if halflife else ema_with_warmup(decay)
    return AveragedModel(model, multi_avg_fn=update, use_buffers=True)


# ------------------------------------------------------------------------------------ time budget
class Budget:
    """Stops a run after `max_minutes` of wall time (None: no limit)."""

    def __init__(self, max_minutes: float | None) -> None:
        self.start = time.monotonic()
        self.limit = None if max_minutes is None or max_minutes <= 0 else max_minutes * 60.0

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.start

    def exhausted(self) -> bool:
        return self.limit is not None and self.elapsed >= self.limit


class StopSignalError(Exception):
    """SIGTERM (or SIGINT) arrived: the trainer checkpoints and exits like at the end of its budget."""


@contextlib.contextmanager
def stop_on_signals() -> Iterator[None]:
    """Turn SIGTERM and SIGINT into `StopSignalError` inside the block (main thread only), restoring the handlers after.

    `kill PID` or Ctrl-C on a background run then loses no more than the current step.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, _frame: object) -> None:
        raise StopSignalError(signal.Signals(signum).name)

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


# ------------------------------------------------------------------------------------ checkpoints
def rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(directory: str | os.PathLike[str], state: dict[str, Any]) -> Path:
    """Write a training checkpoint atomically (a crash mid-write keeps the previous one)."""
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    path = out / CHECKPOINT_FILE
    tmp = path.with_name(path.name + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)
    return path


def load_checkpoint(path: str | os.PathLike[str]) -> dict[str, Any]:
    """A training checkpoint (file or run directory); `weights_only=True`, so no code runs on load."""
    p = Path(path)
    if p.is_dir():
        p = p / CHECKPOINT_FILE
    if not p.is_file():
        raise FileNotFoundError(f"no training checkpoint at {p}")
    return torch.load(p, map_location="cpu", weights_only=True)


def is_checkpoint(path: str | os.PathLike[str]) -> bool:
    p = Path(path)
    return (p / CHECKPOINT_FILE).is_file() if p.is_dir() else p.suffix == ".pt"


def warmup_lambda(warmup_steps: int) -> Callable[[int], float]:
    """Linear learning-rate warm-up over `warmup_steps`, then constant (Ho et al. 2020 used 5000)."""
    return lambda step: min(1.0, (step + 1) / max(1, warmup_steps))


def configure_logging(level: int = logging.INFO) -> None:
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


# ------------------------------------------------------------------------------------------ data
def load_training_data(source: str, cache_dir: str, device: torch.device) -> ImageDataset:
    """The train split; on CUDA the whole uint8 set moves to the GPU, so there is no loader bottleneck."""
    dataset = load_image_dataset(source, "train", cache_dir=cache_dir)
    if device.type == "cuda":
        dataset = ImageDataset(dataset.images.to(device), dataset.labels.to(device), dataset.classes)
    return dataset


def steps_in_an_epoch(dataset: ImageDataset, batch_size: int) -> int:
    """Full batches per epoch (the last partial batch is dropped); a batch larger than the data is an error."""
    steps = len(dataset) // batch_size
    if steps == 0:
        raise ValueError(f"batch size {batch_size} is larger than the dataset ({len(dataset)} images)")
    return steps


def epochs_of_batches(
    dataset: ImageDataset, batch_size: int, seed: int, device: torch.device, current_step: Callable[[], int]
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Endless (x in [-1, 1], labels) batches with random flips, epoch after epoch.

    Epoch e is shuffled by a generator seeded with (seed, e), and each epoch starts at the batch that
    `current_step()` says comes next, so a resumed run sees exactly the batches an uninterrupted one would.
    """
    steps_per_epoch = steps_in_an_epoch(dataset, batch_size)
    while True:
        epoch, done = divmod(current_step(), steps_per_epoch)
        generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
        batches = iterate_batches(dataset, batch_size, generator=generator, device=device)
        yield from itertools.islice(batches, done, None)


def replaces_better_model(export_dir: str | os.PathLike[str], images_seen_total: int) -> bool:
    """True when export_dir already holds a model whose card says it saw more images than this run's.

    The trainers then keep the shipped weights (a short or interrupted fresh run must not replace a
    longer-trained model) unless told --overwrite-export.
    """
    card_path = Path(export_dir) / "config.json"
    if not card_path.is_file():
        return False
    try:
        previous = json.loads(card_path.read_text()).get("training", {}).get("images_seen_total", 0)
    except (ValueError, AttributeError):
        return False
    return int(previous or 0) > images_seen_total


def export_run(
    cfg: RunConfig, result: dict[str, Any], grid: Path, save: Callable[[str], Path], what: str = "weights"
) -> dict[str, Any]:
    """`save(cfg.export)` and the run's sample grid as samples.png beside it, unless the export directory
    holds a model trained on more images (`replaces_better_model`) and --overwrite-export is off.
    Returns the result with "exported" set."""
    if replaces_better_model(cfg.export, result["images_seen_total"]) and not cfg.overwrite_export:
        logger.warning(
            "%s holds a model trained on more images than this run (%d); kept it. The weights of this run are "
            "in %s; --overwrite-export replaces the shipped ones.", cfg.export, result["images_seen_total"], cfg.out,
        )  # fmt: skip
        return {**result, "exported": False}
    exported = save(cfg.export)
    shutil.copyfile(grid, exported / "samples.png")
    logger.info("exported %s to %s (samples: %s)", what, exported, grid)
    return {**result, "exported": True}
