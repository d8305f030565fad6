from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from shared.diffusion.pipeline import MODEL_KIND, DiffusionPipeline, SampleParams
from shared.diffusion.process import DiffusionConfig, GaussianDiffusion
from shared.diffusion.samplers import SamplerKind, Spacing, VarianceKind
from shared.diffusion.unet import UNet, UNetConfig
from shared.weights import CARD_FILE, WEIGHTS_FILE, WeightsError, count_parameters, file_sha256
from tests.conftest import TINY_CLASSES, seeded_unet, tiny_unet_config


def ddim(seeds: tuple[int, ...] = (0, 1), **kw: Any) -> SampleParams:
    return SampleParams(seeds=seeds, sampler="ddim", steps=kw.pop("steps", 4), **kw)


def probe_outputs(unet: UNet) -> torch.Tensor:
    gen = torch.Generator().manual_seed(123)
    x = torch.randn(4, 3, 8, 8, generator=gen)
    t = torch.tensor([0, 10, 50, 99])
    labels = torch.tensor([0, 1, 2, 3]) if unet.config.num_classes is not None else None
    with torch.no_grad():
        return unet(x, t, labels)


@pytest.fixture
def saved_fp32(tiny_pipeline: DiffusionPipeline, tmp_path: Path) -> Path:
    return tiny_pipeline.save_pretrained(tmp_path / "fp32", training={"steps": 5}, dtype=torch.float32)


@pytest.fixture
def unconditional() -> DiffusionPipeline:
    unet = seeded_unet(tiny_unet_config(num_classes=None, class_names=()))
    return DiffusionPipeline(unet, GaussianDiffusion(DiffusionConfig(num_timesteps=100)))


def edit_card(directory: Path, **changes: Any) -> None:
    path = directory / CARD_FILE
    card = json.loads(path.read_text())
    card.update(changes)
    path.write_text(json.dumps(card))


# ----------------------------------------------------------------------------------- persistence
def test_fp32_round_trip_is_exact(tiny_pipeline: DiffusionPipeline, saved_fp32: Path) -> None:
    loaded = DiffusionPipeline.from_pretrained(saved_fp32, device="cpu")
    assert loaded.config == tiny_pipeline.config
    assert loaded.diffusion.config == tiny_pipeline.diffusion.config
    assert loaded.device.type == "cpu"
    assert not loaded.unet.training
    assert torch.equal(probe_outputs(loaded.unet), probe_outputs(tiny_pipeline.unet))
    params = ddim()
    assert torch.equal(loaded.sample(params), tiny_pipeline.sample(params))


def test_fp16_round_trip_is_close(tiny_pipeline: DiffusionPipeline, tmp_path: Path) -> None:
    directory = tiny_pipeline.save_pretrained(tmp_path / "fp16")
    loaded = DiffusionPipeline.from_pretrained(directory, device="cpu")
    assert all(p.dtype == torch.float32 for p in loaded.unet.parameters())
    expected = probe_outputs(tiny_pipeline.unet)
    got = probe_outputs(loaded.unet)
    assert not torch.equal(got, expected)  # the weights really were rounded
    torch.testing.assert_close(got, expected, atol=1e-2, rtol=1e-2)


def test_fp16_file_is_smaller(tiny_pipeline: DiffusionPipeline, tmp_path: Path, saved_fp32: Path) -> None:
    half = tiny_pipeline.save_pretrained(tmp_path / "fp16")
    assert (half / WEIGHTS_FILE).stat().st_size < (saved_fp32 / WEIGHTS_FILE).stat().st_size


def test_card_contents(tiny_pipeline: DiffusionPipeline, saved_fp32: Path) -> None:
    card = json.loads((saved_fp32 / CARD_FILE).read_text())
    assert card["kind"] == MODEL_KIND
    assert UNetConfig.from_dict(card["unet"]) == tiny_pipeline.config
    assert card["unet"]["class_names"] == list(TINY_CLASSES)
    assert DiffusionConfig.from_dict(card["diffusion"]) == tiny_pipeline.diffusion.config
    assert card["diffusion"]["num_timesteps"] == 100
    assert card["parameters"] == count_parameters(tiny_pipeline.unet)
    assert card["training"] == {"steps": 5}
    assert "sha256" not in card


def test_from_pretrained_adds_sha256(saved_fp32: Path) -> None:
    loaded = DiffusionPipeline.from_pretrained(saved_fp32, device="cpu")
    assert loaded.card["sha256"] == file_sha256(saved_fp32 / WEIGHTS_FILE)
    assert loaded.card["training"] == {"steps": 5}
    assert loaded.card["kind"] == MODEL_KIND


def test_training_summary_carried_over_on_resave(saved_fp32: Path, tmp_path: Path) -> None:
    loaded = DiffusionPipeline.from_pretrained(saved_fp32, device="cpu")
    again = loaded.save_pretrained(tmp_path / "again")
    card = json.loads((again / CARD_FILE).read_text())
    assert card["training"] == {"steps": 5} and "sha256" not in card


def test_unconditional_round_trip(unconditional: DiffusionPipeline, tmp_path: Path) -> None:
    directory = unconditional.save_pretrained(tmp_path / "u", dtype=torch.float32)
    loaded = DiffusionPipeline.from_pretrained(directory, device="cpu")
    assert loaded.config.num_classes is None
    assert torch.equal(probe_outputs(loaded.unet), probe_outputs(unconditional.unet))


@pytest.mark.parametrize("kind", ["ebm", None])
def test_wrong_kind_rejected(saved_fp32: Path, kind: str | None) -> None:
    edit_card(saved_fp32, kind=kind)
    with pytest.raises(WeightsError, match=MODEL_KIND):
        DiffusionPipeline.from_pretrained(saved_fp32, device="cpu")


def test_config_not_matching_weights_rejected(saved_fp32: Path) -> None:
    edit_card(saved_fp32, unet=tiny_unet_config(base_channels=16).to_dict())
    with pytest.raises(WeightsError, match="do not match"):
        DiffusionPipeline.from_pretrained(saved_fp32, device="cpu")


def test_missing_layer_rejected(saved_fp32: Path) -> None:
    edit_card(saved_fp32, unet=tiny_unet_config(num_res_blocks=2).to_dict())
    with pytest.raises(WeightsError, match="do not match"):
        DiffusionPipeline.from_pretrained(saved_fp32, device="cpu")


def test_incomplete_card_is_a_weights_error(saved_fp32: Path) -> None:
    card = json.loads((saved_fp32 / CARD_FILE).read_text())
    del card["unet"]
    (saved_fp32 / CARD_FILE).write_text(json.dumps(card))
    with pytest.raises(WeightsError, match="unet"):
        DiffusionPipeline.from_pretrained(saved_fp32, device="cpu")


def test_missing_directory_rejected(tmp_path: Path) -> None:
    with pytest.raises(WeightsError, match=WEIGHTS_FILE):
        DiffusionPipeline.from_pretrained(tmp_path / "nothing", device="cpu")


# ---------------------------------------------------------------------------------------- labels
@pytest.mark.parametrize(
    ("label", "index"),
    [("red", 0), ("green", 1), ("blue", 2), (0, 0), (2, 2), ("1", 1), ("2", 2), (None, None)],
)
def test_resolve_label(tiny_pipeline: DiffusionPipeline, label: int | str | None, index: int | None) -> None:
    assert tiny_pipeline.resolve_label(label) == index


def test_unknown_name_lists_choices(tiny_pipeline: DiffusionPipeline) -> None:
    with pytest.raises(ValueError, match="unknown class 'cat'") as info:
        tiny_pipeline.resolve_label("cat")
    assert "red, green, blue" in str(info.value)


@pytest.mark.parametrize("label", [3, -1, "3", 99])
def test_out_of_range_index(tiny_pipeline: DiffusionPipeline, label: int | str) -> None:
    with pytest.raises(ValueError, match=r"\[0, 2\]"):
        tiny_pipeline.resolve_label(label)


def test_unconditional_model_rejects_labels(unconditional: DiffusionPipeline) -> None:
    assert unconditional.resolve_label(None) is None
    with pytest.raises(ValueError, match="unconditional"):
        unconditional.resolve_label(0)
    with pytest.raises(ValueError, match="unconditional"):
        unconditional.sample(ddim(labels=(0, None)))


def test_unconditional_model_samples_without_labels(unconditional: DiffusionPipeline) -> None:
    out = unconditional.sample(ddim(labels=(None, None), guidance_scale=3.0))
    assert out.shape == (2, 3, 8, 8)
    assert torch.equal(out, unconditional.sample(ddim()))


def test_sample_rejects_out_of_range_label(tiny_pipeline: DiffusionPipeline) -> None:
    with pytest.raises(ValueError, match="label"):
        tiny_pipeline.sample(ddim(seeds=(0,), labels=(7,)))


# -------------------------------------------------------------------------------------- sampling
def test_ddpm_needs_all_steps(tiny_pipeline: DiffusionPipeline) -> None:
    with pytest.raises(ValueError, match="ddim"):
        tiny_pipeline.sample(SampleParams(seeds=(0,), sampler="ddpm", steps=10))


def test_sample_shape_range_and_device(tiny_pipeline: DiffusionPipeline) -> None:
    out = tiny_pipeline.sample(ddim(seeds=(0, 1, 2), labels=(0, 1, None)))
    assert out.shape == (3, 3, 8, 8)
    assert out.dtype == torch.float32 and out.device.type == "cpu"
    assert out.min() >= -1 and out.max() <= 1
    assert out.std() > 0.05  # not a constant image
    assert not torch.equal(out[0], out[1])


def test_ddpm_full_chain(tiny_pipeline: DiffusionPipeline) -> None:
    params = SampleParams(seeds=(0,), sampler=SamplerKind.DDPM, steps=100, variance="posterior")
    out = tiny_pipeline.sample(params)
    assert out.shape == (1, 3, 8, 8) and out.abs().max() <= 1
    assert torch.equal(out, tiny_pipeline.sample(params))


def test_same_params_same_images(tiny_pipeline: DiffusionPipeline) -> None:
    params = ddim(seeds=(3, 4), labels=(1, 2), guidance_scale=2.0, eta=0.5)
    assert torch.equal(tiny_pipeline.sample(params), tiny_pipeline.sample(params))


def test_image_depends_only_on_its_seed(tiny_pipeline: DiffusionPipeline) -> None:
    batch = tiny_pipeline.sample(ddim(seeds=(5, 6), labels=(0, 1)))
    alone = tiny_pipeline.sample(ddim(seeds=(6,), labels=(1,)))
    torch.testing.assert_close(batch[1], alone[0], atol=1e-5, rtol=0)


def test_guidance_changes_conditional_samples(tiny_pipeline: DiffusionPipeline) -> None:
    plain = tiny_pipeline.sample(ddim(labels=(0, 2), guidance_scale=1.0))
    guided = tiny_pipeline.sample(ddim(labels=(0, 2), guidance_scale=3.0))
    assert (plain - guided).abs().max() > 1e-3


def test_guidance_is_a_no_op_without_labels(tiny_pipeline: DiffusionPipeline) -> None:
    """Bit-exact on any machine: without labels the guided run makes the unguided run's very network calls."""
    plain = tiny_pipeline.sample(ddim(guidance_scale=1.0))
    guided = tiny_pipeline.sample(ddim(guidance_scale=3.0))
    assert torch.equal(plain, guided)
    assert torch.equal(plain, tiny_pipeline.sample(ddim(labels=(None, None), guidance_scale=3.0)))


def count_rows(pipeline: DiffusionPipeline, monkeypatch: pytest.MonkeyPatch) -> list[list[int | None]]:
    """Spy on the network: the labels of each call's rows (None: the network was called without labels)."""
    calls: list[list[int | None]] = []
    forward = pipeline.forward

    def spy(x: torch.Tensor, t: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        calls.append([None] * x.shape[0] if labels is None else labels.tolist())
        return forward(x, t, labels)

    monkeypatch.setattr(pipeline, "forward", spy)
    return calls


@pytest.mark.parametrize("labels", [None, (None, None, None)])
def test_unlabelled_guided_samples_cost_one_pass_per_step(
    tiny_pipeline: DiffusionPipeline, monkeypatch: pytest.MonkeyPatch, labels: tuple[None, ...] | None
) -> None:
    calls = count_rows(tiny_pipeline, monkeypatch)
    tiny_pipeline.sample(ddim(seeds=(0, 1, 2), steps=5, labels=labels, guidance_scale=3.0))
    null = tiny_pipeline.config.null_label
    assert calls == [[null] * 3] * 5  # one evaluation of the B = 3 rows per step, never the 2B of CFG


def test_a_mixed_batch_guides_only_its_labelled_samples(
    tiny_pipeline: DiffusionPipeline, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = count_rows(tiny_pipeline, monkeypatch)
    mixed = tiny_pipeline.sample(ddim(seeds=(0, 1, 2), labels=(2, None, 0), guidance_scale=3.0))
    null = tiny_pipeline.config.null_label
    assert calls == [[2, null, 0, null, null]] * 4  # B rows as asked + one unconditional row per labelled sample
    # Each row is the image its sample makes in a batch of its own kind (other batch shapes: equal up to rounding).
    guided = tiny_pipeline.sample(ddim(seeds=(0, 2), labels=(2, 0), guidance_scale=3.0))
    unguided = tiny_pipeline.sample(ddim(seeds=(1,), guidance_scale=1.0))
    # 1e-4: other batch shapes sum in another order (measured up to 1.1e-5 with 2 threads on an AVX512 CPU);
    # another seed, label or guidance moves these images by far more than that
    torch.testing.assert_close(mixed[[0, 2]], guided, atol=1e-4, rtol=0)
    torch.testing.assert_close(mixed[1:2], unguided, atol=1e-4, rtol=0)


def test_guidance_interval_skips_the_unconditional_pass_outside_it(
    tiny_pipeline: DiffusionPipeline, monkeypatch: pytest.MonkeyPatch
) -> None:
    from shared.diffusion.samplers import ddim_timesteps, edm_sigmas

    taus = list(reversed(ddim_timesteps(100, 10)))
    sigmas = edm_sigmas(tiny_pipeline.diffusion.alphas_cumprod)[taus]
    lo, hi = float(sigmas[7]), float(sigmas[2])  # (lo, hi]: the 3rd to 7th of the 10 steps
    calls = count_rows(tiny_pipeline, monkeypatch)
    params = ddim(seeds=(0, 1), steps=10, labels=(1, None), guidance_scale=3.0, guidance_interval=(lo, hi))
    inside = tiny_pipeline.sample(params)
    assert [len(rows) for rows in calls] == [2, 2, 3, 3, 3, 3, 3, 2, 2, 2]
    # Guidance in the interval does something, and the whole range of sigma is guidance everywhere.
    everywhere = tiny_pipeline.sample(ddim(seeds=(0, 1), steps=10, labels=(1, None), guidance_scale=3.0))
    nowhere = tiny_pipeline.sample(ddim(seeds=(0, 1), steps=10, labels=(1, None), guidance_scale=1.0))
    assert (inside[0] - everywhere[0]).abs().max() > 1e-3 and (inside[0] - nowhere[0]).abs().max() > 1e-3
    whole = ddim(seeds=(0, 1), steps=10, labels=(1, None), guidance_scale=3.0, guidance_interval=(0, 1e6))
    assert torch.equal(tiny_pipeline.sample(whole), everywhere)


def test_labels_change_samples(tiny_pipeline: DiffusionPipeline) -> None:
    a = tiny_pipeline.sample(ddim(seeds=(0,), labels=(0,)))
    b = tiny_pipeline.sample(ddim(seeds=(0,), labels=(1,)))
    assert not torch.equal(a, b)


def test_dpmpp_2m_through_the_pipeline(tiny_pipeline: DiffusionPipeline) -> None:
    params = SampleParams(seeds=(0, 1), sampler="dpmpp_2m", steps=6, labels=(1, None), guidance_scale=2.0)
    out = tiny_pipeline.sample(params)
    assert out.shape == (2, 3, 8, 8) and out.abs().max() <= 1 and out.std() > 0.05
    assert torch.equal(out, tiny_pipeline.sample(params))  # same path, same shapes: same bits
    ddim_run = tiny_pipeline.sample(ddim(steps=6, labels=(1, None), guidance_scale=2.0))
    assert (out - ddim_run).abs().max() > 1e-3  # another solver, not DDIM under a new name
    seen: list[tuple[int, int]] = []
    tiny_pipeline.sample(params, callback=lambda step, total, x0: seen.append((step, total)))
    assert seen == [(k, 6) for k in range(1, 7)]


def test_callback_sees_every_step(tiny_pipeline: DiffusionPipeline) -> None:
    seen: list[tuple[int, int]] = []
    tiny_pipeline.sample(ddim(steps=5), callback=lambda step, total, x0: seen.append((step, total)))
    assert seen == [(k, 5) for k in range(1, 6)]


def test_bf16_precision_runs_close_to_fp32(tiny_unet: UNet) -> None:
    diffusion = GaussianDiffusion(DiffusionConfig(num_timesteps=100))
    fp32 = DiffusionPipeline(tiny_unet, diffusion).sample(ddim())
    bf16 = DiffusionPipeline(tiny_unet, diffusion, precision="bf16").sample(ddim())
    assert bf16.dtype == torch.float32 and bf16.shape == fp32.shape
    assert (bf16 - fp32).abs().mean() < 0.2


# --------------------------------------------------------------------------------- SampleParams
def test_params_normalise_types() -> None:
    p = SampleParams(seeds=[1, 2], sampler="ddim", spacing="quadratic", variance="posterior")  # type: ignore[arg-type]
    assert p.seeds == (1, 2)
    assert p.sampler is SamplerKind.DDIM
    assert p.spacing is Spacing.QUADRATIC
    assert p.variance is VarianceKind.POSTERIOR


def test_params_defaults() -> None:
    p = SampleParams(seeds=(0,))
    assert p.sampler is SamplerKind.DDPM and p.steps == 1000 and p.guidance_scale == 1.0 and p.labels is None


def test_params_empty_seeds() -> None:
    with pytest.raises(ValueError, match="at least one seed"):
        SampleParams(seeds=())


def test_params_label_count_mismatch() -> None:
    with pytest.raises(ValueError, match="1 labels for 2 seeds"):
        SampleParams(seeds=(0, 1), labels=(0,))


def test_params_negative_guidance() -> None:
    with pytest.raises(ValueError, match="guidance_scale"):
        SampleParams(seeds=(0,), guidance_scale=-0.5)


@pytest.mark.parametrize("interval", [(1.0, 1.0), (2.0, 1.0), (-0.1, 1.0), (0.0, float("inf")), (1.0,)])
def test_params_reject_bad_guidance_intervals(interval: tuple[float, ...]) -> None:
    with pytest.raises(ValueError, match="guidance_interval"):
        SampleParams(seeds=(0,), guidance_interval=interval)  # type: ignore[arg-type]


def test_params_normalise_the_guidance_interval() -> None:
    assert SampleParams(seeds=(0,), guidance_interval=[0, 3]).guidance_interval == (0.0, 3.0)  # type: ignore[arg-type]


def test_dpmpp_2m_has_no_eta() -> None:
    with pytest.raises(ValueError, match="eta"):
        SampleParams(seeds=(0,), sampler="dpmpp_2m", steps=10, eta=0.5)


@pytest.mark.parametrize(
    ("field", "allowed"),
    [("sampler", "ddpm, ddim, dpmpp_2m"), ("spacing", "uniform, quadratic"), ("variance", "beta, posterior")],
)
def test_params_unknown_enum_lists_allowed(field: str, allowed: str) -> None:
    with pytest.raises(ValueError, match="expected one of") as info:
        SampleParams(seeds=(0,), **{field: "bogus"})
    assert allowed in str(info.value) and "'bogus'" in str(info.value)


def test_params_are_frozen() -> None:
    p = SampleParams(seeds=(0,))
    with pytest.raises(AttributeError):
        p.steps = 5  # type: ignore[misc]


# ------------------------------------------------------------------------------------- fast paths
def test_channels_last_gives_the_reference_images(tiny_unet: UNet) -> None:
    """The service's layout (channels_last) against plain NCHW: the same images up to rounding.

    The two layouts run different oneDNN kernels, so the floats may differ in their last bits and a value
    that sits on a rounding boundary may land one uint8 level apart (never more); another seed or label
    would move values by far more than atol.
    """
    import copy

    from shared.images import to_uint8

    diffusion = GaussianDiffusion(DiffusionConfig(num_timesteps=100))
    reference = DiffusionPipeline(copy.deepcopy(tiny_unet), diffusion, channels_last=False)
    fast = DiffusionPipeline(copy.deepcopy(tiny_unet), diffusion)
    for params in (ddim(seeds=(0, 1, 2), steps=8), SampleParams(seeds=(3,), sampler="ddpm", steps=100)):
        ref, out = reference.sample(params), fast.sample(params)
        assert torch.allclose(ref, out, atol=1e-4)
        assert (to_uint8(ref).int() - to_uint8(out).int()).abs().max() <= 1


@pytest.mark.slow
def test_compiled_pipeline_gives_the_reference_images(tiny_unet: UNet) -> None:
    import copy

    from shared.images import to_uint8

    diffusion = GaussianDiffusion(DiffusionConfig(num_timesteps=100))
    reference = DiffusionPipeline(copy.deepcopy(tiny_unet), diffusion, channels_last=False)
    compiled = DiffusionPipeline(copy.deepcopy(tiny_unet), diffusion, compile=True)
    assert compiled.compiled and compiled.forward is not compiled.unet
    params = ddim(seeds=(0, 1), steps=6)
    ref, out = reference.sample(params), compiled.sample(params)
    assert torch.allclose(ref, out, atol=1e-3)
    assert (to_uint8(ref).int() - to_uint8(out).int()).abs().max() <= 1
