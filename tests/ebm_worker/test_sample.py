from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image

from ebm_worker.jobs import job_model
from ebm_worker.sample import build_parser, main, params_from_args
from shared.ebm.langevin import LangevinParams
from shared.ebm.pipeline import EBMPipeline
from tests.conftest import seeded_energy_net, tiny_energy_config


@pytest.fixture
def weights(tmp_path: Path) -> Path:
    EBMPipeline(seeded_energy_net(tiny_energy_config())).save_pretrained(
        tmp_path / "ebm", sampling=LangevinParams(steps=3)
    )
    return tmp_path / "ebm"


def test_flags_override_the_card_defaults(weights: Path) -> None:
    pipeline = EBMPipeline.from_pretrained(weights, device="cpu")
    args = build_parser().parse_args(["--weights", str(weights), "--n", "3", "--step-size", "0.5", "--seed", "7"])
    params = params_from_args(args, pipeline)
    assert params.langevin.steps == 3 and params.langevin.step_size == 0.5
    assert params.seeds == (7, 8, 9) and params.labels is None


def test_guidance_comes_from_the_card_unless_the_request_or_flag_sets_it(tmp_path: Path) -> None:
    EBMPipeline(seeded_energy_net(tiny_energy_config())).save_pretrained(
        tmp_path / "g", sampling=LangevinParams(steps=3), guidance_scale=3.0
    )
    pipeline = EBMPipeline.from_pretrained(tmp_path / "g", device="cpu")
    model = job_model(pipeline)
    assert model.plan({"num_images": 1, "seed": 0, "class_label": "red"}).params.guidance_scale == 3.0
    request = {"num_images": 1, "seed": 0, "class_label": "red", "guidance_scale": 1.5}
    assert model.plan(request).params.guidance_scale == 1.5
    args = build_parser().parse_args(["--weights", str(tmp_path / "g"), "--guidance-scale", "0"])
    assert params_from_args(args, pipeline).guidance_scale == 0.0
    assert params_from_args(build_parser().parse_args([]), pipeline).guidance_scale == 3.0


def test_cli_writes_a_grid_and_images_reproducibly(weights: Path, tmp_path: Path) -> None:
    for name in ("a", "b"):
        assert (
            main(
                ["--weights", str(weights), "--n", "2", "--class-label", "blue", "--out", str(tmp_path / f"{name}.png")]
            )
            == 0
        )
    assert Image.open(tmp_path / "a.png").size == (22, 12)  # 2 images of 8x8 side by side, padding 2
    for k in range(2):
        first = (tmp_path / "a_images" / f"{k}.png").read_bytes()
        assert first == (tmp_path / "b_images" / f"{k}.png").read_bytes()


def test_bad_input_exits_2_with_a_message(weights: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--weights", str(weights), "--class-label", "purple", "--out", str(tmp_path / "x.png")])
    assert exit_info.value.code == 2 and "purple" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        main(["--weights", str(tmp_path / "missing"), "--out", str(tmp_path / "x.png")])
    assert exit_info.value.code == 2 and "not found" in capsys.readouterr().err


def test_a_recovery_likelihood_job_runs_every_level_and_reports_levels_times_steps(tmp_path: Path) -> None:
    card_chain = LangevinParams(steps=3, step_size=2e-3, noise_scale=0.99, grad_clip=None, clamp=None)
    EBMPipeline(seeded_energy_net(tiny_energy_config(num_levels=4))).save_pretrained(
        tmp_path / "drl", sampling=card_chain
    )
    pipeline = EBMPipeline.from_pretrained(tmp_path / "drl", device="cpu")
    model = job_model(pipeline)
    plan = model.plan({"num_images": 2, "seed": 5, "steps": 2, "class_label": "red"})
    assert plan.params.langevin.steps == 2 and plan.steps == 2 * 4  # the request's K, at each of 4 levels
    seen: list[tuple[int, int]] = []
    images = model.generate(plan.params, lambda k, total, x: seen.append((k, total)))
    assert images.shape == (2, 3, 8, 8) and images.dtype == torch.uint8
    assert seen[-1] == (8, 8) and len(seen) == 8
