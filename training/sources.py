"""Where evaluated images come from: a generative model, the train split, noise, or an untrained network.

Every source returns uint8 images (N, 3, H, W), what a user would download, and the requested labels
(None when unconditional). Image i always uses seed `seed + i` and label `labels[i]`, so a row is the
same on every run and any image can be re-made alone.

Samples are cached under `cache_dir` as safetensors keyed by everything that determines them
(weights sha256, sampler settings, seeds, labels), so a later run, e.g. with a retrained classifier,
scores the same images without sampling again. While a model's row is being sampled, each finished
batch is kept in `<key>.partial/` (`BatchStore`): a long row (a 1000-step DDPM row takes hours on
this CPU) that is stopped resumes from its last finished batch, and reports the sampling time of all
its batches, not of its last session. Several processes can fill one row together (one per core: run the
same command twice): each batch is made by whichever process locks it first, and each process then waits
for the batches the others hold.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from filelock import FileLock, Timeout
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from tqdm import tqdm

from shared.diffusion.export import EXPORT_FORM
from shared.diffusion.pipeline import DiffusionPipeline, SampleParams
from shared.diffusion.unet import UNet
from shared.ebm.energy import EnergyNet
from shared.ebm.pipeline import EBMPipeline, EBMSampleParams
from shared.images import to_uint8
from shared.seeding import make_generators, rand_per_sample, seeds_from
from shared.weights import CARD_FILE, WEIGHTS_FILE, file_sha256
from training.data import load_image_dataset

logger = logging.getLogger(__name__)

MODELS = ("diffusion", "ebm", "real", "noise", "untrained")


@dataclass(frozen=True)
class SourceSpec:
    """What to evaluate and how to sample it (the evaluate.py flags that shape the images)."""

    model: str = "diffusion"
    n: int = 1000
    seed: int = 0
    class_label: str | None = "all"  # "all": label i % num_classes; a name or index; None: unconditional
    weights: str | None = None  # model directory; default models/<model>
    sampler: str = "ddim"
    steps: int | None = None  # DDIM / DPM-Solver++ steps (diffusion) or Langevin steps (EBM); None: the default
    guidance_scale: float | None = 1.0  # None: the model card's (EBM)
    guidance_interval: tuple[float, float] | None = None  # (sigma_lo, sigma_hi]: guide only there (diffusion)
    untrained_of: str = "diffusion"  # the architecture the 'untrained' row samples with random weights
    data: str = ""
    data_cache: str = ""
    batch_size: int = 100
    device: str = "cpu"
    runtime: str = "torch"  # the diffusion network's engine and precision (shared/diffusion/runtime.py)
    precision: str = "fp32"

    def __post_init__(self) -> None:
        if self.model not in MODELS:
            raise ValueError(f"model must be one of {MODELS}, got {self.model!r}")
        if self.untrained_of not in ("diffusion", "ebm"):
            raise ValueError(f"untrained_of must be 'diffusion' or 'ebm', got {self.untrained_of!r}")
        if self.n < 2:
            raise ValueError(f"n must be >= 2, got {self.n}")


@dataclass(frozen=True)
class Samples:
    images: torch.Tensor  # uint8 (N, 3, H, W)
    labels: torch.Tensor | None  # int64 (N,) requested classes, or None
    seconds: float  # sampling wall time (when first made)
    info: dict[str, Any]  # what made them: weights sha256, sampler settings


def requested_labels(class_label: str | None, n: int, num_classes: int | None, resolve: Callable) -> list[int | None]:
    if class_label is None or num_classes is None:
        return [None] * n
    if class_label == "all":
        return [k % num_classes for k in range(n)]
    return [resolve(class_label)] * n


@dataclass
class BatchStore:
    """The finished batches of one row, on disk: a stopped row resumes from its last finished batch.

    A batch being made is locked (`filelock`: an OS lock, released by the kernel if its process dies, so a
    killed run leaves no stale claim); a second process on the same row skips it and makes the next free
    one. `seconds` adds up the sampling time of every batch of the row, whichever run made it, so a row's
    seconds per image stay those of one process even when several filled it."""

    row: Path  # the finished row's file; its batches live in `<row>.partial/` until it is written
    seconds: float = 0.0
    resumed: int = 0  # batches found on disk, made by an earlier run or another process

    @property
    def directory(self) -> Path:
        return self.row.with_suffix(".partial")

    def get(self, chunk: slice, make: Callable[[], torch.Tensor], wait: bool = True) -> torch.Tensor | None:
        """The uint8 images of `chunk`: from disk, else `make()`d, timed and written before returning.

        With `wait=False`, None when another process is making this batch now."""
        path = self.directory / f"{chunk.start:07d}-{chunk.stop:07d}.safetensors"
        lock = FileLock(path.with_suffix(".lock"))
        while True:
            if (found := self._finished(path, chunk)) is not None:
                return found
            self.directory.mkdir(parents=True, exist_ok=True)
            try:
                lock.acquire(timeout=-1 if wait else 0)  # waiting: until its maker writes it, or dies
                break
            except Timeout:
                return None
            except FileNotFoundError:  # another process finished the row and removed its batches just now
                continue
        try:
            if (found := self._finished(path, chunk)) is not None:  # made while we waited for the lock
                return found
            start = time.monotonic()
            images = make()
            seconds = time.monotonic() - start
            partial = path.with_suffix(".tmp")
            save_file({"images": images.contiguous()}, str(partial), metadata={"seconds": repr(seconds)})
            partial.replace(path)  # a batch file is whole or absent, even if the run is killed while writing
            self.seconds += seconds
            return images
        finally:
            lock.release()

    def _finished(self, path: Path, chunk: slice) -> torch.Tensor | None:
        try:
            with safe_open(str(path), framework="pt") as f:
                seconds, images = float(f.metadata()["seconds"]), f.get_tensor("images")
        except (FileNotFoundError, SafetensorError):  # not made yet, or removed since: the row is whole
            pass
        else:
            self.seconds += seconds
            self.resumed += 1
            return images
        if self.row.is_file():  # another process finished the whole row (and removed the batches)
            with safe_open(str(self.row), framework="pt") as f:
                whole = json.loads(f.metadata()["info"])["seconds"]
                rows = f.get_slice("images")
                total = rows.get_shape()[0]
                images = rows[chunk.start : chunk.stop]
            self.seconds += whole * (chunk.stop - chunk.start) / total
            self.resumed += 1
            return images
        return None


def _in_batches(
    n: int,
    batch_size: int,
    seed: int,
    desc: str,
    make: Callable[[tuple[int, ...], slice], torch.Tensor],
    store: BatchStore | None = None,
) -> torch.Tensor:
    seeds = seeds_from(seed, n)
    chunks = [slice(start, min(n, start + batch_size)) for start in range(0, n, batch_size)]

    def one(chunk: slice) -> Callable[[], torch.Tensor]:
        return lambda: to_uint8(make(seeds[chunk], chunk))

    out: dict[int, torch.Tensor | None] = {}
    for chunk in tqdm(chunks, desc=desc, unit="batch", mininterval=10):
        out[chunk.start] = one(chunk)() if store is None else store.get(chunk, one(chunk), wait=False)
    held = [chunk for chunk in chunks if out[chunk.start] is None]
    if held:  # only with a store: batches another process was making; wait for each
        assert store is not None
        logger.info("%s: waiting for %d batches another process is making", desc, len(held))
        for chunk in held:
            out[chunk.start] = store.get(chunk, one(chunk))
    if store is not None and store.resumed:
        logger.info("%s: %d of %d batches came from %s", desc, store.resumed, len(chunks), store.directory)
    return torch.cat([out[chunk.start] for chunk in chunks])  # type: ignore[misc]


def _diffusion(
    spec: SourceSpec, pipeline: DiffusionPipeline, store: BatchStore | None = None
) -> tuple[torch.Tensor, list, dict]:
    labels = requested_labels(spec.class_label, spec.n, pipeline.config.num_classes, pipeline.resolve_label)
    steps = spec.steps or (pipeline.diffusion.num_timesteps if spec.sampler == "ddpm" else 100)
    params: dict[str, Any] = dict(sampler=spec.sampler, steps=steps, guidance_scale=spec.guidance_scale)
    if spec.guidance_interval is not None:
        params["guidance_interval"] = tuple(spec.guidance_interval)

    def make(seeds: tuple[int, ...], chunk: slice) -> torch.Tensor:
        return pipeline.sample(SampleParams(seeds=seeds, labels=tuple(labels[chunk]), **params))  # type: ignore[arg-type]

    images = _in_batches(spec.n, spec.batch_size, spec.seed, spec.model, make, store)
    return images, labels, {**params, "runtime": pipeline.runtime.describe()}


def _ebm(spec: SourceSpec, pipeline: EBMPipeline, store: BatchStore | None = None) -> tuple[torch.Tensor, list, dict]:
    labels = requested_labels(spec.class_label, spec.n, pipeline.config.num_classes, pipeline.resolve_label)

    def params(seeds: tuple[int, ...], chunk: slice) -> EBMSampleParams:  # the card's chain and guidance
        return pipeline.sample_params(
            seeds, labels[chunk], guidance_scale=spec.guidance_scale, steps=spec.steps or None
        )

    first = params((0,), slice(0, 1))
    info = {
        "langevin": {**dataclasses.asdict(first.langevin), "clamp": list(first.langevin.clamp or ())},
        "guidance_scale": first.guidance_scale,
    }

    def make(seeds: tuple[int, ...], chunk: slice) -> torch.Tensor:
        return pipeline.sample(params(seeds, chunk))

    images = _in_batches(spec.n, spec.batch_size, spec.seed, spec.model, make, store)
    return images, labels, info


def _untrained(spec: SourceSpec, directory: str, store: BatchStore | None = None) -> tuple[torch.Tensor, list, dict]:
    """The trained model's architecture and sampler with freshly initialised weights (seeded)."""
    torch.manual_seed(spec.seed)
    if spec.untrained_of == "diffusion":
        trained = DiffusionPipeline.from_pretrained(directory, device=spec.device)
        unet = UNet(trained.config).to(trained.device)
        images, labels, params = _diffusion(spec, DiffusionPipeline(unet, trained.diffusion), store)
    else:
        trained_ebm = EBMPipeline.from_pretrained(directory, device=spec.device)
        net = EnergyNet(trained_ebm.config).to(trained_ebm.device)
        images, labels, params = _ebm(spec, EBMPipeline(net, trained_ebm.card), store)
    return images, labels, {**params, "init_seed": spec.seed, "architecture_of": directory}


def _real(spec: SourceSpec) -> tuple[torch.Tensor, list, dict]:
    """A fixed random subset of the train split (seeded), with its true labels."""
    train = load_image_dataset(spec.data, "train", cache_dir=spec.data_cache)
    index = torch.randperm(len(train), generator=torch.Generator().manual_seed(spec.seed))[: spec.n]
    return train.images[index], train.labels[index].tolist(), {"split": "train", "subset_seed": spec.seed}


def _noise(spec: SourceSpec, num_classes: int) -> tuple[torch.Tensor, list, dict]:
    """Uniform noise in [-1, 1], one seeded generator per image; labels as requested (chance agreement)."""
    x = rand_per_sample(make_generators(seeds_from(spec.seed, spec.n)), (3, 32, 32)) * 2 - 1
    labels = requested_labels(spec.class_label, spec.n, num_classes, int)
    return to_uint8(x), labels, {"distribution": "uniform[-1, 1]"}


def default_weights(model: str, repo_root: Path) -> str:
    return str(repo_root / "models" / model)


def _weights_sha(directory: str) -> str:
    return file_sha256(Path(directory) / WEIGHTS_FILE)


def make_samples(
    spec: SourceSpec, repo_root: Path, num_classes: int = 10, store: BatchStore | None = None
) -> tuple[torch.Tensor, list, dict]:
    """Images, requested labels and what made them, for any source; model rows keep their batches in `store`."""
    model = spec.untrained_of if spec.model == "untrained" else spec.model
    directory = spec.weights or default_weights(model, repo_root)
    if spec.model == "diffusion":
        pipeline = DiffusionPipeline.from_pretrained(
            directory, device=spec.device, runtime=spec.runtime, precision=spec.precision
        )
        result = _diffusion(spec, pipeline, store)
    elif spec.model == "ebm":
        result = _ebm(spec, EBMPipeline.from_pretrained(directory, device=spec.device), store)
    elif spec.model == "untrained":
        result = _untrained(spec, directory, store)
    elif spec.model == "real":
        return _real(spec)
    else:
        return _noise(spec, num_classes)
    images, labels, params = result
    return images, labels, {**params, "weights": directory, "weights_sha256": _weights_sha(directory)}


def cache_key(spec: SourceSpec, repo_root: Path) -> str:
    fields = {k: v for k, v in dataclasses.asdict(spec).items() if k not in ("batch_size", "device", "data_cache")}
    runtime = fields.get("runtime")
    for name, default in (("guidance_interval", None), ("runtime", "torch"), ("precision", "fp32")):
        if fields.get(name) == default:  # keys made before the field existed stay valid
            fields.pop(name, None)
    if runtime in ("openvino", "auto"):  # OpenVINO runs the export form: a new form is new images
        fields["export_form"] = EXPORT_FORM
    if spec.model in ("diffusion", "ebm", "untrained"):
        model = spec.untrained_of if spec.model == "untrained" else spec.model
        directory = spec.weights or default_weights(model, repo_root)
        card = json.loads((Path(directory) / CARD_FILE).read_text())
        fields["weights"] = None  # the hashes name the weights: a copy in another folder reuses their samples
        if spec.model == "untrained":
            # random weights of the card's network and chain: a new export of the same architecture (another
            # `training` block and weights file) makes the same images, so it keeps the same key
            architecture = {k: v for k, v in card.items() if k not in ("training", "sha256")}
            encoded = json.dumps(architecture, sort_keys=True).encode()
            fields["architecture_sha256"] = hashlib.sha256(encoded).hexdigest()
        else:
            fields["sha256"] = _weights_sha(directory)
            # the card too: its sampling block (e.g. the EBM's serving chain) shapes the images as much as the weights
            fields["card_sha256"] = file_sha256(Path(directory) / CARD_FILE)
        if model == "ebm":  # the guidance the chain runs (None: the card's), under a name older keys never had
            default = card.get("sampling", {}).get("guidance_scale", 1.0)
            fields["energy_guidance"] = default if fields.pop("guidance_scale") is None else spec.guidance_scale
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:16]


def load_samples(spec: SourceSpec, repo_root: Path, cache_dir: str | None) -> Samples:
    """The source's samples, from the cache when the same spec (and weights) made them before."""
    path = Path(cache_dir) / f"{spec.model}-{spec.n}-{cache_key(spec, repo_root)}.safetensors" if cache_dir else None
    if path is not None and path.is_file():
        with safe_open(str(path), framework="pt") as f:
            meta = json.loads(f.metadata()["info"])
            labels = f.get_tensor("labels") if "labels" in f.keys() else None  # noqa: SIM118
            logger.info("%s: %d cached samples from %s", spec.model, spec.n, path)
            return Samples(f.get_tensor("images"), labels, meta["seconds"], meta["info"])
    store = BatchStore(path) if path is not None else None
    start = time.monotonic()
    images, labels, info = make_samples(spec, repo_root, store=store)
    seconds = store.seconds if store is not None and store.seconds > 0 else time.monotonic() - start
    label_tensor = None if labels[0] is None else torch.tensor(labels, dtype=torch.int64)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tensors = {"images": images.contiguous()} | ({"labels": label_tensor} if label_tensor is not None else {})
        # written whole, then renamed: other runs (processes or threads) may be reading or writing it too
        partial = path.with_name(f"{path.name}.{os.getpid()}-{threading.get_ident()}.tmp")
        save_file(tensors, str(partial), metadata={"info": json.dumps({"seconds": seconds, "info": info})})
        partial.replace(path)
        shutil.rmtree(path.with_suffix(".partial"), ignore_errors=True)  # the whole row is in `path` now
    return Samples(images, label_tensor, seconds, info)
