"""evaluate.py end to end on a tiny ImageFolder with a tiny classifier: the real and noise rows,
results.json and grids, and the same numbers from the sample cache on a second run."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest
import torch

from shared.classifier import Classifier, ClassifierConfig, save_classifier
from tests.training.conftest import two_class_folder
from training.evaluate import main


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("tiny-eval")
    two_class_folder(root / "data", per_class=12)
    torch.manual_seed(0)
    net = Classifier(ClassifierConfig(stem_channels=4, widths=(8, 16), num_classes=2, class_names=("dark", "light")))
    save_classifier(net.eval(), root / "classifier", training={"test_accuracy": 0.5})
    return {
        "data": str(root / "data"),
        "cache": str(root / "cache"),
        "samples": str(root / "samples"),
        "classifier": str(root / "classifier"),
        "root": str(root),
    }


def run(setup: dict[str, str], out: str, *extra: str) -> dict:
    argv = [
        f"--data={setup['data']}", f"--data-cache={setup['cache']}", f"--cache-dir={setup['samples']}",
        f"--classifier={setup['classifier']}", f"--out={out}", "--n=10", "--kid-subset-size=5", *extra,
    ]  # fmt: skip
    assert main(argv) == 0
    return json.loads((Path(out) / "results.json").read_text())


def test_real_and_noise_rows_are_written_and_repeatable(setup: dict[str, str]) -> None:
    out = str(Path(setup["root"]) / "out")
    first = run(setup, out, "--model=real")
    assert [r["row"] for r in first["rows"]] == ["real"]
    row = first["rows"][0]
    assert row["n"] == 10 and row["fid"] >= 0 and 0 <= row["class_agreement"] <= 1
    assert first["reference"].startswith("CIFAR-10 test split, first 24 images")
    assert (Path(out) / "grid-real.png").is_file()
    assert len(list(Path(setup["samples"]).glob("real-10-*.safetensors"))) == 1
    again = run(setup, out, "--model=real")
    assert again["rows"][0]["fid"] == row["fid"] and again["rows"][0]["kid_mean"] == row["kid_mean"]
    noise = run(setup, out, "--model=noise", "--class-label=none")["rows"][0]
    assert noise["fid"] > row["fid"] and "class_agreement" not in noise


def test_rows_carry_diversity_per_class_and_the_tables_print_it(
    setup: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    """Train images with their true labels are about as diverse as the test images of their class; an
    unlabelled row has only the all-images diversity."""
    out = str(Path(setup["root"]) / "out-diversity")
    real = run(setup, out, "--model=real")["rows"][0]
    assert set(real["diversity_per_class"]) == {"dark", "light"} == set(real["kid_per_class"])
    assert all(0.7 < d < 1.3 for d in real["diversity_per_class"].values())  # 5 images a class against 12
    assert real["diversity_min"] <= real["diversity"] and real["diversity_min_class"] in ("dark", "light")
    assert "fid_per_class" not in real  # 5 samples a class, 16 feature dimensions
    printed = capsys.readouterr().out
    assert f"{real['diversity']:.3f} / {real['diversity_min']:.3f} ({real['diversity_min_class']})" in printed
    assert "| row: diversity | dark | light |" in printed and "| row: KID x1e3 | dark | light |" in printed
    noise = run(setup, out, "--model=noise", "--class-label=none")["rows"][0]
    assert noise["diversity_all"] > 0 and "diversity" not in noise and "diversity_per_class" not in noise


def test_standard_inception_fid_from_a_local_weights_file(
    setup: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """--inception-weights adds torchmetrics' Inception FID with the network loaded from that file (no
    download). The real weights cannot be fetched here, so the file holds a seeded random Inception-v3 of
    the same layout whose BatchNorm statistics are set from a batch of images (else random features
    shrink to nothing over its ~90 layers and every FID is 0)."""
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    from training.metrics import InceptionFID

    weights = tmp_path / "inception.pth"
    torch.save({}, weights)
    with monkeypatch.context() as patch:  # build the layout without loading anything
        patch.setattr(FeatureExtractorInceptionV3, "load_state_dict", lambda self, state: None)
        torch.manual_seed(0)
        net = FeatureExtractorInceptionV3("inception-v3-compat", ["2048"], feature_extractor_weights_path=weights)
    for bn in (m for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d)):
        bn.reset_running_stats()
        bn.momentum = None  # a cumulative average: one batch sets the statistics
    net.train()
    with torch.no_grad():
        net(torch.randint(0, 256, (16, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0)))
    torch.save(net.state_dict(), weights)

    loaded = InceptionFID(str(weights)).metric.inception.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in net.state_dict().items())  # the file's weights, not a download

    out, inception = str(tmp_path / "out"), f"--inception-weights={weights}"
    by_name = {
        name: run(setup, out, f"--model={name}", "--class-label=none", "--reference-size=12", inception)["rows"][0]
        for name in ("real", "noise")
    }
    assert all(r["inception_fid"] is not None and r["inception_fid"] >= 0 for r in by_name.values())
    # the 2048-d space separates the rows: uniform noise lies further from the test images than train images do
    assert by_name["noise"]["inception_fid"] > 2 * by_name["real"]["inception_fid"] > 0


def test_the_sample_cache_is_keyed_by_the_model_card_as_well_as_the_weights(tmp_path: Path) -> None:
    """Editing a card's sampling block (the EBM's serving chain) with the same weights must not reuse the
    samples of the old chain."""
    from shared.ebm.energy import EnergyConfig, EnergyNet
    from shared.ebm.langevin import LangevinParams
    from shared.ebm.pipeline import EBMPipeline
    from training.sources import SourceSpec, cache_key

    torch.manual_seed(0)
    net = EnergyNet(EnergyConfig(image_size=8, base_channels=4, channel_mult=(1,), num_res_blocks=1, num_classes=2))
    directory = tmp_path / "ebm"
    EBMPipeline(net).save_pretrained(directory, sampling=LangevinParams(steps=5, step_size=2.0))
    spec = SourceSpec(model="ebm", n=4, weights=str(directory))
    before = cache_key(spec, tmp_path)
    assert cache_key(spec, tmp_path) == before  # same weights, same card: the cache is reused
    import shutil

    copy = shutil.copytree(directory, tmp_path / "elsewhere" / "ebm-copy")
    assert cache_key(SourceSpec(model="ebm", n=4, weights=str(copy)), tmp_path) == before  # the files, not the folder
    untrained = SourceSpec(model="untrained", untrained_of="ebm", n=4, weights=str(directory))
    random_weights = cache_key(untrained, tmp_path)
    retrained = EBMPipeline.from_pretrained(directory)
    with torch.no_grad():
        for weight in retrained.net.parameters():
            weight.add_(0.1)
    retrained.save_pretrained(directory, training={"images_seen_total": 1000})  # new weights, new training block
    assert cache_key(untrained, tmp_path) == random_weights  # random weights: the trained ones do not matter
    assert cache_key(spec, tmp_path) != before  # but the trained row is another row now
    wider = EnergyNet(EnergyConfig(image_size=8, base_channels=8, channel_mult=(1,), num_res_blocks=1, num_classes=2))
    EBMPipeline(wider).save_pretrained(directory, sampling=LangevinParams(steps=5, step_size=2.0))
    assert cache_key(untrained, tmp_path) != random_weights  # another architecture: another untrained row
    EBMPipeline(net).save_pretrained(directory, sampling=LangevinParams(steps=5, step_size=2.0))
    assert cache_key(spec, tmp_path) == before
    card = json.loads((directory / "config.json").read_text())
    card["sampling"]["step_size"] = 4.0
    (directory / "config.json").write_text(json.dumps(card))
    assert cache_key(spec, tmp_path) != before

    # guidance: None means the card's, so it shares the key of the same value given explicitly, and only that
    import dataclasses

    card["sampling"]["guidance_scale"] = 3.0
    (directory / "config.json").write_text(json.dumps(card))
    cards = cache_key(dataclasses.replace(spec, guidance_scale=None), tmp_path)
    assert cards == cache_key(dataclasses.replace(spec, guidance_scale=3.0), tmp_path)
    assert cards != cache_key(dataclasses.replace(spec, guidance_scale=1.0), tmp_path)


def test_each_row_takes_its_own_default_guidance() -> None:
    """No --guidance-scale: diffusion rows unguided (1.0), EBM rows the card's (None), whatever --untrained-of."""
    from training.evaluate import build_parser, row_specs

    for argv, expected in (
        (["--model", "ebm", "--calibrate", "--untrained-of", "diffusion"], {"ebm": None, "untrained": 1.0}),
        (["--model", "diffusion", "--calibrate", "--untrained-of", "ebm"], {"diffusion": 1.0, "untrained": None}),
        (["--model", "ebm", "--guidance-scale", "2"], {"ebm": 2.0}),
    ):
        specs = {spec.model: spec.guidance_scale for spec in row_specs(build_parser().parse_args(argv))}
        assert {name: specs[name] for name in expected} == expected, argv


def test_the_sample_cache_key_keeps_old_keys_and_tells_guidance_intervals_apart() -> None:
    """A spec without a guidance interval, on torch fp32, hashes as before those fields existed (caches
    stay valid); with an interval, or another engine or precision, another key each."""
    import dataclasses
    import hashlib

    from training.sources import SourceSpec, cache_key

    spec = SourceSpec(model="noise", n=4)
    fields = {k: v for k, v in dataclasses.asdict(spec).items() if k not in ("batch_size", "device", "data_cache")}
    for newer in ("guidance_interval", "runtime", "precision"):
        del fields[newer]
    old = hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:16]
    assert cache_key(spec, Path(".")) == old
    narrow = cache_key(dataclasses.replace(spec, guidance_interval=(0.3, 5.0)), Path("."))
    wide = cache_key(dataclasses.replace(spec, guidance_interval=(0.0, 80.0)), Path("."))
    openvino = cache_key(dataclasses.replace(spec, runtime="openvino"), Path("."))
    bf16 = cache_key(dataclasses.replace(spec, runtime="openvino", precision="bf16"), Path("."))
    assert len({old, narrow, wide, openvino, bf16}) == 5


def test_evaluate_passes_dpmpp_2m_and_the_interval_to_the_sampler() -> None:
    from training.evaluate import build_parser, row_specs

    args = build_parser().parse_args(["--sampler", "dpmpp_2m", "--steps", "20", "--guidance-interval", "0.3", "5"])
    (spec,) = row_specs(args)
    assert spec.sampler == "dpmpp_2m" and spec.steps == 20 and spec.guidance_interval == (0.3, 5.0)


def test_a_stopped_row_resumes_from_its_last_finished_batch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A row killed after its first batch keeps that batch; the next run samples only the rest, and the row
    is the row an uninterrupted run makes, with the sampling time of all its batches."""
    from shared.ebm.energy import EnergyConfig, EnergyNet
    from shared.ebm.langevin import LangevinParams
    from shared.ebm.pipeline import EBMPipeline
    from training.sources import SourceSpec, load_samples

    torch.manual_seed(0)
    net = EnergyNet(EnergyConfig(image_size=8, base_channels=4, channel_mult=(1,), num_res_blocks=1, num_classes=2))
    directory = tmp_path / "ebm"
    EBMPipeline(net).save_pretrained(directory, sampling=LangevinParams(steps=3, step_size=2.0))
    spec = SourceSpec(model="ebm", n=6, weights=str(directory), batch_size=2)
    straight = load_samples(spec, tmp_path, str(tmp_path / "straight"))

    made: list[tuple[int, ...]] = []
    stop_after = [1]  # batches; emptied to let the run finish
    real_sample = EBMPipeline.sample

    def sample(self: EBMPipeline, params: Any, callback: Any = None) -> torch.Tensor:
        if stop_after and len(made) == stop_after[0]:
            raise KeyboardInterrupt("stopped")
        made.append(params.seeds)
        return real_sample(self, params, callback)

    cache = tmp_path / "cache"
    monkeypatch.setattr(EBMPipeline, "sample", sample)
    with pytest.raises(KeyboardInterrupt):
        load_samples(spec, tmp_path, str(cache))
    (partial,) = cache.glob("*.partial")
    batches = sorted(p.name for p in partial.glob("*.safetensors"))
    assert made == [(0, 1)] and batches == ["0000000-0000002.safetensors"]
    stop_after.clear()
    made.clear()
    resumed = load_samples(spec, tmp_path, str(cache))
    assert made == [(2, 3), (4, 5)]  # only the batches the stopped run had not finished
    assert torch.equal(resumed.images, straight.images) and torch.equal(resumed.labels, straight.labels)
    assert not partial.exists() and len(list(cache.glob("ebm-6-*.safetensors"))) == 1
    assert resumed.seconds > 0


def _tiny_ebm(tmp_path: Path) -> Any:
    from shared.ebm.energy import EnergyConfig, EnergyNet
    from shared.ebm.langevin import LangevinParams
    from shared.ebm.pipeline import EBMPipeline
    from training.sources import SourceSpec

    torch.manual_seed(0)
    net = EnergyNet(EnergyConfig(image_size=8, base_channels=4, channel_mult=(1,), num_res_blocks=1, num_classes=2))
    EBMPipeline(net).save_pretrained(tmp_path / "ebm", sampling=LangevinParams(steps=3, step_size=2.0))
    return SourceSpec(model="ebm", n=8, weights=str(tmp_path / "ebm"), batch_size=2)


def test_two_runs_of_one_row_share_its_batches(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two runs of the same row at once (one per core) each make the batches the other has not locked, so
    every batch is made once, and both return the row one run alone makes."""
    import threading
    import time

    from shared.ebm.pipeline import EBMPipeline
    from training.sources import load_samples

    spec = _tiny_ebm(tmp_path)
    straight = load_samples(spec, tmp_path, str(tmp_path / "straight"))
    made: list[tuple[str, tuple[int, ...]]] = []
    real_sample = EBMPipeline.sample

    def sample(self: EBMPipeline, params: Any, callback: Any = None) -> torch.Tensor:
        made.append((threading.current_thread().name, params.seeds))
        time.sleep(0.3)  # long enough that the other run finds this batch locked
        return real_sample(self, params, callback)

    monkeypatch.setattr(EBMPipeline, "sample", sample)
    results: dict[str, Any] = {}

    def run() -> None:
        results[threading.current_thread().name] = load_samples(spec, tmp_path, str(tmp_path / "cache"))

    threads = [threading.Thread(target=run, name=name) for name in ("a", "b")]
    for thread in threads:
        thread.start()
        time.sleep(0.1)
    for thread in threads:
        thread.join(timeout=60)
    assert sorted(seeds for _, seeds in made) == [(0, 1), (2, 3), (4, 5), (6, 7)]  # each batch made once
    assert {name for name, _ in made} == {"a", "b"}  # and both runs made some
    for result in results.values():
        assert torch.equal(result.images, straight.images) and torch.equal(result.labels, straight.labels)
    assert len(results) == 2 and not list((tmp_path / "cache").glob("*.partial"))


def test_a_run_waits_for_a_batch_another_holds_and_makes_it_if_that_run_dies(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A batch locked by another process is skipped, then waited for; when its holder goes away without
    writing it (killed: the OS drops its lock), the waiting run makes it itself."""
    import threading
    import time

    from filelock import FileLock

    from shared.ebm.pipeline import EBMPipeline
    from training.sources import cache_key, load_samples

    spec = _tiny_ebm(tmp_path)
    straight = load_samples(spec, tmp_path, str(tmp_path / "straight"))
    partial = tmp_path / "cache" / f"ebm-8-{cache_key(spec, tmp_path)}.partial"
    partial.mkdir(parents=True)
    holding = threading.Event()
    made: list[tuple[int, ...]] = []
    real_sample = EBMPipeline.sample

    def sample(self: EBMPipeline, params: Any, callback: Any = None) -> torch.Tensor:
        made.append(params.seeds)
        return real_sample(self, params, callback)

    def holder() -> None:  # "another process" holds batch 2-4 and dies once the run waits for it
        held = FileLock(partial / "0000002-0000004.lock")
        held.acquire()
        holding.set()
        while len(made) < 3:
            time.sleep(0.05)
        time.sleep(0.5)
        held.release()

    monkeypatch.setattr(EBMPipeline, "sample", sample)
    threading.Thread(target=holder, daemon=True).start()
    assert holding.wait(timeout=10)
    result = load_samples(spec, tmp_path, str(tmp_path / "cache"))
    assert made == [(0, 1), (4, 5), (6, 7), (2, 3)]  # the held batch last, made by this run
    assert torch.equal(result.images, straight.images)


def test_openvino_samples_are_keyed_by_the_export_form(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """OpenVINO runs the UNet's export form: a changed rewrite changes the bf16 images, so it must not reuse
    samples made through the old one; torch's keys do not depend on it."""
    from training import sources

    spec = sources.SourceSpec(model="real", n=4)  # no weights needed: the key is all this test looks at
    keys = {
        rt: sources.cache_key(dataclasses.replace(spec, runtime=rt), tmp_path) for rt in ("torch", "openvino", "auto")
    }
    monkeypatch.setattr(sources, "EXPORT_FORM", "another-rewrite")
    after = {
        rt: sources.cache_key(dataclasses.replace(spec, runtime=rt), tmp_path) for rt in ("torch", "openvino", "auto")
    }
    assert after["torch"] == keys["torch"]
    assert after["openvino"] != keys["openvino"] and after["auto"] != keys["auto"]
