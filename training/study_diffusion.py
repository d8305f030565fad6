"""Score a recipe study: every candidate's snapshots, one probe, one table, one plot.

    # 1. train each candidate for the same compute on one thread (two side by side), e.g.
    python -m training.train_diffusion --threads 1 --max-core-minutes 16.05 --snapshot-minutes 4,8,16 \\
        --batch-size 64 --warmup-steps 200 --out runs/study/edm-w32 --export runs/study/edm-w32/final \\
        --prediction edm --min-snr-gamma 0 --dropout 0 --lr 1e-3 --base-channels 32 --num-groups 16 \\
        --attention-resolutions '' --ema-halflife-ratio 0.05
    # 2. score every snapshot with the standing run's probe (N = 500, DDIM 20, guidance 3) and tabulate
    python -m training.study_diffusion runs/study --threads 1 --plot models/diffusion/study.png

A snapshot is `<run>/snapshots/min_NNN` (the EMA weights after NNN core-minutes of training, written by
--snapshot-minutes). Scores are cached in `<study>/probes.jsonl`, so a second call only scores new
snapshots; --only limits which snapshots are scored now (e.g. the last of an expensive candidate).
Each new score is also appended, with the hardware, to the study's record in the repository
(--record, models/diffusion/study.jsonl): the table and the plot show every candidate ever scored, on
every machine, not only those whose snapshots this machine still has.
The table also gives each candidate's serving cost: seconds for one 1000-step image at batch 1.
"""

from __future__ import annotations

import argparse
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from shared.diffusion.pipeline import DiffusionPipeline
from training.common import REPO_ROOT, configure_logging
from training.data import DEFAULT_CACHE_DIR, default_data_source
from training.quality import ProbeSpec, QualityProbe, append_history, hardware, plot_history, read_history

logger = logging.getLogger(__name__)


def snapshots(study: Path) -> list[Path]:
    return sorted(study.glob("*/snapshots/min_*"), key=lambda p: (p.parent.parent.name, p.name))


def serving_seconds(pipeline: DiffusionPipeline, evaluations: int = 20) -> float:
    """Seconds for one 1000-step image at batch 1 (measured over `evaluations` network calls, no guidance)."""
    eps = pipeline.eps_model(1.0)
    labels = torch.zeros(1, dtype=torch.long) if pipeline.config.num_classes else None
    x = torch.randn(1, 3, pipeline.config.image_size, pipeline.config.image_size)
    total = pipeline.diffusion.num_timesteps
    with torch.inference_mode():
        eps(x, torch.full((1,), total // 2), labels)  # warm-up
        start = time.perf_counter()
        for i in range(evaluations):
            eps(x, torch.full((1,), (total - 1 - i) % total), labels)
    return (time.perf_counter() - start) / evaluations * total


def markdown(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| candidate | core-minutes | images seen | FID (classifier) | class agreement | s per 1000-step image "
        "| hardware |",
        "| --- | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for r in sorted(rows, key=lambda r: (r["run"], r["core_minutes"])):
        serving = r.get("serving_seconds_1000_steps")
        lines.append(
            f"| {r['run']} | {r['core_minutes']:.0f} | {r['images_seen_total']:,} | {r['fid']:.1f} "
            f"| {r['class_agreement']:.3f} | {'-' if serving is None else f'{serving:.1f}'} "
            f"| {r.get('hardware', '-')} |"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    configure_logging()
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("study", help="folder of candidate runs (runs/study)")
    p.add_argument("--only", nargs="*", default=None, help="score only these snapshots (paths) now")
    p.add_argument("--n", type=int, default=ProbeSpec.n)
    p.add_argument("--classifier", default=str(REPO_ROOT / "models" / "classifier"))
    p.add_argument("--data", default=default_data_source())
    p.add_argument("--data-cache", default=str(DEFAULT_CACHE_DIR))
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--plot", default=None, help="PNG of FID and agreement against images seen")
    p.add_argument(
        "--record",
        default=str(REPO_ROOT / "models" / "diffusion" / "study.jsonl"),
        help="the study's record in the repository: new scores are appended; the table and plot read it",
    )
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    study = Path(args.study)
    cache = study / "probes.jsonl"
    done = {r["snapshot"] for r in read_history(cache)}
    todo = [s for s in snapshots(study) if str(s) not in done]
    if args.only is not None:
        wanted = {str(Path(o)) for o in args.only}
        todo = [s for s in todo if str(s) in wanted]
    if todo:
        probe = QualityProbe(ProbeSpec(n=args.n), args.classifier, args.data, args.data_cache)
        for snapshot in todo:
            pipeline = DiffusionPipeline.from_pretrained(snapshot, device="cpu")
            training = pipeline.card.get("training", {})
            row = {
                "run": snapshot.parent.parent.name,
                "snapshot": str(snapshot),
                "core_minutes": training.get("core_minutes"),
                "images_seen_total": training.get("images_seen_total"),
                "parameters": pipeline.card.get("parameters"),
                "serving_seconds_1000_steps": round(serving_seconds(pipeline), 2),
                **probe.score(pipeline),
                "hardware": training.get("hardware") or hardware(),  # where it trained: core-minutes differ
            }
            append_history(cache, row)
            if args.record:
                append_history(args.record, row)
            logger.info("%s: FID %.2f, agreement %s", snapshot, row["fid"], row["class_agreement"])
    rows = read_history(args.record) if args.record and Path(args.record).is_file() else read_history(cache)
    print(markdown(rows))
    if args.plot:
        plot_history(rows, args.plot, title="recipe study: equal compute on one core, N = 500, DDIM 20, guidance 3")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
