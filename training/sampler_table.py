"""Quality per network evaluation: one model, several samplers, one table.

    python -m training.sampler_table --n 1000 --threads 1                  # the default rows below
    python -m training.sampler_table --n 200 --rows ddpm-1000               # one expensive row at a smaller N

Each row runs `training.evaluate` (same seeds, labels i % 10, guidance 3, the classifier's feature space)
into runs/sampler-table/<row>/results.json; samples are cached, so a second call only scores new rows.
Other flags go to `training.evaluate` (e.g. --runtime openvino --precision bf16 --batch-size 20). A long
row is cached batch by batch: a stopped run resumes, and the same command started twice (one process per
core, each --threads 1) fills the row together, each process making the batches the other has not locked.
The table gives FID, class agreement, network evaluations per image and CPU seconds per image
(the row's sampling wall time over N, on this machine with --threads threads).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path

from shared.diffusion.process import DiffusionConfig, GaussianDiffusion
from shared.diffusion.samplers import SamplerKind, ddim_timesteps, default_spacing, edm_sigmas
from training.common import REPO_ROOT, configure_logging
from training.evaluate import main as evaluate

# name -> evaluate flags. The interval is in EDM's sigma (Kynkaanniemi et al. 2024): guidance only where
# the noise level is middling; at the other steps the unconditional pass is skipped.
INTERVAL = ("0.28", "5.42")
ROWS: dict[str, list[str]] = {
    "ddpm-1000": ["--sampler=ddpm", "--steps=1000"],
    "ddim-20": ["--sampler=ddim", "--steps=20"],
    "ddim-50": ["--sampler=ddim", "--steps=50"],
    "ddim-100": ["--sampler=ddim", "--steps=100"],
    "dpmpp_2m-10": ["--sampler=dpmpp_2m", "--steps=10"],
    "dpmpp_2m-20": ["--sampler=dpmpp_2m", "--steps=20"],
    "dpmpp_2m-10-interval": ["--sampler=dpmpp_2m", "--steps=10", "--guidance-interval", *INTERVAL],
    "dpmpp_2m-20-interval": ["--sampler=dpmpp_2m", "--steps=20", "--guidance-interval", *INTERVAL],
    "ddim-20-interval": ["--sampler=ddim", "--steps=20", "--guidance-interval", *INTERVAL],
}
DEFAULT_ROWS = [name for name in ROWS if name not in ("ddpm-1000", "ddim-100")]


def evaluations_per_image(spec: dict, process: DiffusionConfig) -> int:
    """Network evaluations per labelled image: one per step, plus one unconditional pass per guided step."""
    diffusion = GaussianDiffusion(process)
    sampler = SamplerKind(spec["sampler"])
    steps = list(range(process.num_timesteps))
    if sampler is not SamplerKind.DDPM:
        steps = ddim_timesteps(process.num_timesteps, spec["steps"], default_spacing(sampler), diffusion.alphas_cumprod)
    if spec.get("guidance_scale", 1.0) == 1.0:
        return len(steps)
    interval = spec.get("guidance_interval")
    if not interval:
        return 2 * len(steps)
    sigmas = edm_sigmas(diffusion.alphas_cumprod)[steps]
    return len(steps) + int(((sigmas > interval[0]) & (sigmas <= interval[1])).sum())


def table(out: Path, names: Sequence[str], process: DiffusionConfig) -> str:
    lines = [
        "| sampler | steps | guidance interval | N | FID (classifier) | class agreement | evaluations / image "
        "| CPU s / image |",
        "| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name in names:
        path = out / name / "results.json"
        if not path.is_file():
            continue
        result = json.loads(path.read_text())
        row, spec = result["rows"][-1], result["spec"]
        interval = spec.get("guidance_interval")
        lines.append(
            f"| {spec['sampler']} | {spec['steps']} | {'-' if not interval else tuple(interval)} | {row['n']} "
            f"| {row['fid']:.1f} | {row['class_agreement']:.3f} | {evaluations_per_image(spec, process)} "
            f"| {row['sampling_seconds'] / row['n']:.2f} |"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    configure_logging()
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", nargs="*", default=DEFAULT_ROWS, choices=list(ROWS))
    p.add_argument("--n", type=int, default=1000)
    p.add_argument("--guidance-scale", type=float, default=3.0)
    p.add_argument("--weights", default=str(REPO_ROOT / "models" / "diffusion"))
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=str(REPO_ROOT / "runs" / "sampler-table"))
    p.add_argument("--table-only", action="store_true", help="print the table of what exists")
    args, extra = p.parse_known_args(argv)
    out = Path(args.out)
    if not args.table_only:
        for name in args.rows:
            evaluate([
                "--model=diffusion", f"--weights={args.weights}", f"--n={args.n}", f"--threads={args.threads}",
                f"--guidance-scale={args.guidance_scale}", f"--out={out / name}", *ROWS[name], *extra,
            ])  # fmt: skip
    process = DiffusionConfig.from_dict(json.loads((Path(args.weights) / "config.json").read_text())["diffusion"])
    print(table(out, list(ROWS), process))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
