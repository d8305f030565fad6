"""training/sampler_table.py: evaluations per image from the sampler, steps and interval; the table's rows."""

from __future__ import annotations

import json
from pathlib import Path

from shared.diffusion.process import DiffusionConfig
from training.sampler_table import evaluations_per_image, table


def test_evaluations_count_the_unconditional_pass_only_where_guidance_acts() -> None:
    process = DiffusionConfig()
    assert evaluations_per_image({"sampler": "ddpm", "steps": 1000, "guidance_scale": 3.0}, process) == 2000
    assert evaluations_per_image({"sampler": "ddim", "steps": 20, "guidance_scale": 1.0}, process) == 20
    assert evaluations_per_image({"sampler": "dpmpp_2m", "steps": 10, "guidance_scale": 3.0}, process) == 20
    wide = {"sampler": "dpmpp_2m", "steps": 10, "guidance_scale": 3.0, "guidance_interval": [0.0, 1e6]}
    assert evaluations_per_image(wide, process) == 20  # every step inside: the same as no interval
    narrow = {**wide, "guidance_interval": [0.28, 5.42]}
    assert 10 < evaluations_per_image(narrow, process) < 20


def test_the_table_has_a_row_per_result(tmp_path: Path) -> None:
    spec = {"sampler": "dpmpp_2m", "steps": 10, "guidance_scale": 3.0, "guidance_interval": None}
    row = {"n": 100, "fid": 55.25, "class_agreement": 0.5, "sampling_seconds": 40.0}
    (tmp_path / "dpmpp_2m-10").mkdir()
    (tmp_path / "dpmpp_2m-10" / "results.json").write_text(json.dumps({"spec": spec, "rows": [row]}))
    lines = table(tmp_path, ["dpmpp_2m-10", "ddim-20"], DiffusionConfig()).splitlines()
    assert len(lines) == 3  # header, rule, the one row that exists
    assert lines[-1] == "| dpmpp_2m | 10 | - | 100 | 55.2 | 0.500 | 20 | 0.40 |"
