"""python -m bench [--quick] [--only sampler,batching,gateway,cost] [--out BENCHMARKS.md]

Runs the benchmark suite of issue 8 and writes BENCHMARKS.md (plus raw JSON and the cost plot
under --results). `make bench` runs the full suite (about 12-15 minutes on a quiet 2-core CPU),
`make bench BENCH_ARGS=--quick` a short one (a few minutes) with fewer timed steps, a smaller cost
grid and the tiny model for the batching run; `--no-compile` skips the torch.compile contender.
`--tiny` (tests only) shrinks everything to a toy network so the plumbing runs in seconds.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import multiprocessing
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench import report
from bench.batching import BatchingBenchConfig, run_batching_bench
from bench.cost import CostBenchConfig, plot, run_cost_bench
from bench.gateway_load import GatewayBenchConfig, run_gateway_bench
from bench.sampler import SamplerBenchConfig, run_sampler_bench
from bench.time_to_quality import TimeToQualityConfig, run_time_to_quality
from shared.diffusion.unet import UNetConfig

logger = logging.getLogger("bench")
ITEMS = ("sampler", "quality", "batching", "gateway", "cost")
ROOT = Path(__file__).resolve().parent.parent
SHIPPED_DIFFUSION = ROOT / "models" / "diffusion"
TINY_UNET = UNetConfig(
    image_size=8,
    base_channels=16,
    channel_mult=(1, 2),
    num_res_blocks=1,
    attention_resolutions=(4,),
    num_heads=2,
    num_groups=8,
    dropout=0.0,
    num_classes=None,
)


def configs(mode: str, device: str, compile: bool = True, gateway: tuple[str, int] = ("granian", 1)) -> dict[str, Any]:
    """The settings of each item for mode full, quick or tiny; `gateway`: GENSERVICE_SERVER and _WORKERS of item 3."""
    server, workers = gateway
    if mode == "tiny":
        return {
            "sampler": SamplerBenchConfig(
                unet=TINY_UNET,
                num_timesteps=100,
                batches=(1, 2),
                ddim_steps=5,
                ddpm_timed_steps={2: 10},
                ddpm_rounds=2,
                ddim_rounds={1: 2},
                compile=False,
                equivalence_seeds=2,
                device=device,
            ),
            "quality": TimeToQualityConfig(SHIPPED_DIFFUSION, batches=(1, 2), ddpm_timed_steps={1: 3, 2: 3}, rounds=1),
            "batching": BatchingBenchConfig(jobs=2, steps=2, batch_max_images=(1, 2), timeout=120),
            "gateway": GatewayBenchConfig(concurrency=2, seconds=0.5),
            "cost": CostBenchConfig(unet=TINY_UNET, num_timesteps=100, steps=(2, 4), batches=(1, 2)),
        }
    quick = mode == "quick"
    cuda = device.startswith("cuda")
    return {
        "sampler": SamplerBenchConfig(
            **(
                dict(ddpm_timed_steps={1: 20, 16: 5}, ddpm_rounds=3, ddim_rounds={1: 2, 16: 1})
                if quick
                else dict(ddpm_timed_steps={}, ddpm_rounds=2, ddim_rounds={1: 3, 16: 3})
                if cuda
                else {}
            ),
            compile=compile,
            equivalence_ddpm=not quick,
            device=device,
            compile_mode="reduce-overhead" if cuda else None,
        ),
        "quality": TimeToQualityConfig(SHIPPED_DIFFUSION, ddpm_timed_steps={1: 20, 16: 4}, rounds=1)
        if quick
        else TimeToQualityConfig(SHIPPED_DIFFUSION),
        "batching": BatchingBenchConfig(steps=10 if quick else 50, weights=None if quick else SHIPPED_DIFFUSION),
        "gateway": GatewayBenchConfig(seconds=3.0 if quick else 10.0, server=server, workers=workers),
        "cost": CostBenchConfig(steps=(10, 25, 50), batches=(1, 4, 16), max_image_steps=16 * 25)
        if quick
        else CostBenchConfig(),
    }


def _cost_in_fresh_process(cfg: CostBenchConfig) -> dict[str, Any]:
    """Memory numbers mean something only in a process that holds nothing else (like a worker)."""
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        return pool.apply(run_cost_bench, (cfg,))


def run(
    items: Sequence[str],
    mode: str,
    device: str,
    out: Path,
    results_dir: Path,
    compile: bool,
    merge: bool,
    gateway: tuple[str, int] = ("granian", 1),
) -> dict[str, Any]:
    """Run the items, rewriting the report after each one, so a run cut short keeps what it measured."""
    cfg = configs(mode, device, compile, gateway)
    raw = results_dir / f"{out.stem}.json"
    results: dict[str, Any] = json.loads(raw.read_text()) if merge and raw.exists() else {}
    ran = results.setdefault("ran", {})  # item -> when and at which commit it was measured
    for item in results.get("seconds", {}):  # kept from a run that did not record it: the machine block's run
        ran.setdefault(item, {k: results.get("machine", {}).get(k) for k in ("date (UTC)", "commit")})
    results.update(mode=mode, device=device, machine=report.machine_info())
    results["have_diffusers"] = importlib.util.find_spec("diffusers") is not None
    results.setdefault("seconds", {})
    start = time.perf_counter()
    for item in items:
        item_start = time.perf_counter()
        logger.info("running %s (%s)", item, mode)
        if item == "sampler":
            results[item] = run_sampler_bench(cfg[item], results["have_diffusers"])
        elif item == "quality":
            results[item] = run_time_to_quality(cfg[item])
        elif item == "batching":
            results[item] = run_batching_bench(cfg[item])
        elif item == "gateway":
            results[item] = run_gateway_bench(cfg[item])
        elif item == "cost":
            results[item] = _cost_in_fresh_process(cfg[item])
            results[item]["plot"] = str(plot(results[item]["rows"], results_dir / "cost.png"))
        results["seconds"][item] = time.perf_counter() - item_start
        ran[item] = {k: results["machine"][k] for k in ("date (UTC)", "commit")}
        results["total_seconds"] = sum(results["seconds"].values()) if merge else time.perf_counter() - start
        results["load_average_end"] = ", ".join(f"{x:.2f}" for x in os.getloadavg())
        raw.write_text(json.dumps(results, indent=1, default=str))
        out.write_text(report.render(results, out.parent))
        logger.info("wrote %s and %s (%s done)", out, raw, item)
    return results


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="fewer timed steps and a smaller grid: a few minutes")
    p.add_argument("--no-compile", action="store_true", help="skip the torch.compile contender (saves its compilation)")
    p.add_argument("--merge", action="store_true", help="keep the items of the last run's JSON that this run skips")
    p.add_argument("--tiny", action="store_true", help=argparse.SUPPRESS)  # the tests' toy configuration
    p.add_argument("--only", default=",".join(ITEMS), help=f"comma-separated subset of {','.join(ITEMS)}")
    p.add_argument("--device", default="cpu", help="cpu or cuda (items sampler and batching)")
    p.add_argument("--gateway-server", choices=["granian", "uvicorn"], default="granian", help="item 3's server")
    p.add_argument("--gateway-workers", type=int, default=1, help="item 3's gateway processes (GENSERVICE_WORKERS)")
    p.add_argument("--out", type=Path, default=ROOT / "BENCHMARKS.md")
    p.add_argument("--results", type=Path, default=ROOT / "bench" / "results", help="raw JSON and the plot")
    args = p.parse_args(argv)
    items = [i.strip() for i in args.only.split(",") if i.strip()]
    if unknown := set(items) - set(ITEMS):
        p.error(f"unknown item(s) {sorted(unknown)}; expected some of {', '.join(ITEMS)}")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    mode = "tiny" if args.tiny else "quick" if args.quick else "full"
    args.results.mkdir(parents=True, exist_ok=True)
    results = run(items, mode, args.device, args.out, args.results, not args.no_compile, args.merge,
                  (args.gateway_server, args.gateway_workers))  # fmt: skip
    logger.info("done in %.0f s", results.get("total_seconds", 0.0))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
