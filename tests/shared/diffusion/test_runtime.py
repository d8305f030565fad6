"""The UNet's engines: OpenVINO gives torch's outputs (fp32) on every sampler; `auto` picks by the machine."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from shared.device import Precision
from shared.diffusion import runtime
from shared.diffusion.export import EXPORT_FORM
from shared.diffusion.pipeline import DiffusionPipeline, SampleParams
from shared.diffusion.process import DiffusionConfig, GaussianDiffusion
from shared.diffusion.runtime import OpenVINONetwork, Runtime, choose
from tests.conftest import seeded_unet, tiny_unet_config

pytest.importorskip("openvino", reason="OpenVINO is part of the diffusion-worker extra (make install has it)")

CPU = torch.device("cpu")
# fp32 in another engine: a different order of float operations, nothing more (measured ~1e-6 here)
FP32_TOLERANCE = 1e-4


def reference_pipeline(num_classes: int | None = 3) -> DiffusionPipeline:
    config = tiny_unet_config() if num_classes else tiny_unet_config(num_classes=None, class_names=())
    return DiffusionPipeline(seeded_unet(config), GaussianDiffusion(DiffusionConfig(num_timesteps=100)))


def exported_pipeline(num_classes: int | None = 3, **kw: object) -> DiffusionPipeline:
    """The same seeded weights as reference_pipeline, run by OpenVINO (an export costs ~3 s: shared per module)."""
    ref = reference_pipeline(num_classes)
    return DiffusionPipeline(ref.unet, ref.diffusion, runtime="openvino", **kw)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def reference() -> DiffusionPipeline:
    return reference_pipeline()


@pytest.fixture(scope="module")
def exported() -> DiffusionPipeline:
    return exported_pipeline()


@pytest.fixture(scope="module")
def exported_bf16() -> DiffusionPipeline:
    return exported_pipeline(precision=Precision.BF16)


def probe(batch: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 3, 8, 8, generator=gen)
    return x, torch.randint(0, 100, (batch,), generator=gen), torch.randint(0, 4, (batch,), generator=gen)


def test_the_exported_network_gives_torchs_outputs_at_any_batch_size(
    reference: DiffusionPipeline, exported: DiffusionPipeline
) -> None:
    network = exported.forward
    assert isinstance(network, OpenVINONetwork)
    for batch in (1, 3, 1):  # the second call at batch 1 reuses its compiled model
        x, t, y = probe(batch, seed=batch)
        for labels in (y, None):  # None: the null label, as the torch module does
            with torch.no_grad():
                expected = reference.unet(x, t, labels)
            assert (network(x, t, labels) - expected).abs().max().item() < FP32_TOLERANCE


@pytest.mark.skipif(
    not hasattr(os, "sched_getaffinity") or len(os.sched_getaffinity(0)) < 2,
    reason="pinning to the first core is only visible on a machine with two cores or more",
)
def test_a_single_thread_network_leaves_the_process_free_to_run_on_any_core(reference: DiffusionPipeline) -> None:
    """OpenVINO pins its threads to the first cores by default, so two single-thread processes (two workers,
    or a worker beside an evaluation) both ran on core 0 at half speed with core 1 idle (measured: 50% each)."""
    allowed = os.sched_getaffinity(0)
    try:
        for threads, pinned in ((1, False), (len(allowed), True)):  # pinning only when it takes every core
            network = OpenVINONetwork(reference.unet, Precision.FP32, threads=threads)
            x, t, y = probe(1)
            network(x, t, y)
            assert network.request(1).get_compiled_model().get_property("ENABLE_CPU_PINNING") is pinned
        assert os.sched_getaffinity(0) == allowed
    finally:
        os.sched_setaffinity(0, allowed)


def test_a_large_batch_is_split_across_single_thread_streams(reference: DiffusionPipeline) -> None:
    network = OpenVINONetwork(reference.unet, Precision.FP32, threads=2)
    for batch in (1, 9, 8):  # 1: one request on both threads; 9: two streams of 5 rows, one padded; 8: 2 x 4
        x, t, y = probe(batch, seed=10 + batch)
        with torch.no_grad():
            expected = reference.unet(x, t, y)
        got = network(x, t, y)
        assert got.shape == expected.shape
        assert (got - expected).abs().max().item() < FP32_TOLERANCE  # every row in place, no padding row kept
    assert sorted(network._requests) == [1] and sorted(network._queues) == [4, 5]


@pytest.mark.parametrize(
    "params",
    [
        SampleParams(seeds=(0, 1, 2), labels=(0, None, 2), sampler="ddpm", steps=100),
        SampleParams(seeds=(3, 4), labels=(1, 2), sampler="ddim", steps=10, eta=0.5, guidance_scale=2.0),
        SampleParams(seeds=(5, 6), labels=(None, 0), sampler="dpmpp_2m", steps=8, guidance_scale=3.0),
        SampleParams(seeds=(7,), sampler="ddim", steps=5, guidance_scale=2.0, guidance_interval=(0.5, 5.0)),
    ],
    ids=["ddpm", "ddim-eta-guided", "dpmpp_2m-guided", "ddim-interval"],
)
def test_every_sampler_gives_the_same_images_in_fp32(
    params: SampleParams, reference: DiffusionPipeline, exported: DiffusionPipeline
) -> None:
    a, b = reference.sample(params), exported.sample(params)
    assert a.shape == b.shape
    assert (a - b).abs().max().item() < 1e-3  # 100 steps of ~1e-6 differences, well under one uint8 level


def test_an_unconditional_network_is_exported_without_a_label_input() -> None:
    reference, exported = reference_pipeline(num_classes=None), exported_pipeline(num_classes=None)
    assert len(exported.forward.model.inputs) == 2  # type: ignore[union-attr]
    params = SampleParams(seeds=(0, 1), sampler="ddim", steps=6)
    assert (reference.sample(params) - exported.sample(params)).abs().max().item() < 1e-3


def test_bf16_stays_close_and_is_reported(reference: DiffusionPipeline, exported_bf16: DiffusionPipeline) -> None:
    info = exported_bf16.runtime.describe()
    assert info["precision"] == "bf16" and info["engine"].startswith("openvino ")
    assert info["graph"] == f"export form: {EXPORT_FORM}"  # which rewrites ran, named in /models/info
    assert reference.runtime.describe()["graph"] == "the UNet's own modules"
    x, t, y = probe(4)
    with torch.no_grad():
        expected = reference.unet(x, t, y)
    got = exported_bf16.forward(x, t, y)
    # bf16 keeps 8 bits of mantissa: about 1% of the output's scale; rows mixed up move it by far more
    # (what bf16 does to the images is measured at N = 1000: models/README.md)
    error = ((got - expected).norm() / expected.norm()).item()
    assert error < 0.05
    with torch.no_grad():
        rows_mixed_up = reference.unet(x.flip(0), t, y)
    assert ((got - rows_mixed_up).norm() / expected.norm()).item() > 10 * error


def test_the_same_request_gives_the_same_bytes_twice(exported_bf16: DiffusionPipeline) -> None:
    params = SampleParams(seeds=(0, 1, 2), labels=(0, 1, None), sampler="ddim", steps=5, guidance_scale=2.0)
    assert torch.equal(exported_bf16.sample(params), exported_bf16.sample(params))


def test_from_pretrained_resolves_auto_and_says_why(
    reference: DiffusionPipeline, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    saved = reference.save_pretrained(tmp_path / "m", dtype=torch.float32)
    monkeypatch.setattr(runtime, "openvino_bf16", lambda: True)
    loaded = DiffusionPipeline.from_pretrained(saved, device="cpu", runtime="auto", precision="auto")
    info = loaded.runtime.describe()
    assert (info["runtime"], info["precision"]) == ("openvino", "bf16")
    assert "OpenVINO runs bf16 on this CPU" in info["why"]
    assert isinstance(loaded.forward, OpenVINONetwork)
    params = SampleParams(seeds=(0,), labels=(1,), sampler="ddim", steps=4)
    assert loaded.sample(params).shape == reference.sample(params).shape


def pair(choice: runtime.RuntimeChoice) -> tuple[Runtime, Precision]:
    return choice.runtime, choice.precision


def test_choose_follows_the_machine(monkeypatch: pytest.MonkeyPatch) -> None:
    cuda = torch.device("cuda")
    monkeypatch.setattr(runtime, "openvino_bf16", lambda: True)
    monkeypatch.setattr(runtime, "native_bf16_cpu", lambda: True)
    assert pair(choose("auto", "auto", CPU)) == (Runtime.OPENVINO, Precision.BF16)
    assert pair(choose("auto", "fp32", CPU)) == (Runtime.TORCH, Precision.FP32)  # fp32: torch's is as fast
    assert pair(choose("torch", "auto", CPU)) == (Runtime.TORCH, Precision.BF16)
    assert pair(choose("auto", "auto", cuda)) == (Runtime.TORCH, Precision.BF16)
    monkeypatch.setattr(runtime, "native_bf16_cpu", lambda: False)  # AVX512 without the bf16 extension
    assert pair(choose("auto", "auto", CPU)) == (Runtime.OPENVINO, Precision.BF16)
    assert pair(choose("torch", "auto", CPU)) == (Runtime.TORCH, Precision.FP32)  # emulated: slower
    monkeypatch.setattr(runtime, "openvino_bf16", lambda: False)  # AVX2 only
    choice = choose("auto", "auto", CPU)
    assert pair(choice) == (Runtime.TORCH, Precision.FP32) and "OpenVINO has no bf16" in choice.reason
    assert pair(choose("openvino", "auto", CPU)) == (Runtime.OPENVINO, Precision.FP32)
    assert pair(choose("openvino", "bf16", CPU)) == (Runtime.OPENVINO, Precision.BF16)  # asked for: taken
    monkeypatch.setattr(runtime, "openvino_version", lambda: None)
    assert "not installed" in choose("auto", "auto", CPU).reason
    with pytest.raises(ValueError, match="not installed"):
        choose("openvino", "fp32", CPU)
    with pytest.raises(ValueError, match="runs on a CPU"):
        choose("openvino", "fp32", cuda)


def test_openvino_and_torch_compile_are_alternatives() -> None:
    with pytest.raises(ValueError, match="alternatives"):
        exported_pipeline(compile=True)


def test_openvino_telemetry_is_declined_unless_the_operator_opted_in(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """OpenVINO's converter phones home from a forked process unless ~/intel/openvino_telemetry says no."""
    pytest.importorskip("openvino_telemetry", reason="installed with openvino")
    monkeypatch.setenv("HOME", str(tmp_path))
    consent = tmp_path / "intel" / "openvino_telemetry"
    assert not consent.exists()
    assert runtime.decline_openvino_telemetry() is True
    assert consent.read_text() == "0"  # what `opt_in_out --opt_out` writes
    consent.write_text("1")  # an operator who opted in keeps their choice
    assert runtime.decline_openvino_telemetry() is False
    assert consent.read_text() == "1"


def test_openvino_sampling_runs_torchs_own_operations_on_one_thread(
    reference: DiffusionPipeline, exported: DiffusionPipeline
) -> None:
    # torch's idle OpenMP worker would spin on the cores OpenVINO's streams need; the pool comes back after
    params = SampleParams(seeds=(0, 1), sampler="ddim", steps=3, labels=(0, 1))
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        seen: dict[str, set[int]] = {"openvino": set(), "torch": set()}
        for name, pipeline in (("openvino", exported), ("torch", reference)):
            pipeline.sample(params, callback=lambda *_, name=name: seen[name].add(torch.get_num_threads()))
            assert torch.get_num_threads() == 2
        assert seen == {"openvino": {1}, "torch": {2}}
    finally:
        torch.set_num_threads(before)
