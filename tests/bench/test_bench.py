"""The benchmark suite's plumbing in a toy configuration: it runs and writes its report. No timing assertions."""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path
from typing import Any

import pytest
import torch

from bench import report
from bench.__main__ import main
from bench.batching import BatchingBenchConfig, measure_batching
from bench.sampler import compare, seeded_unet
from shared.diffusion.pipeline import DiffusionPipeline
from shared.diffusion.unet import UNetConfig
from shared.weights import count_parameters

HAVE_DIFFUSERS = importlib.util.find_spec("diffusers") is not None


@pytest.mark.slow
def test_tiny_suite_writes_every_table(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out, results = tmp_path / "BENCHMARKS.md", tmp_path / "results"
    assert main(["--tiny", "--only", "sampler,quality,gateway,cost", "--out", str(out), "--results", str(results)]) == 0
    text = out.read_text()
    for heading in ("## Machine", "## 1. Sampler", "### Same images", "## 3. Gateway under load", "## 4. Cost"):
        assert heading in text
    assert "## 2. Batching" not in text  # not asked for
    assert "| torch |" in text and "| CPU |" in text
    raw = json.loads((results / "BENCHMARKS.json").read_text())
    pipelines = {row["pipeline"] for row in raw["sampler"]["rows"]}
    assert any(p.startswith("ours") for p in pipelines)
    assert any(p.startswith("diffusers") for p in pipelines) == HAVE_DIFFUSERS
    assert {row["sampler"] for row in raw["sampler"]["rows"]} == {"DDPM 100 steps", "DDIM 5 steps"}
    equivalence = {row["path"]: row for row in raw["sampler"]["equivalence"]}
    assert all(row["max uint8 diff"] <= 1 for path, row in equivalence.items() if "bf16" not in path)
    assert equivalence["service default (channels_last)"]["identical uint8 values"] == 1.0
    assert "OpenVINO fp32" in equivalence and "OpenVINO bf16" in equivalence
    quality = raw["quality"]["rows"]
    assert [(r["batch"], r["x DDPM 1000 fp32"]) for r in quality][:1] == [(1, 1.0)]
    assert all(r["x DDPM 1000 fp32"] > 5 for r in quality if "dpmpp_2m" in r["path"])  # 20 steps against 1000
    gateway = {row["operation"]: row for row in raw["gateway"]["rows"]}
    assert gateway["POST /generate/diffusion"]["statuses"].startswith("202:")
    assert gateway["GET /jobs/{id}"]["statuses"].startswith("200:")
    assert len(raw["gateway"]["verdicts"]) == 2
    assert {(r["batch"], r["steps"]) for r in raw["cost"]["rows"]} == {(1, 2), (1, 4), (2, 2), (2, 4)}
    assert (results / "cost.png").stat().st_size > 1000
    assert "](results/cost.png)" in text
    assert "Items come from different runs" not in text  # one run
    # one item again with --merge: the others are kept, and the report says which run measured each
    later = {**raw["machine"], "date (UTC)": "2099-01-01 00:00"}
    monkeypatch.setattr(report, "machine_info", lambda: later)
    assert main(["--tiny", "--only", "quality", "--merge", "--out", str(out), "--results", str(results)]) == 0
    merged = json.loads((results / "BENCHMARKS.json").read_text())
    assert merged["ran"]["quality"]["date (UTC)"] == "2099-01-01 00:00"
    assert merged["ran"]["cost"] == raw["ran"]["cost"] == {k: raw["machine"][k] for k in ("date (UTC)", "commit")}
    assert merged["cost"] == raw["cost"]
    text = out.read_text()
    assert "Items come from different runs" in text and "| cost |" in text and "2099-01-01 00:00" in text


def test_batching_section_tabulates_both_settings() -> None:
    rows: list[dict[str, Any]] = [
        {"GENSERVICE_BATCH_MAX_IMAGES": n, "jobs": 16, "wall s": wall} for n, wall in ((1, 30.0), (16, 18.0))
    ]
    text = "\n".join(report._batching_section({"rows": rows}))
    assert "| GENSERVICE_BATCH_MAX_IMAGES |" in text and "up to floating-point rounding" in text
    assert text.count("| 16 |") >= 1 and "30" in text and "18" in text


@pytest.mark.slow
def test_batching_measurement_runs_queued_jobs_together_only_when_allowed() -> None:
    cfg = BatchingBenchConfig(jobs=5, steps=20)
    alone, batched = (measure_batching(cfg, n) for n in (1, 16))
    assert alone["finished"] == batched["finished"] == 5
    assert alone["largest run (jobs)"] == 1
    assert batched["largest run (jobs)"] > 1  # the jobs queued behind the first shared a run
    assert batched["median job latency s"] is not None and batched["wall s"] > 0
    assert alone["workers x threads"] == f"1 x {os.cpu_count() or 1}" and alone["workers that ran jobs"] == 1


@pytest.mark.slow
def test_the_batching_measurement_can_split_the_cores_between_workers() -> None:
    split = measure_batching(BatchingBenchConfig(jobs=6, steps=20), 16, workers=2)
    assert split["finished"] == 6
    assert split["workers x threads"] == f"2 x {max(1, (os.cpu_count() or 1) // 2)}"
    assert 1 <= split["workers that ran jobs"] <= 2


def test_unknown_item_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["--only", "sampler,nope"])
    assert "nope" in capsys.readouterr().err


@pytest.mark.skipif(not HAVE_DIFFUSERS, reason="diffusers is a benchmark-only dependency (pip install -e '.[bench]')")
def test_diffusers_baseline_has_our_size() -> None:
    from bench.sampler import diffusers_unet

    config = UNetConfig(num_classes=None)
    theirs = sum(p.numel() for p in diffusers_unet(config).parameters())
    assert theirs == count_parameters(seeded_unet(config))


def test_compare_counts_identical_pixels() -> None:
    import torch

    a = torch.zeros(1, 3, 2, 2)
    b = a.clone()
    b[0, 0, 0, 0] = 0.5
    result = compare(a, b)
    assert result["max abs diff in [-1, 1]"] == 0.5
    assert result["identical uint8 values"] == pytest.approx(11 / 12)


def test_solver_error_prints_a_row_per_sampler_and_spacing(
    tiny_pipeline: DiffusionPipeline, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from bench import solver_error

    weights = tiny_pipeline.save_pretrained(tmp_path / "w", dtype=torch.float32)
    assert (
        solver_error.main(["--weights", str(weights), "--steps", "4", "--reference-steps", "20", "--seeds", "2"]) == 0
    )
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| 4 |")]
    assert len(rows) == 6  # DDIM and DPM-Solver++(2M), three spacings each
    errors = [float(row.split("|")[4]) for row in rows]
    assert all(0 < e < 1 for e in errors)  # a few steps are close to, but not at, the reference
