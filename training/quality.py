"""Quality probes during training: fixed-seed samples scored in the classifier's feature space.

The trainer calls a `QualityProbe` at intervals: it samples N images with fixed seeds (image i: seed
`seed + i`, label i % 10), scores FID and class agreement against the CIFAR-10 test split (the same
feature space and reference as `training/evaluate.py`), and the result decides whether the run's EMA
weights replace the shipped ones (`beats`). Every probe is appended to a history file (JSON lines)
that `plot_history` draws as the learning curve across every run on every machine.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import platform
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch

from shared.classifier import load_classifier
from shared.diffusion.pipeline import DiffusionPipeline, SampleParams
from training.data import load_image_dataset

logger = logging.getLogger(__name__)

# FID at N = 500 moves by a few units between seed sets and class agreement by about
# sqrt(0.25 / 500) = 0.022; a new export must not lose more agreement than that.
AGREEMENT_TOLERANCE = 0.02


@dataclass(frozen=True)
class ProbeSpec:
    """What a probe samples; two probes are comparable only when their specs are equal."""

    n: int = 500
    sampler: str = "ddim"
    steps: int = 20
    guidance_scale: float = 3.0
    seed: int = 0
    reference_size: int = 10_000

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class QualityProbe:
    """Built once per run (the classifier and the reference features); `score` per evaluation."""

    def __init__(self, spec: ProbeSpec, classifier_dir: str, data: str, data_cache: str, batch_size: int = 100) -> None:
        from training.metrics import FeatureSpaceEvaluator  # torchmetrics: only needed here

        self.spec, self.batch_size = spec, batch_size
        self.classifier = load_classifier(classifier_dir, device="cpu")
        reference = load_image_dataset(data, "test", cache_dir=data_cache).images[: spec.reference_size]
        self.evaluator = FeatureSpaceEvaluator(self.classifier, reference, kid_subset_size=min(spec.n, 1000))
        self.classifier_sha256 = str(self.classifier.card["sha256"])  # type: ignore[index]

    def samples(self, pipeline: DiffusionPipeline) -> tuple[torch.Tensor, torch.Tensor]:
        """(images in [-1, 1] on the CPU, requested labels) for the spec's fixed seeds."""
        num_classes = pipeline.config.num_classes or 1
        seeds = [self.spec.seed + i for i in range(self.spec.n)]
        labels = [i % num_classes for i in range(self.spec.n)]
        images = []
        for start in range(0, self.spec.n, self.batch_size):
            chunk = slice(start, start + self.batch_size)
            params = SampleParams(
                seeds=tuple(seeds[chunk]),
                sampler=self.spec.sampler,  # type: ignore[arg-type]
                steps=self.spec.steps,
                labels=tuple(labels[chunk]) if pipeline.config.num_classes else None,
                guidance_scale=self.spec.guidance_scale,
            )
            images.append(pipeline.sample(params).cpu())
        return torch.cat(images), torch.tensor(labels)

    def score(self, pipeline: DiffusionPipeline) -> dict[str, Any]:
        start = time.monotonic()
        images, labels = self.samples(pipeline)
        sampling = time.monotonic() - start
        scores = self.evaluator.score(images, labels if pipeline.config.num_classes else None)
        return {
            "fid": round(scores.fid, 3),
            "class_agreement": None if scores.class_agreement is None else round(scores.class_agreement, 4),
            "sampling_seconds": round(sampling, 1),
            "probe": self.spec.to_dict(),
            "classifier_sha256": self.classifier_sha256[:12],
        }


def comparable(a: dict[str, Any] | None, b: dict[str, Any] | None) -> bool:
    """True when two probe results were measured with the same spec in the same feature space."""
    if not a or not b:
        return False
    return a.get("probe") == b.get("probe") and a.get("classifier_sha256") == b.get("classifier_sha256")


def beats(new: dict[str, Any], old: dict[str, Any] | None) -> bool:
    """The new weights replace the old ones: a lower FID without losing class agreement beyond noise."""
    if not comparable(new, old):
        return old is None
    assert old is not None
    agreement_new, agreement_old = new.get("class_agreement") or 0.0, old.get("class_agreement") or 0.0
    return new["fid"] < old["fid"] and agreement_new >= agreement_old - AGREEMENT_TOLERANCE


def hardware() -> str:
    """'<CPU model>, N threads' or the CUDA device name: where the images were seen."""
    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{model}, {torch.get_num_threads()} thread(s)"


def append_history(path: str | os.PathLike[str], row: dict[str, Any]) -> None:
    """One JSON line per probe; appends are atomic enough for one writer per file."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    row = {"date": datetime.now(UTC).isoformat(timespec="seconds"), **row}
    with p.open("a") as f:
        f.write(json.dumps(row, sort_keys=True) + "\n")


def read_history(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    p = Path(path)
    if not p.is_file():
        return []
    return [json.loads(line) for line in p.read_text().splitlines() if line.strip()]


def plot_history(rows: list[dict[str, Any]], out: str | os.PathLike[str], title: str = "") -> Path | None:
    """FID and class agreement against images seen, one line per run (`run` key); None without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        logger.warning("matplotlib is not installed; no plot of %d history rows", len(rows))
        return None
    fig, (ax_fid, ax_agree) = plt.subplots(1, 2, figsize=(11, 4))
    runs: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        runs.setdefault(str(row.get("run", "run")), []).append(row)
    for name, points in runs.items():
        points = sorted(points, key=lambda r: r["images_seen_total"])
        seen = [r["images_seen_total"] / 1000 for r in points]
        ax_fid.plot(seen, [r["fid"] for r in points], marker="o", label=name)
        ax_agree.plot(seen, [r.get("class_agreement") or 0 for r in points], marker="o", label=name)
    ax_fid.set(xlabel="images seen (thousands)", ylabel="FID (classifier space, lower is better)", yscale="log")
    ax_agree.set(xlabel="images seen (thousands)", ylabel="class agreement (higher is better)", ylim=(0, 1))
    for ax in (ax_fid, ax_agree):
        ax.grid(alpha=0.3)
    ax_agree.legend(fontsize=7, loc="upper left")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
