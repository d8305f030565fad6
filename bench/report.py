"""Markdown pieces of BENCHMARKS.md: machine facts and tables."""

from __future__ import annotations

import datetime as dt
import json
import math
import os
import platform
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def cpu_flags(wanted: Sequence[str] = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16")) -> list[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return []
    flags = next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), [])
    return [f for f in wanted if f in flags]


def git_commit() -> str:
    """HEAD's short hash, with "-dirty" when tracked files differ from it (the run measured other code)."""
    try:
        out = subprocess.run(["git", "describe", "--always", "--dirty", "--abbrev=7", "--exclude=*"],
                             capture_output=True, text=True, check=True)  # fmt: skip
        return out.stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def machine_info() -> dict[str, Any]:
    import torch

    info: dict[str, Any] = {
        "date (UTC)": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M"),
        "commit": git_commit(),
        "CPU": cpu_model(),
        "cores (os.cpu_count)": os.cpu_count(),
        "torch threads": torch.get_num_threads(),
        "CPU flags of note": ", ".join(cpu_flags()) or "none",
        "load average (1, 5, 15 min) at start": ", ".join(f"{x:.2f}" for x in os.getloadavg()),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "GPU": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none",
    }
    try:
        import diffusers

        info["diffusers"] = diffusers.__version__
    except ImportError:
        info["diffusers"] = "not installed"
    return info


def fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        if value == 0:
            return "0"
        if abs(value) >= 100:
            return f"{value:,.0f}"
        return f"{value:.{digits}g}"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return str(value)


def table(rows: Sequence[dict[str, Any]], columns: Sequence[str] | None = None) -> str:
    """A markdown table from dicts (columns: the first row's keys unless given)."""
    if not rows:
        return "(no rows)\n"
    columns = list(columns or rows[0].keys())
    lines = ["| " + " | ".join(columns) + " |", "| " + " | ".join("---" for _ in columns) + " |"]
    lines += ["| " + " | ".join(fmt(row.get(c)) for c in columns) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def key_values(info: dict[str, Any]) -> str:
    return table([{"": k, "value": v} for k, v in info.items()])


# --------------------------------------------------------------------------------------- render
SAMPLER_TARGET = 2.5


def _sampler_section(r: dict[str, Any], have_diffusers: bool, machine: dict[str, Any]) -> list[str]:
    out = ["## 1. Sampler throughput against diffusers\n"]
    out.append(
        "The project's DDPM (1000 steps) and DDIM (50 steps) samplers against diffusers' `DDPMPipeline` and "
        "`DDIMPipeline` on a `UNet2DModel` of the same size (widths, blocks per level, attention at 16x16 with "
        "the same heads, GroupNorm groups; seeded random weights: timing does not depend on them), same batch "
        "sizes, same step counts, one process, the contenders taking turns per row. Each pipeline runs end to "
        "end (noise, network, scheduler update, conversion to uint8/numpy). Rows whose *steps timed* is a "
        "number were stopped after that many completed steps, the same way for every contender, and "
        "extrapolated linearly to the full step count; *x diffusers* is the throughput ratio in the same row "
        "group.\n"
    )
    if not have_diffusers:
        out.append("**diffusers is not installed** (`pip install -e '.[bench]'`): no baseline in this run.\n")
    out.append(table(r["contenders"]))
    out.append(table(r["rows"]))
    best: dict[tuple[str, int], dict[str, Any]] = {}
    for row in r["rows"]:
        key = (row["sampler"], row["batch"])
        ours = row["x diffusers"] and not row["pipeline"].startswith("diffusers")
        if ours and (key not in best or row["x diffusers"] > best[key]["x diffusers"]):
            best[key] = row
    if best:
        out.append(f"\n**Target: at least {SAMPLER_TARGET}x diffusers' throughput.** Best of ours per row group:\n")
        out.append(table([
            # truncated, not rounded, to 3 decimals: 2.495 shown as 2.5 beside "no" would read as a contradiction
            {"sampler": s, "batch": b, "best pipeline": row["pipeline"],
             "x diffusers": f"{math.floor(row['x diffusers'] * 1000) / 1000:.3f}",
             "met": "yes" if row["x diffusers"] >= SAMPLER_TARGET else "no"}
            for (s, b), row in best.items()
        ]))  # fmt: skip
    flags = str(machine.get("CPU flags of note", ""))
    if "avx512_bf16" not in flags and "amx_bf16" not in flags and machine.get("GPU") == "none":
        out.append(
            "\nbf16 autocast is not among the levers here: this CPU has neither AVX512-BF16 nor AMX, so "
            "bf16 convolutions are emulated (measured 2.5x slower than fp32 on the team machine).\n"
        )
    out.append("\n### Same images: fast path against the reference path\n")
    out.append(
        "Reference: fp32, NCHW, eager. Same seeds, same weights. Where every uint8 value is identical the "
        "images are the same files, so FID (or any sample-quality metric) is unchanged; small float "
        "differences come from a different order of floating-point operations (oneDNN kernels, fusion).\n"
    )
    out.append(table(r["equivalence"]))
    out.append(
        "\nWhere every uint8 value is identical, the classifier-space FID of `training/evaluate.py` is "
        "identical too (it sees the same images); a path that is not bit-identical (compile, bf16) needs "
        "`python -m training.evaluate` on both paths before it becomes a default (bf16: models/README.md).\n"
    )
    return out


def _time_to_quality_section(r: dict[str, Any]) -> list[str]:
    out = ["### Seconds to an image of the card's quality\n"]
    out.append(
        "The shipped model (`models/diffusion`), class-conditional with the card's guidance scale: DDPM's 1000 "
        "ancestral steps on eager torch fp32 against the card's recommended sampler on torch fp32 and on the "
        "path the worker picks by itself here (`GENSERVICE_RUNTIME=auto`, `GENSERVICE_PRECISION=auto`: "
        f"{r['runtime']['engine']} {r['runtime']['precision']}, because {r['runtime']['why']}). DDPM rows are "
        "timed over their first steps and extrapolated to 1000; fastest of the rounds. FID and class agreement "
        "of each path at N = 1000 are in models/README.md.\n"
    )
    out.append(table(r["rows"]))
    return out


def _batching_section(r: dict[str, Any]) -> list[str]:
    out = ["## 2. Batching queued jobs\n"]
    out.append(
        "16 one-image DDIM jobs submitted at once through the gateway to one diffusion worker, with "
        "`GENSERVICE_BATCH_MAX_IMAGES=1` (one job at a time) and `=16` (queued jobs batched into one sampling "
        "run): wall time from the first submit to the last finish, and per-job latency (enqueue to end). "
        "*workers x threads*: one worker using every core, or (last row) one single-threaded worker per core "
        "with the same batching, so threads and processes compare on the same cores.\n"
    )
    out.append(
        "The first job starts alone on the idle worker; the 15 queued behind it are claimed together. Each "
        "batched job's images are those of an unbatched run up to floating-point rounding (at most one uint8 "
        'level; `tests/integration/test_batching.py`, README "Batching").\n'
    )
    out.append(table(r["rows"]))
    return out


def _gateway_section(r: dict[str, Any]) -> list[str]:
    out = ["## 3. Gateway under load\n"]
    out.append(
        f"One gateway (`python -m gateway` with GENSERVICE_SERVER={r.get('server', 'uvicorn')}, "
        f"GENSERVICE_WORKERS={r.get('workers', 1)}) on a real Redis, no worker (the queue "
        "only grows); the load generator is a separate process (`bench/loadgen.py`: keep-alive HTTP/1.1 on "
        "raw asyncio streams, a fixed number of connections, each sending its next request when the last "
        "answer is in). The Redis-direct rows run the gateway's own `JobStore` calls for the same operations "
        f"without HTTP from one sequential thread: the ceiling of the Redis round trips. Queue depth during the "
        f"GET phase: {r.get('queue_depth_at_get')} jobs.\n"
    )
    out.append(table(r["rows"]))
    out.append("\n**Targets (2 cores):**\n")
    out.append(table(r["verdicts"]))
    rows = {row["operation"]: row for row in r["rows"]}
    submit = next((k for k in rows if k.startswith("JobStore.submit")), "")  # "JobStore.submit" in runs before
    pairs = (("POST /generate/diffusion", submit), ("GET /jobs/{id}", "JobStore.fetch + describe (Redis direct)"))
    shares = [
        f"{http} reaches {rows[http]['req/s'] / rows[direct]['req/s']:.0%} of its Redis-direct ceiling"
        for http, direct in pairs
        if http in rows and direct in rows and rows[direct]["req/s"]
    ]
    if shares:
        out.append(
            "\n" + "; ".join(shares) + ". The difference is HTTP parsing, FastAPI routing and pydantic "
            "validation/serialisation in the gateway, on a machine whose cores also run the load generator and "
            "Redis.\n"
        )
    return out


def _gateway_ab_section(r: dict[str, Any], number: str) -> list[str]:
    out = [f"### {number}. {r.get('title', 'Gateway changes, A/B')}\n"]
    out.append(
        "`python -m bench.gateway_ab`: gateways built from different source trees, each with its own Redis, take "
        "turns (a POST phase on an empty Redis, then a GET phase on its jobs, `bench/loadgen.py` as above), round "
        "after round, so a change in the machine's load hits each alike. The ratios compare each contender with "
        "the first in the same round (median over rounds); *gateway CPU ms/request* is the CPU time the "
        "gateway's processes spent per answered request (/proc). On a busy machine, absolute req/s and latencies "
        "say what the machine allowed at the time, not what the gateway can do. "
        f"Conditions: {r.get('conditions') or '-'}\n"
    )
    out.append(key_values({k: r[k] for k in ("date (UTC)", "commit", "load average at start", "load average at end",
                                              "seconds per phase", "connections")}))  # fmt: skip
    out.append("\n" + table([{"contender": k, "source (server; environment)": v} for k, v in r["contenders"].items()]))
    out.append("\n" + table(r["rows"]))
    return out


def _cost_section(r: dict[str, Any], out_dir: Path) -> list[str]:
    out = ["## 4. Cost growth: seconds per job and worker memory\n"]
    out.append(
        "One diffusion job as the worker runs it (`diffusion_worker.sample.generate`, service default pipeline, "
        "DDIM) in a fresh process that holds nothing else; RSS sampled every 5 ms during the job. DDPM's "
        "1000 steps sit on the same line (seconds per job grow linearly with steps). Grid points above the "
        f"time budget are skipped. Lifetime peak RSS of the process (ru_maxrss): {fmt(r['max_rss_mib'])} MiB.\n"
    )
    out.append(table(r["rows"]))
    try:
        rel = Path(r["plot"]).resolve().relative_to(out_dir.resolve())
    except ValueError:
        rel = Path(r["plot"])
    out.append(f"\n![seconds per job and memory]({rel.as_posix()})\n")
    return out


def render(results: dict[str, Any], out_dir: Path) -> str:
    mode = results["mode"]
    parts = [
        "# Benchmarks\n",
        f"Generated by `python -m bench{' --quick' if mode == 'quick' else ''}` (`make bench"
        f"{' BENCH_ARGS=--quick' if mode == 'quick' else ''}`) in {results['total_seconds']:.0f} s; do not edit "
        "by hand. Mode: **" + mode + "**" + (" (fewer timed steps, smaller cost grid, tiny model for batching: "
        "indicative only)" if mode == "quick" else "") + f". Device for items 1-2: {results['device']}. Raw numbers: "
        "`bench/results/`.\n",
        "Timings on a shared machine are noisy: the load average is recorded at start and end; compare rows "
        "within one run (the contenders take turns), not across runs.\n",
        "## Machine\n",
        key_values({**results["machine"], "load average at end": results.get("load_average_end")}),
    ]  # fmt: skip
    seconds = results.get("seconds", {})
    if seconds:
        ran = results.get("ran", {})
        merged = len({json.dumps(ran.get(k), sort_keys=True) for k in seconds}) > 1  # items of different runs
        parts.append("\n" + table([
            {"item": k, "seconds": v, **({"run (UTC)": ran.get(k, {}).get("date (UTC)"),
                                          "commit": ran.get(k, {}).get("commit")} if merged else {})}
            for k, v in seconds.items()
        ]))  # fmt: skip
        if merged:
            parts.append("\nItems come from different runs (`--merge`): compare numbers within an item only.\n")
    if "sampler" in results:
        parts += _sampler_section(results["sampler"], results["have_diffusers"], results["machine"])
    if "quality" in results:
        parts += _time_to_quality_section(results["quality"])
    if "batching" in results:
        parts += _batching_section(results["batching"])
    if "gateway" in results:
        parts += _gateway_section(results["gateway"])
    ab_runs = [k for k in results if k.startswith("gateway_ab")]  # python -m bench.gateway_ab --key
    for letter, key in zip("bcdefgh", ab_runs, strict=False):  # at most seven A/B runs are shown
        parts += _gateway_ab_section(results[key], f"3{letter}")
    if "cost" in results:
        parts += _cost_section(results["cost"], out_dir)
    return "\n".join(parts)
