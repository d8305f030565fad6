"""Evaluate a generative model in the CIFAR-10 classifier's feature space: FID, KID, class agreement, diversity.

    python -m training.evaluate --model diffusion --n 1000 --sampler ddim --steps 100 --guidance-scale 3 --calibrate
    python -m training.evaluate --model diffusion --n 1000 --sampler dpmpp_2m --steps 20 --guidance-scale 3 \
        --guidance-interval 0.28 5.42
    python -m training.evaluate --model ebm --n 1000 --calibrate
    python -m training.evaluate --model diffusion --inception-weights pt_inception-2015-12-05.pth   # + standard FID

The reference set is the CIFAR-10 test split (all 10,000 images unless --reference-size). The
feature space is the shipped classifier's (models/classifier); see training/metrics.py. With
--calibrate the same script adds the rows that give every number its scale:
    real       a seeded random subset of the train split, same N: the floor (sampling error alone)
    noise      uniform noise: a ceiling
    untrained  the model's architecture and sampler with random weights: the other ceiling
Writes <out>/results.json (settings + rows) and <out>/grid-<row>.png (first 100 images; with
--class-label all each column is one class), and prints markdown tables: the summary, then per class
the diversity and the KID (and FID when every class has more samples than feature dimensions). Rows
with labels are scored per class against the test images of that class; every row also gets its
diversity over all images (the one an unconditional row has). Image i uses seed --seed + i, so every
run scores the same images; samples are cached in --cache-dir.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch

from shared.classifier import load_classifier
from shared.images import grid_image
from training.common import REPO_ROOT, configure_logging
from training.data import DEFAULT_CACHE_DIR, default_data_source, load_image_dataset
from training.sources import MODELS, SourceSpec, load_samples

logger = logging.getLogger(__name__)

CALIBRATION_ROWS = ("real", "noise", "untrained")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", choices=MODELS, default="diffusion", help="what to evaluate")
    p.add_argument("--weights", default=None, help="model directory (default models/<model>)")
    p.add_argument("--n", type=int, default=1000, help="number of images per row (default 1000)")
    p.add_argument("--sampler", choices=("ddim", "ddpm", "dpmpp_2m"), default="ddim", help="diffusion sampler")
    p.add_argument(
        "--steps", type=int, default=None, help="DDIM / DPM-Solver++ steps (default 100) or Langevin steps (card)"
    )
    p.add_argument(
        "--guidance-scale", type=float, default=None,
        help="classifier-free guidance (diffusion, default 1: none); energy guidance E(x) + w (E(x, y) - E(x)) "
        "(EBM, default: the card's)",
    )  # fmt: skip
    p.add_argument(
        "--guidance-interval", type=float, nargs=2, metavar=("SIGMA_LO", "SIGMA_HI"), default=None,
        help="guide only at steps with sigma_t in (SIGMA_LO, SIGMA_HI] (diffusion; default: every step)",
    )  # fmt: skip
    p.add_argument("--class-label", default="all", help="'all' (label i %% 10), a class name or index, or 'none'")
    p.add_argument("--seed", type=int, default=0, help="image i uses seed + i (default 0)")
    p.add_argument("--calibrate", action="store_true", help="add the real-subset, noise and untrained rows")
    p.add_argument("--untrained-of", choices=("diffusion", "ebm"), default=None, help="default: --model's")
    p.add_argument(
        "--untrained-steps",
        type=int,
        default=None,
        help="steps of the untrained row (default --steps); a fresh UNet's output layer starts at zero, so an "
        "eps-prediction UNet predicts eps = 0 and its DDIM images hardly depend on the step count (v and EDM "
        "UNets then predict a shrunk x_t instead: give them the real step count)",
    )
    p.add_argument("--classifier", default=str(REPO_ROOT / "models" / "classifier"), help="feature network")
    p.add_argument("--reference-size", type=int, default=10_000, help="test images in the reference set")
    p.add_argument("--kid-subset-size", type=int, default=1000, help="KID subset size (capped at --n)")
    p.add_argument("--inception-weights", default=None, help="local Inception-v3 weights: adds standard FID")
    p.add_argument("--data", default=default_data_source(), help="CIFAR-10 source (see training/data.py)")
    p.add_argument("--data-cache", default=str(DEFAULT_CACHE_DIR))
    p.add_argument("--cache-dir", default=str(REPO_ROOT / "runs" / "eval-cache"), help="sample cache ('' off)")
    p.add_argument("--batch-size", type=int, default=100, help="images sampled per batch")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--runtime", choices=["torch", "openvino", "auto"], default="torch",
                   help="the diffusion network's engine (shared/diffusion/runtime.py)")  # fmt: skip
    p.add_argument("--precision", choices=["fp32", "bf16", "auto"], default="fp32", help="the diffusion network's")
    p.add_argument("--out", default=None, help="output directory (default runs/eval/<model>)")
    p.add_argument("--sample-only", action="store_true", help="fill the sample cache, score nothing")
    return p


def row_specs(args: argparse.Namespace) -> list[SourceSpec]:
    """The evaluated model's row, preceded by the calibration rows when asked for."""
    untrained_of = args.untrained_of or (args.model if args.model in ("diffusion", "ebm") else "diffusion")
    common = dict(
        n=args.n,
        seed=args.seed,
        class_label=None if args.class_label == "none" else args.class_label,
        sampler=args.sampler,
        steps=args.steps,
        guidance_interval=tuple(args.guidance_interval) if args.guidance_interval else None,
        untrained_of=untrained_of,
        runtime=args.runtime,
        precision=args.precision,
        data=args.data,
        data_cache=args.data_cache,
        batch_size=args.batch_size,
        device=args.device,
    )
    names = [*CALIBRATION_ROWS, args.model] if args.calibrate else [args.model]
    names = list(dict.fromkeys(names))  # --model real --calibrate: one real row
    specs = []
    for name in names:
        diffusion_row = name == "diffusion" or (name == "untrained" and untrained_of == "diffusion")
        # no --guidance-scale: none (1.0) for diffusion rows, the card's for EBM rows (None); any other row ignores it
        guidance = 1.0 if args.guidance_scale is None and diffusion_row else args.guidance_scale
        spec = SourceSpec(
            model=name, weights=args.weights if name == args.model else None, guidance_scale=guidance, **common
        )  # type: ignore[arg-type]
        if name == "untrained" and args.untrained_steps:
            spec = dataclasses.replace(spec, steps=args.untrained_steps)
        specs.append(spec)
    return specs


def _number(value: float | None, fmt: str = ".3f") -> str:
    return "-" if value is None else format(value, fmt)


def markdown_table(rows: list[dict[str, Any]]) -> str:
    """The summary table; diversity columns: mean and minimum over classes, and over all images."""
    lines = [
        "| row | N | FID (classifier) | KID x1e3 (± std) | class agreement | diversity (mean / min class) "
        "| diversity (all images) | sampling s |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        kid = f"{1e3 * r['kid_mean']:.2f} ± {1e3 * r['kid_std']:.2f}"
        diversity = "-"
        if r.get("diversity") is not None:
            diversity = f"{r['diversity']:.3f} / {r['diversity_min']:.3f} ({r['diversity_min_class']})"
        lines.append(
            f"| {r['row']} | {r['n']} | {r['fid']:.3f} | {kid} | {_number(r.get('class_agreement'))} | {diversity} "
            f"| {_number(r.get('diversity_all'))} | {r['sampling_seconds']:.0f} |"
        )
    return "\n".join(lines)


def per_class_table(rows: list[dict[str, Any]], key: str, title: str, scale: float = 1.0) -> str:
    """One line per row that has `key` (a {class name: value} dict), one column per class; '' if none has it."""
    having = [r for r in rows if r.get(key)]
    if not having:
        return ""
    classes = list(dict.fromkeys(name for r in having for name in r[key]))
    lines = [f"| row: {title} | " + " | ".join(classes) + " |", "| --- |" + " ---: |" * len(classes)]
    for r in having:
        cells = [_number(None if r[key].get(c) is None else scale * r[key][c], ".2f") for c in classes]
        lines.append(f"| {r['row']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def report(rows: list[dict[str, Any]]) -> str:
    """The summary table, then per class: diversity, KID x1e3, and FID where every class allows it."""
    tables = [
        markdown_table(rows),
        per_class_table(rows, "diversity_per_class", "diversity"),
        per_class_table(rows, "kid_per_class", "KID x1e3", scale=1e3),
        per_class_table(rows, "fid_per_class", "FID"),
    ]
    return "\n\n".join(t for t in tables if t)


def evaluate(args: argparse.Namespace) -> dict[str, Any]:
    from training.metrics import FeatureSpaceEvaluator  # torchmetrics: only needed here

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.sample_only:
        for spec in row_specs(args):
            samples = load_samples(spec, REPO_ROOT, args.cache_dir or None)
            logger.info("%s: %d samples (%.0f s)", spec.model, samples.images.shape[0], samples.seconds)
        return {}
    out = Path(args.out or REPO_ROOT / "runs" / "eval" / args.model)
    out.mkdir(parents=True, exist_ok=True)
    classifier = load_classifier(args.classifier, device=args.device)
    test = load_image_dataset(args.data, "test", cache_dir=args.data_cache)
    reference = test.images[: args.reference_size]
    start = time.monotonic()
    evaluator = FeatureSpaceEvaluator(
        classifier,
        reference,
        reference_labels=test.labels[: args.reference_size],
        kid_subset_size=args.kid_subset_size,
        seed=args.seed,
        inception_weights=args.inception_weights,
    )
    logger.info("reference features of %d test images in %.1f s", reference.shape[0], time.monotonic() - start)
    rows = []
    for spec in row_specs(args):
        samples = load_samples(spec, REPO_ROOT, args.cache_dir or None)
        start = time.monotonic()
        scores = evaluator.score(samples.images, samples.labels)
        row = {
            "row": spec.model,
            **scores.to_dict(),
            "sampling_seconds": round(samples.seconds, 1),
            "scoring_seconds": round(time.monotonic() - start, 1),
            "source": samples.info,
        }
        rows.append(row)
        logger.info("%s: %s", spec.model, {k: v for k, v in row.items() if k != "source"})
        grid_image(samples.images[:100], nrow=10).save(out / f"grid-{spec.model}.png")
    result = {
        "settings": {k: v for k, v in vars(args).items() if k not in ("data_cache", "cache_dir")},
        "spec": dataclasses.asdict(row_specs(args)[-1]),
        "feature_space": {
            "classifier": args.classifier,
            "classifier_sha256": classifier.card["sha256"],  # type: ignore[index]
            "classifier_test_accuracy": classifier.card.get("training", {}).get("test_accuracy"),  # type: ignore[union-attr]
            "dims": classifier.config.feature_dim,
            "per_class": "diversity and KID per class for labelled rows; FID per class only when every class has "
            "more samples and reference images than dims (see training/metrics.py)",
        },
        "reference": f"CIFAR-10 test split, first {reference.shape[0]} images ({Path(args.data).name})",
        "rows": rows,
        "finished_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    (out / "results.json").write_text(json.dumps(result, indent=2) + "\n")
    print(report(rows))
    logger.info("wrote %s", out / "results.json")
    return result


def main(argv: Sequence[str] | None = None) -> int:
    configure_logging()
    evaluate(build_parser().parse_args(argv))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
