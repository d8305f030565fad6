from __future__ import annotations

import argparse
from pathlib import Path

import pytest
import torch
from PIL import Image

from diffusion_worker import sample as sample_module
from diffusion_worker.sample import build_parser, generate, labels_for, main, params_from_args, seeds_from
from shared.diffusion.pipeline import DiffusionPipeline, SampleParams
from shared.diffusion.process import DiffusionConfig, GaussianDiffusion
from shared.diffusion.samplers import SamplerKind, StepCallback
from shared.weights import CARD_FILE, WEIGHTS_FILE
from tests.conftest import seeded_unet, tiny_unet_config


@pytest.fixture
def weights_dir(tiny_pipeline: DiffusionPipeline, tmp_path: Path) -> Path:
    return tiny_pipeline.save_pretrained(tmp_path / "weights", dtype=torch.float32)


def cli(weights: Path, out: Path, *extra: str) -> list[str]:
    return ["--weights", str(weights), "--device", "cpu", "--out", str(out), *extra]


def args_for(*argv: str) -> argparse.Namespace:
    return build_parser().parse_args(list(argv))


def png_pixels(path: Path) -> tuple[tuple[int, int], bytes]:
    with Image.open(path) as img:
        assert img.format == "PNG"
        return img.size, img.convert("RGB").tobytes()


# --------------------------------------------------------------------------------------- helpers
def test_seeds_from() -> None:
    assert seeds_from(10, 3) == (10, 11, 12)
    assert seeds_from(0, 1) == (0,)
    assert seeds_from(5, 0) == ()


def test_labels_for(tiny_pipeline: DiffusionPipeline) -> None:
    assert labels_for(tiny_pipeline, None, 4) is None
    assert labels_for(tiny_pipeline, "all", 7) == (0, 1, 2, 0, 1, 2, 0)
    assert labels_for(tiny_pipeline, "green", 3) == (1, 1, 1)
    assert labels_for(tiny_pipeline, "2", 2) == (2, 2)
    with pytest.raises(ValueError, match="red, green, blue"):
        labels_for(tiny_pipeline, "cat", 2)


def test_labels_for_unconditional_model() -> None:
    unet = seeded_unet(tiny_unet_config(num_classes=None, class_names=()))
    pipeline = DiffusionPipeline(unet, GaussianDiffusion(DiffusionConfig(num_timesteps=100)))
    assert labels_for(pipeline, None, 2) is None
    for label in ("all", "0"):
        with pytest.raises(ValueError, match="unconditional"):
            labels_for(pipeline, label, 2)


def test_params_pick_sampler_from_steps(tiny_pipeline: DiffusionPipeline) -> None:
    auto_ddim = params_from_args(args_for("--n", "3", "--steps", "5", "--seed", "7"), tiny_pipeline)
    assert auto_ddim.sampler is SamplerKind.DDIM and auto_ddim.steps == 5
    assert auto_ddim.seeds == (7, 8, 9) and auto_ddim.labels is None
    auto_ddpm = params_from_args(args_for("--steps", "100"), tiny_pipeline)
    assert auto_ddpm.sampler is SamplerKind.DDPM
    forced = params_from_args(args_for("--steps", "100", "--sampler", "ddim"), tiny_pipeline)
    assert forced.sampler is SamplerKind.DDIM


def test_without_sampling_flags_the_cards_recommended_sampling_is_used(
    tiny_pipeline: DiffusionPipeline, tmp_path: Path
) -> None:
    recommended = {"sampler": "dpmpp_2m", "steps": 12, "guidance_scale": 2.5, "guidance_interval": [0.2, 9.0]}
    directory = tiny_pipeline.save_pretrained(tmp_path / "w", dtype=torch.float32, sampling=recommended)
    pipeline = DiffusionPipeline.from_pretrained(directory, device="cpu")
    assert pipeline.card["sampling"] == recommended
    params = params_from_args(args_for("--n", "2", "--class-label", "red"), pipeline)
    assert (params.sampler, params.steps, params.guidance_scale) == (SamplerKind.DPMPP_2M, 12, 2.5)
    assert params.guidance_interval == (0.2, 9.0)
    # a flag of the user's wins; --steps or --sampler means "not the card's recommendation"
    assert params_from_args(args_for("--guidance-scale", "1"), pipeline).guidance_interval is None
    explicit = params_from_args(args_for("--steps", "100"), pipeline)
    assert (explicit.sampler, explicit.guidance_scale, explicit.guidance_interval) == (SamplerKind.DDPM, 1.0, None)
    # a card without the block: the service's default, the 1000-step (here 100-step) DDPM without guidance
    plain = params_from_args(args_for(), tiny_pipeline)
    assert (plain.sampler, plain.steps, plain.guidance_scale) == (SamplerKind.DDPM, 100, 1.0)


def test_params_carry_every_option(tiny_pipeline: DiffusionPipeline) -> None:
    args = args_for(
        "--n", "2", "--steps", "10", "--eta", "0.3", "--spacing", "quadratic",
        "--class-label", "blue", "--guidance-scale", "2.5",
    )  # fmt: skip
    params = params_from_args(args, tiny_pipeline)
    assert params == SampleParams(
        seeds=(0, 1), sampler="ddim", steps=10, eta=0.3, spacing="quadratic", labels=(2, 2), guidance_scale=2.5
    )


def test_params_carry_dpmpp_2m_and_a_guidance_interval(tiny_pipeline: DiffusionPipeline) -> None:
    args = args_for("--n", "2", "--steps", "8", "--sampler", "dpmpp_2m", "--class-label", "red", "--guidance-scale",
                    "3", "--guidance-interval", "0.5", "4")  # fmt: skip
    params = params_from_args(args, tiny_pipeline)
    assert params.sampler is SamplerKind.DPMPP_2M and params.guidance_interval == (0.5, 4.0)
    assert params.spacing is None  # the sampler's own: logsnr for dpmpp_2m


def test_params_reject_a_reversed_guidance_interval(tiny_pipeline: DiffusionPipeline) -> None:
    with pytest.raises(ValueError, match="guidance_interval"):
        params_from_args(args_for("--steps", "8", "--guidance-interval", "4", "0.5"), tiny_pipeline)


def test_worker_request_carries_dpmpp_2m_and_the_interval(tiny_pipeline: DiffusionPipeline) -> None:
    from diffusion_worker.jobs import params_from_request

    request = {"num_images": 2, "steps": 8, "seed": 5, "sampler": "dpmpp_2m", "class_label": "1",
               "guidance_scale": 2.0, "guidance_interval": [0.1, 3]}  # fmt: skip
    params = params_from_request(tiny_pipeline, request)
    assert params == SampleParams(seeds=(5, 6), sampler="dpmpp_2m", steps=8, labels=(1, 1), guidance_scale=2.0,
                                  guidance_interval=(0.1, 3.0))  # fmt: skip
    assert params_from_request(tiny_pipeline, {**request, "guidance_interval": None}).guidance_interval is None


def test_main_samples_with_dpmpp_2m(weights_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "dpm.png"
    assert main(cli(weights_dir, out, "--n", "2", "--steps", "6", "--sampler", "dpmpp_2m", "--class-label", "all",
                    "--guidance-scale", "2", "--guidance-interval", "0.2", "5", "--seed", "4")) == 0  # fmt: skip
    pipeline = DiffusionPipeline.from_pretrained(weights_dir, device="cpu")
    expected = generate(pipeline, SampleParams(seeds=(4, 5), sampler="dpmpp_2m", steps=6, labels=(0, 1),
                                               guidance_scale=2.0, guidance_interval=(0.2, 5.0)))  # fmt: skip
    for k in range(2):  # the same path and batch shape: the same bytes
        assert png_pixels(tmp_path / "dpm_images" / f"{k}.png")[1] == expected[k].permute(1, 2, 0).numpy().tobytes()


def test_params_reject_short_ddpm(tiny_pipeline: DiffusionPipeline) -> None:
    with pytest.raises(ValueError, match="ddim"):
        params_from_args(args_for("--sampler", "ddpm", "--steps", "5"), tiny_pipeline)


def test_generate_returns_uint8(tiny_pipeline: DiffusionPipeline) -> None:
    params = SampleParams(seeds=(0, 1), sampler="ddim", steps=3)
    images = generate(tiny_pipeline, params)
    assert images.dtype == torch.uint8 and images.shape == (2, 3, 8, 8) and images.device.type == "cpu"
    expected = ((tiny_pipeline.sample(params) + 1) * 127.5).round().to(torch.uint8)
    assert torch.equal(images, expected)
    assert images.float().std() > 5


def test_generate_reports_progress(tiny_pipeline: DiffusionPipeline) -> None:
    steps: list[int] = []
    generate(tiny_pipeline, SampleParams(seeds=(0,), sampler="ddim", steps=4), lambda s, n, x0: steps.append(s))
    assert steps == [1, 2, 3, 4]


# ------------------------------------------------------------------------------------------- CLI
def test_main_writes_grid_and_images(weights_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "run" / "grid.png"
    assert main(cli(weights_dir, out, "--n", "4", "--steps", "5")) == 0
    size, _ = png_pixels(out)
    assert size == (2 * 10 + 2, 2 * 10 + 2)  # 2 x 2 grid of 8x8 images, padding 2
    images_dir = tmp_path / "run" / "grid_images"
    assert sorted(p.name for p in images_dir.iterdir()) == ["0.png", "1.png", "2.png", "3.png"]
    for k in range(4):
        assert png_pixels(images_dir / f"{k}.png")[0] == (8, 8)


def test_main_images_match_generate(weights_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "grid.png"
    main(cli(weights_dir, out, "--n", "2", "--steps", "5", "--seed", "3", "--images-dir", str(tmp_path / "imgs")))
    pipeline = DiffusionPipeline.from_pretrained(weights_dir, device="cpu")
    expected = generate(pipeline, SampleParams(seeds=(3, 4), sampler="ddim", steps=5))
    for k in range(2):
        _, data = png_pixels(tmp_path / "imgs" / f"{k}.png")
        assert data == expected[k].permute(1, 2, 0).contiguous().numpy().tobytes()


def test_main_is_reproducible(weights_dir: Path, tmp_path: Path) -> None:
    a, b, c = tmp_path / "a" / "g.png", tmp_path / "b" / "g.png", tmp_path / "c" / "g.png"
    main(cli(weights_dir, a, "--n", "3", "--steps", "5", "--seed", "42"))
    main(cli(weights_dir, b, "--n", "3", "--steps", "5", "--seed", "42"))
    main(cli(weights_dir, c, "--n", "3", "--steps", "5", "--seed", "43"))
    assert a.read_bytes() == b.read_bytes()
    for k in range(3):
        assert (a.parent / "g_images" / f"{k}.png").read_bytes() == (b.parent / "g_images" / f"{k}.png").read_bytes()
    assert a.read_bytes() != c.read_bytes()
    # image k of seed 42 is image k - 1 of seed 43
    assert (a.parent / "g_images" / "1.png").read_bytes() == (c.parent / "g_images" / "0.png").read_bytes()


def test_main_class_label_all_cycles(weights_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[SampleParams] = []

    def spy(pipeline: DiffusionPipeline, params: SampleParams, callback: StepCallback | None = None) -> torch.Tensor:
        seen.append(params)
        return generate(pipeline, params, callback)

    monkeypatch.setattr(sample_module, "generate", spy)
    cycled = tmp_path / "all" / "g.png"
    main(cli(weights_dir, cycled, "--n", "5", "--steps", "5", "--class-label", "all"))
    assert seen[0].labels == (0, 1, 2, 0, 1)
    # every cycled image is the image that a fixed-label run makes for the same seed
    for label in (0, 1, 2):
        fixed = tmp_path / f"fixed{label}" / "g.png"
        main(cli(weights_dir, fixed, "--n", "5", "--steps", "5", "--class-label", str(label)))
        assert seen[-1].labels == (label,) * 5
        for k in range(label, 5, 3):
            cycled_png = (cycled.parent / "g_images" / f"{k}.png").read_bytes()
            assert cycled_png == (fixed.parent / "g_images" / f"{k}.png").read_bytes()


def test_main_short_ddpm_is_a_usage_error(
    weights_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "grid.png"
    with pytest.raises(SystemExit) as info:
        main(cli(weights_dir, out, "--sampler", "ddpm", "--steps", "5"))
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "error:" in err and "ddim" in err
    assert not out.exists()


def test_main_missing_weights(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(cli(tmp_path / "absent", tmp_path / "grid.png", "--n", "1", "--steps", "5"))
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert WEIGHTS_FILE in err and "not found" in err


def test_main_missing_card(weights_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (weights_dir / CARD_FILE).unlink()
    with pytest.raises(SystemExit) as info:
        main(cli(weights_dir, tmp_path / "grid.png", "--n", "1", "--steps", "5"))
    assert info.value.code == 2
    assert CARD_FILE in capsys.readouterr().err


def test_main_unknown_class(weights_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(cli(weights_dir, tmp_path / "grid.png", "--n", "1", "--steps", "5", "--class-label", "cat"))
    assert info.value.code == 2
    assert "red, green, blue" in capsys.readouterr().err


def test_main_rejects_bad_choice(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["--sampler", "euler"])
    assert info.value.code == 2
    assert "ddpm" in capsys.readouterr().err


@pytest.mark.parametrize("extra", [("--steps", "500"), ("--steps", "0"), ("--eta", "-1", "--steps", "5")])
def test_main_invalid_sampling_options_are_usage_errors(
    weights_dir: Path, tmp_path: Path, extra: tuple[str, ...]
) -> None:
    with pytest.raises(SystemExit) as info:
        main(cli(weights_dir, tmp_path / "grid.png", "--n", "1", *extra))
    assert info.value.code == 2
