"""Item 4: how a job's cost grows: seconds per job against steps and batch size, and worker memory.

Each job is what a diffusion worker runs (`diffusion_worker.sample.generate`: sampling plus the
uint8 conversion) on the service's default pipeline. Memory is this process's resident set size
(RSS), sampled every 5 ms while the job runs: the baseline before it, the peak during it, and the
process's lifetime peak (ru_maxrss, what /metrics reports per worker).
"""

from __future__ import annotations

import logging
import resource
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from bench.sampler import seeded_unet
from diffusion_worker.sample import generate
from shared.diffusion.pipeline import DiffusionPipeline, SampleParams
from shared.diffusion.process import DiffusionConfig, GaussianDiffusion
from shared.diffusion.unet import UNetConfig

logger = logging.getLogger(__name__)
MIB = 2**20


@dataclass(frozen=True)
class CostBenchConfig:
    unet: UNetConfig = field(default_factory=lambda: UNetConfig(class_names=()))
    num_timesteps: int = 1000
    steps: tuple[int, ...] = (10, 50, 100, 200)  # DDIM steps (DDPM is the 1000-step point of the same line)
    batches: tuple[int, ...] = (1, 4, 16, 32)
    max_image_steps: int = 16 * 200  # skip grid points above this many image-steps (time budget)
    compile: bool = False


class PeakRSS:
    """Highest RSS of this process while the context is open (a 5 ms polling thread)."""

    def __init__(self, interval: float = 0.005) -> None:
        self.process, self.interval = psutil.Process(), interval
        self.peak = self.baseline = 0

    def _poll(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.process.memory_info().rss)
            time.sleep(self.interval)

    def __enter__(self) -> PeakRSS:
        self.baseline = self.peak = self.process.memory_info().rss
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.process.memory_info().rss)


def run_cost_bench(cfg: CostBenchConfig) -> dict[str, Any]:
    pipeline = DiffusionPipeline(
        seeded_unet(cfg.unet), GaussianDiffusion(DiffusionConfig(num_timesteps=cfg.num_timesteps)), compile=cfg.compile
    )
    rows = []
    for batch in cfg.batches:
        generate(pipeline, SampleParams(seeds=tuple(range(batch)), sampler="ddim", steps=2))  # warm-up
        for steps in cfg.steps:
            if batch * steps > cfg.max_image_steps:
                continue
            params = SampleParams(seeds=tuple(range(batch)), sampler="ddim", steps=steps)
            with PeakRSS() as rss:
                start = time.perf_counter()
                generate(pipeline, params)
                seconds = time.perf_counter() - start
            rows.append({
                "batch": batch,
                "steps": steps,
                "s per job": seconds,
                "s per image": seconds / batch,
                "ms per step": 1000 * seconds / steps,
                "RSS before MiB": rss.baseline / MIB,
                "peak RSS MiB": rss.peak / MIB,
                "job's extra MiB": (rss.peak - rss.baseline) / MIB,
            })  # fmt: skip
            logger.info("%s", rows[-1])
    return {"rows": rows, "max_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def plot(rows: list[dict[str, Any]], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_time, ax_mem) = plt.subplots(1, 2, figsize=(10, 4))
    for batch in sorted({r["batch"] for r in rows}):
        mine = [r for r in rows if r["batch"] == batch]
        ax_time.plot([r["steps"] for r in mine], [r["s per job"] for r in mine], marker="o", label=f"batch {batch}")
    ax_time.set(xlabel="sampling steps", ylabel="seconds per job", title="job time vs steps")
    ax_time.legend()
    ax_time.grid(alpha=0.3)
    batches = sorted({r["batch"] for r in rows})
    peaks = [max(r["peak RSS MiB"] for r in rows if r["batch"] == b) for b in batches]
    extra = [max(r["job's extra MiB"] for r in rows if r["batch"] == b) for b in batches]
    ax_mem.plot(batches, peaks, marker="o", label="peak RSS during the job")
    ax_mem.plot(batches, extra, marker="s", label="above the idle worker")
    ax_mem.set(xlabel="batch size (images per job)", ylabel="MiB", title="worker memory vs batch size")
    ax_mem.legend()
    ax_mem.grid(alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
