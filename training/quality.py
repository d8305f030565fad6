"""Quality probes during training: fixed-seed samples scored in the classifier's feature space.

A trainer holds a `Prober` and calls it at intervals of training compute. Its `QualityProbe` samples N
images with fixed seeds (image i: seed `seed + i`, label i % 10) from a diffusion or an energy-based
pipeline, scores FID, class agreement and per-class diversity against the CIFAR-10 test split (the
same feature space and reference as `training/evaluate.py`), and the result decides whether the run's
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
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch

from shared.classifier import load_classifier
from shared.diffusion.pipeline import DiffusionPipeline, SampleParams
from shared.ebm.pipeline import EBMPipeline
from training.data import load_image_dataset

logger = logging.getLogger(__name__)

# FID at N = 500 moves by a few units between seed sets and class agreement by about
# sqrt(0.25 / 500) = 0.022; a new export must not lose more agreement than that.
AGREEMENT_TOLERANCE = 0.02

Pipeline = DiffusionPipeline | EBMPipeline


@dataclass(frozen=True)
class ProbeSpec:
    """What a probe samples; two probes are comparable only when their specs are equal.

    For an energy-based model, sampler names its chain ("recovery" or "langevin"), steps the Langevin
    steps (per level), guidance_scale the guidance on the energy and noise_scale the factor on the
    Langevin noise (None: the card's; it shapes diversity as much as guidance does, models/README.md)."""

    n: int = 500
    sampler: str = "ddim"
    steps: int = 20
    guidance_scale: float = 3.0
    seed: int = 0
    reference_size: int = 10_000
    noise_scale: float | None = None

    def to_dict(self) -> dict[str, Any]:
        """The spec's fields; unset optional ones are left out, so specs written before they existed compare equal."""
        return {key: value for key, value in dataclasses.asdict(self).items() if value is not None}


class QualityProbe:
    """Built once per run (the classifier and the reference features); `score` per evaluation."""

    def __init__(self, spec: ProbeSpec, classifier_dir: str, data: str, data_cache: str, batch_size: int = 100) -> None:
        from training.metrics import FeatureSpaceEvaluator  # torchmetrics: only needed here

        self.spec, self.batch_size = spec, batch_size
        self.classifier = load_classifier(classifier_dir, device="cpu")
        test = load_image_dataset(data, "test", cache_dir=data_cache)
        self.evaluator = FeatureSpaceEvaluator(
            self.classifier,
            test.images[: spec.reference_size],
            reference_labels=test.labels[: spec.reference_size],
            kid_subset_size=min(spec.n, 1000),
        )
        self.classifier_sha256 = str(self.classifier.card["sha256"])  # type: ignore[index]

    def _sample(self, pipeline: Pipeline, seeds: Sequence[int], labels: Sequence[int] | None) -> torch.Tensor:
        if isinstance(pipeline, EBMPipeline):
            spec = self.spec
            params = pipeline.sample_params(
                seeds, labels, guidance_scale=spec.guidance_scale, steps=spec.steps, noise_scale=spec.noise_scale
            )
            return pipeline.sample(params)
        return pipeline.sample(
            SampleParams(
                seeds=tuple(seeds),
                sampler=self.spec.sampler,  # type: ignore[arg-type]
                steps=self.spec.steps,
                labels=None if labels is None else tuple(labels),
                guidance_scale=self.spec.guidance_scale,
            )
        )

    def samples(self, pipeline: Pipeline) -> tuple[torch.Tensor, torch.Tensor]:
        """(images in [-1, 1] on the CPU, requested labels) for the spec's fixed seeds."""
        num_classes = pipeline.config.num_classes or 1
        seeds = [self.spec.seed + i for i in range(self.spec.n)]
        labels = [i % num_classes for i in range(self.spec.n)]
        images = []
        for start in range(0, self.spec.n, self.batch_size):
            chunk = slice(start, start + self.batch_size)
            chunk_labels = labels[chunk] if pipeline.config.num_classes else None
            images.append(self._sample(pipeline, seeds[chunk], chunk_labels).cpu())
        return torch.cat(images), torch.tensor(labels)

    def score(self, pipeline: Pipeline) -> dict[str, Any]:
        """FID, class agreement, mean and worst per-class diversity (labelled models), probe spec, feature space."""
        start = time.monotonic()
        images, labels = self.samples(pipeline)
        sampling = time.monotonic() - start
        scores = self.evaluator.score(images, labels if pipeline.config.num_classes else None).to_dict()
        row = {
            "fid": round(scores["fid"], 3),
            "class_agreement": None if scores.get("class_agreement") is None else round(scores["class_agreement"], 4),
            "sampling_seconds": round(sampling, 1),
            "probe": self.spec.to_dict(),
            "classifier_sha256": self.classifier_sha256[:12],
        }
        if "diversity" in scores:
            row |= {
                "diversity": round(scores["diversity"], 4),
                "diversity_min": round(scores["diversity_min"], 4),
                "diversity_min_class": scores["diversity_min_class"],
            }
        return row


def comparable(a: dict[str, Any] | None, b: dict[str, Any] | None) -> bool:
    """True when two probe results were measured with the same spec in the same feature space."""
    if not a or not b:
        return False
    return a.get("probe") == b.get("probe") and a.get("classifier_sha256") == b.get("classifier_sha256")


def beats(new: dict[str, Any], old: dict[str, Any] | None, diversity_tolerance: float | None = None) -> bool:
    """The new weights replace the old ones: a lower FID without losing class agreement beyond noise, and
    (with `diversity_tolerance`, when both scores have it) without losing more than that of the worst
    class's diversity."""
    if not comparable(new, old):
        return old is None
    assert old is not None
    agreement_new, agreement_old = new.get("class_agreement") or 0.0, old.get("class_agreement") or 0.0
    better = new["fid"] < old["fid"] and agreement_new >= agreement_old - AGREEMENT_TOLERANCE
    worst_new, worst_old = new.get("diversity_min"), old.get("diversity_min")
    if diversity_tolerance is not None and worst_new is not None and worst_old is not None:
        better = better and worst_new >= worst_old - diversity_tolerance
    return better


# the widest vector extension decides how fast a CPU trains and samples (machines of one model name differ)
_ISA = ("amx_bf16", "avx512_bf16", "avx512f", "avx2")


def hardware(cpuinfo: str = "/proc/cpuinfo") -> str:
    """'<CPU model> (<widest ISA>), N threads' or the CUDA device name: where the images were seen."""
    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    model, flags = platform.processor() or platform.machine(), set()
    try:
        for line in Path(cpuinfo).read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
            elif line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                break
    except OSError:
        pass
    isa = next((name for name in _ISA if name in flags), None)
    return f"{model}{f' ({isa})' if isa else ''}, {torch.get_num_threads()} thread(s)"


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


def history_series(rows: Sequence[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """The history's rows as lines to draw: one per run and probe spec, sorted by images seen. Scores of
    different specs (another sampler, step count, guidance or noise) are different curves, never one line;
    where specs differ, a line's label names its spec's fields that differ (e.g. "standing (noise_scale 1.05)")."""
    probes = [row.get("probe") or {} for row in rows]
    keys: set[str] = set().union(*probes)
    varying = sorted(key for key in keys if len({str(probe.get(key)) for probe in probes}) > 1)
    series: dict[str, list[dict[str, Any]]] = {}
    for row, probe in zip(rows, probes, strict=True):
        spec = ", ".join(f"{key} {probe.get(key, '-')}" for key in varying)
        label = str(row.get("run", "run")) + (f" ({spec})" if spec else "")
        series.setdefault(label, []).append(row)
    return {label: sorted(points, key=lambda r: r["images_seen_total"]) for label, points in series.items()}


def plot_history(rows: list[dict[str, Any]], out: str | os.PathLike[str], title: str = "") -> Path | None:
    """FID and class agreement against images seen, one line per run and probe spec (`history_series`);
    None without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        logger.warning("matplotlib is not installed; no plot of %d history rows", len(rows))
        return None
    fig, (ax_fid, ax_agree) = plt.subplots(1, 2, figsize=(11, 4))
    for name, points in history_series(rows).items():
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


class Prober:
    """Scores a run's weights every `every_minutes` of training compute and exports those that beat the
    shipped ones (`beats`); every probe becomes a row of the history file, re-plotted each time.

    The trainer owns the clock (`due(seconds)`, seconds of training compute, probes excluded) and what a
    probe needs of it: `__call__(pipeline, row, export, at_seconds)` scores `pipeline` (the run's serving
    weights), writes `row` (images seen, compute, step, ...) with the score, and calls `export(quality)`
    when the weights are better and exporting is on. The shipped model's score comes from its card
    (`training.quality`), else `load_shipped(export_dir)` is probed once.
    """

    def __init__(
        self,
        spec: ProbeSpec,
        *,
        classifier: str,
        data: str,
        data_cache: str,
        export_dir: str,
        load_shipped: Callable[[str], Pipeline],
        every_minutes: float | None,
        history: str | None = None,
        run_name: str = "run",
        title: str = "",
        export_if_better: bool = False,
        diversity_tolerance: float | None = None,
    ) -> None:
        self.probe = QualityProbe(spec, classifier, data, data_cache)
        self.export_dir, self.load_shipped = export_dir, load_shipped
        self.history, self.run_name, self.title = history, run_name, title
        self.export_if_better, self.diversity_tolerance = export_if_better, diversity_tolerance
        self.interval = 60.0 * (every_minutes or 0.0)
        self.last_at = 0.0
        self._shipped: dict[str, Any] | None = None
        self._shipped_known = False
        self.exports = 0  # how many probes of this run exported

    @classmethod
    def for_run(
        cls,
        cfg: Any,
        spec: ProbeSpec,
        load_shipped: Callable[[str], Pipeline],
        title: str,
        diversity_tolerance: float | None = None,
    ) -> Prober:
        """A trainer's prober from its config's flags: classifier, data, data_cache, export, out,
        probe_every_minutes, history, run_name, export_if_better."""
        return cls(
            spec,
            classifier=cfg.classifier,
            data=cfg.data,
            data_cache=cfg.data_cache,
            export_dir=cfg.export,
            load_shipped=load_shipped,
            every_minutes=cfg.probe_every_minutes,
            history=cfg.history,
            run_name=cfg.run_name or Path(cfg.out).name,
            title=title,
            export_if_better=cfg.export_if_better,
            diversity_tolerance=diversity_tolerance,
        )

    def due(self, train_seconds: float) -> bool:
        return self.interval > 0 and train_seconds - self.last_at >= self.interval

    def shipped(self) -> dict[str, Any] | None:
        """The shipped model's score under this probe: from its card, else measured once (None: nothing shipped)."""
        if self._shipped_known:
            return self._shipped
        card_path = Path(self.export_dir) / "config.json"
        if card_path.is_file():
            quality = json.loads(card_path.read_text()).get("training", {}).get("quality")
            ours = {"probe": self.probe.spec.to_dict(), "classifier_sha256": self.probe.classifier_sha256[:12]}
            if quality and comparable(quality, ours):
                self._shipped = quality
            else:
                logger.info("probing the shipped weights in %s once (the card has no such score)", self.export_dir)
                self._shipped = self.probe.score(self.load_shipped(self.export_dir))
            logger.info("shipped: FID %.2f, class agreement %s", self._shipped["fid"], self._shipped["class_agreement"])
        self._shipped_known = True
        return self._shipped

    def __call__(
        self, pipeline: Pipeline, row: dict[str, Any], export: Callable[[dict[str, Any]], Any], at_seconds: float
    ) -> dict[str, Any]:
        """Probe now; append the row to the history; export when it beats the shipped model (and told to)."""
        self.last_at = at_seconds
        shipped = self.shipped() if self.export_if_better else None
        quality = self.probe.score(pipeline)
        exported = bool(self.export_if_better and beats(quality, shipped, self.diversity_tolerance))
        row = {"run": self.run_name, **row, **quality, "exported": exported}
        if self.history:
            append_history(self.history, row)
            plot_history(read_history(self.history), Path(self.history).with_suffix(".png"), self.title)
        logger.info(
            "probe at %d images: FID %.2f, class agreement %s, worst class diversity %s (shipped: %s)%s",
            row["images_seen_total"], quality["fid"], quality["class_agreement"], quality.get("diversity_min"),
            "none" if shipped is None else f"{shipped['fid']:.2f} / {shipped['class_agreement']}",
            "; exporting" if exported else "",
        )  # fmt: skip
        if exported:
            export(quality)
            self._shipped = quality
            self.exports += 1
        return row
