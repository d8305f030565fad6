"""The standing runs: probes that decide exports (diffusion and EBM), the history file and its plot, where a
run starts (saved state, shipped weights, scratch), a stop signal that checkpoints, and EDM's EMA rule."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from torch import nn

from shared.classifier import Classifier, ClassifierConfig, load_classifier, save_classifier
from shared.diffusion.pipeline import DiffusionPipeline
from shared.diffusion.process import DiffusionConfig, GaussianDiffusion
from shared.diffusion.unet import UNet, UNetConfig
from shared.ebm.energy import EnergyConfig, EnergyNet
from shared.ebm.pipeline import EBMPipeline
from tests.training.conftest import two_class_folder
from training import quality, train_ebm_recovery
from training.common import REPO_ROOT, load_checkpoint, make_ema
from training.continue_diffusion import RECIPE, recipe_architecture, shipped_matches, starting_point
from training.quality import (
    ProbeSpec,
    QualityProbe,
    append_history,
    beats,
    history_series,
    plot_history,
    read_history,
)
from training.train_diffusion import TrainConfig, train

CLASSES = ("dark", "light")
TINY_NET = dict(
    base_channels=8, channel_mult=(1, 2), num_res_blocks=1, attention_resolutions=(), num_groups=4, dropout=0.0
)
TINY_FLAGS = [
    "--base-channels=8",
    "--channel-mult=1,2",
    "--num-res-blocks=1",
    "--attention-resolutions=",
    "--num-groups=4",
]


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A 2-class 32x32 ImageFolder (train and test) and a tiny classifier."""
    root = tmp_path_factory.mktemp("standing")
    two_class_folder(root / "data", per_class=8, classes=CLASSES)
    gen = torch.Generator().manual_seed(1)
    torch.manual_seed(0)
    net = Classifier(ClassifierConfig(stem_channels=4, widths=(8, 16), num_classes=2, class_names=CLASSES))
    # BatchNorm statistics from a batch of varied images, so that the random features do not collapse
    for module in net.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.momentum = None  # a cumulative average of the one batch
    with torch.no_grad():
        net.train()(torch.rand(64, 3, 32, 32, generator=gen) * 2 - 1)
    save_classifier(net.eval(), root / "classifier", training={"test_accuracy": 0.5})
    return {"root": root, "data": root / "data", "classifier": root / "classifier"}


def probe_spec() -> ProbeSpec:
    return ProbeSpec(n=6, sampler="ddim", steps=2, guidance_scale=2.0)  # the reference: all 16 test images


def config(setup: dict[str, Path], tmp_path: Path, **overrides: object) -> TrainConfig:
    spec = probe_spec()
    base = TrainConfig(
        data=str(setup["data"]), data_cache=str(setup["root"] / "cache"), out=str(tmp_path / "state"),
        export=str(tmp_path / "shipped"), batch_size=8, num_timesteps=100, warmup_steps=1, lr=1e-3,
        sample_images=2, sample_steps=2, device="cpu", seed=0, prediction="edm", ema_halflife_ratio=0.05,
        classifier=str(setup["classifier"]), probe_n=spec.n, probe_sampler=spec.sampler, probe_steps=spec.steps,
        probe_guidance=spec.guidance_scale, history=str(tmp_path / "history.jsonl"), run_name="test",
        export_if_better=True, **TINY_NET,  # type: ignore[arg-type]
    )  # fmt: skip
    return dataclasses.replace(base, **overrides)  # type: ignore[arg-type]


def ship(directory: Path, quality_block: dict | None, prediction: str = "edm") -> dict[str, bytes]:
    """A shipped model of the tiny architecture whose card claims `quality_block`; returns its files' bytes."""
    torch.manual_seed(1)
    unet = UNet(UNetConfig(image_size=32, num_classes=2, class_names=CLASSES, **TINY_NET))  # type: ignore[arg-type]
    diffusion = GaussianDiffusion(DiffusionConfig(num_timesteps=100, prediction=prediction))  # type: ignore[arg-type]
    training = {"images_seen_total": 8, "steps": 1} | ({"quality": quality_block} if quality_block else {})
    DiffusionPipeline(unet, diffusion).save_pretrained(directory, training=training)
    return {p.name: p.read_bytes() for p in directory.iterdir()}


def claimed(setup: dict[str, Path], fid: float, agreement: float) -> dict:
    """A score the probe will treat as comparable (same spec, same classifier)."""
    sha = load_classifier(str(setup["classifier"])).card["sha256"]  # type: ignore[index]
    return {"fid": fid, "class_agreement": agreement, "probe": probe_spec().to_dict(), "classifier_sha256": sha[:12]}


def test_probes_export_only_weights_that_beat_the_shipped_ones(setup: dict[str, Path], tmp_path: Path) -> None:
    shipped = tmp_path / "shipped"
    before = ship(shipped, claimed(setup, fid=-1.0, agreement=1.0))  # a score nothing can beat
    cfg = config(setup, tmp_path, max_steps=3, probe_every_minutes=1e-9)  # a probe after every step
    result = train(cfg)
    assert result["exported"] is False
    assert {p.name: p.read_bytes() for p in shipped.iterdir()} == before
    rows = read_history(cfg.history)  # type: ignore[arg-type]
    assert [r["step"] for r in rows] == [1, 2, 3]
    assert all(r["exported"] is False and r["run"] == "test" and r["fid"] >= 0 for r in rows)
    assert [r["images_seen_total"] for r in rows] == [8, 16, 24]  # a fresh run (no --resume): 8 per step
    assert (tmp_path / "history.png").read_bytes()[:4] == b"\x89PNG"  # the learning curve, re-plotted per probe

    ship(shipped, claimed(setup, fid=1e9, agreement=0.0))  # now anything beats it
    card = json.loads((shipped / "config.json").read_text())
    recommended = {"sampler": "ddim", "steps": 7, "guidance_scale": 2.0}
    (shipped / "config.json").write_text(json.dumps({**card, "sampling": recommended}))
    result = train(dataclasses.replace(cfg, out=str(tmp_path / "state2"), max_steps=1))
    assert result["exported"] is True
    card = json.loads((shipped / "config.json").read_text())
    assert card["training"]["quality"]["fid"] < 1e9
    assert card["training"]["images_seen_total"] == 8
    assert card["diffusion"]["prediction"] == "edm"
    assert card["sampling"] == recommended  # an export keeps the card's recommended sampling
    assert (shipped / "samples.png").is_file()
    assert read_history(cfg.history)[-1]["exported"] is True  # type: ignore[arg-type]


def ebm_config(setup: dict[str, Path], tmp_path: Path, **overrides: object) -> train_ebm_recovery.TrainConfig:
    base = train_ebm_recovery.TrainConfig(
        data=str(setup["data"]), data_cache=str(setup["root"] / "cache"), out=str(tmp_path / "ebm-state"),
        export=str(tmp_path / "ebm-shipped"), batch_size=8, base_channels=8, channel_mult=(1, 2), levels=3,
        chain_steps=2, sample_images=4, device="cpu", lr=1e-3, warmup_steps=1, serve_guidance=2.0,
        classifier=str(setup["classifier"]), probe_n=6, history=str(tmp_path / "ebm-history.jsonl"),
        run_name="ebm-test", export_if_better=True, probe_every_minutes=1e-9,  # a probe after every step
    )  # fmt: skip
    return dataclasses.replace(base, **overrides)  # type: ignore[arg-type]


def ship_ebm(directory: Path, quality_block: dict) -> dict[str, bytes]:
    """A shipped tiny recovery-likelihood EBM whose card claims `quality_block`; returns its files' bytes."""
    torch.manual_seed(1)
    energy = EnergyConfig(base_channels=8, channel_mult=(1, 2), num_classes=2, class_names=CLASSES, num_levels=3)
    training = {"images_seen_total": 8, "wall_minutes_total": 1.0, "ce_weight": 1.0, "quality": quality_block}
    EBMPipeline(EnergyNet(energy)).save_pretrained(directory, training=training, guidance_scale=2.0)
    return {p.name: p.read_bytes() for p in directory.iterdir()}


def test_the_ebm_run_exports_only_weights_that_beat_the_shipped_ones(setup: dict[str, Path], tmp_path: Path) -> None:
    cfg = ebm_config(setup, tmp_path, max_steps=3)
    # the card's chain: its steps, guidance and temperature (a probe at another noise factor is another spec)
    spec = ProbeSpec(n=6, sampler="recovery", steps=2, guidance_scale=2.0, noise_scale=cfg.serve_noise).to_dict()
    sha = load_classifier(str(setup["classifier"])).card["sha256"][:12]  # type: ignore[index]
    shipped = Path(cfg.export)
    unbeatable = {"fid": -1.0, "class_agreement": 1.0, "diversity_min": 1.0, "probe": spec, "classifier_sha256": sha}
    before = ship_ebm(shipped, unbeatable)
    cfg = dataclasses.replace(cfg, resume=str(shipped))  # a new machine's standing run: warm start from what ships
    result = train_ebm_recovery.train(cfg)
    assert result["exported"] is False
    assert {p.name: p.read_bytes() for p in shipped.iterdir()} == before
    rows = read_history(cfg.history)  # type: ignore[arg-type]
    assert [r["steps"] for r in rows] == [1, 2, 3] and all(r["run"] == "ebm-test" for r in rows)
    assert [r["images_seen_total"] for r in rows] == [16, 24, 32]  # warm start from the 8 images of the card
    assert all(r["probe"] == spec and 0 < r["diversity_min"] <= r["diversity"] for r in rows)
    assert rows[-1]["core_minutes"] >= rows[0]["core_minutes"] >= 1.0  # the card's minute, then this run's compute
    assert load_checkpoint(cfg.out)["history"]["core_seconds"] > 0  # training compute, kept across resumes
    assert (tmp_path / "ebm-history.png").read_bytes()[:4] == b"\x89PNG"

    low_fid = {**unbeatable, "fid": 1e9, "class_agreement": 0.0}
    ship_ebm(shipped, {**low_fid, "diversity_min": 1e9})  # a lower FID, but the worst class would lose diversity
    assert (
        train_ebm_recovery.train(dataclasses.replace(cfg, out=str(tmp_path / "s2"), max_steps=1))["exported"] is False
    )
    ship_ebm(shipped, {**low_fid, "diversity_min": 0.0})  # now anything beats it
    result = train_ebm_recovery.train(dataclasses.replace(cfg, out=str(tmp_path / "s3"), max_steps=1))
    assert result["exported"] is True
    card = json.loads((shipped / "config.json").read_text())
    assert card["training"]["quality"]["fid"] < 1e9 and card["training"]["quality"]["probe"] == spec
    assert card["recipe"] == "recovery-likelihood" and card["sampling"]["guidance_scale"] == 2.0
    assert (shipped / "samples.png").is_file()
    assert read_history(cfg.history)[-1]["exported"] is True  # type: ignore[arg-type]


def test_beats_needs_a_lower_fid_without_losing_agreement() -> None:
    spec = {"probe": ProbeSpec().to_dict(), "classifier_sha256": "abc"}
    old = {**spec, "fid": 50.0, "class_agreement": 0.40}
    assert beats({**spec, "fid": 49.0, "class_agreement": 0.39}, old)  # within the agreement tolerance
    assert not beats({**spec, "fid": 49.0, "class_agreement": 0.30}, old)
    assert not beats({**spec, "fid": 50.0, "class_agreement": 0.90}, old)
    other = {
        "probe": {**ProbeSpec().to_dict(), "steps": 50},
        "classifier_sha256": "abc",
        "fid": 1.0,
        "class_agreement": 1.0,
    }
    assert not beats(other, old)  # another probe: not comparable, never replaces a scored model
    assert beats(other, None)  # nothing shipped yet
    diverse = {**old, "diversity_min": 0.50}
    assert beats({**spec, "fid": 49.0, "class_agreement": 0.40, "diversity_min": 0.46}, diverse, 0.05)
    assert not beats({**spec, "fid": 49.0, "class_agreement": 0.40, "diversity_min": 0.44}, diverse, 0.05)
    assert beats({**spec, "fid": 49.0, "class_agreement": 0.40, "diversity_min": 0.10}, diverse)  # not asked to


def test_the_probe_scores_fixed_seeds_and_separates_models(setup: dict[str, Path], tmp_path: Path) -> None:
    probe = QualityProbe(probe_spec(), str(setup["classifier"]), str(setup["data"]), str(setup["root"] / "cache"))
    ship(tmp_path / "m", None)
    pipeline = DiffusionPipeline.from_pretrained(tmp_path / "m", device="cpu")
    first, again = probe.score(pipeline), probe.score(pipeline)
    assert first["fid"] == again["fid"] and first["class_agreement"] == again["class_agreement"]
    images, labels = probe.samples(pipeline)
    assert images.shape == (6, 3, 32, 32) and labels.tolist() == [0, 1, 0, 1, 0, 1]
    with torch.no_grad():
        for p in pipeline.unet.parameters():
            p.add_(0.5 * torch.randn_like(p))
    assert probe.score(pipeline)["fid"] != first["fid"]


def test_history_appends_and_plots(tmp_path: Path) -> None:
    path = tmp_path / "history.jsonl"
    for seen, fid in ((1000, 90.0), (2000, 70.0)):
        append_history(path, {"run": "a", "images_seen_total": seen, "fid": fid, "class_agreement": 0.3})
    append_history(path, {"run": "b", "images_seen_total": 1500, "fid": 80.0, "class_agreement": None})
    rows = read_history(path)
    assert [r["fid"] for r in rows] == [90.0, 70.0, 80.0] and all("date" in r for r in rows)
    png = plot_history(rows, tmp_path / "curve.png", title="t")
    assert png is not None and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_history_draws_scores_of_different_probes_as_different_lines() -> None:
    old, new = (
        ProbeSpec(n=6, sampler="recovery").to_dict(),
        ProbeSpec(n=6, sampler="recovery", noise_scale=1.05).to_dict(),
    )
    rows = [
        {"run": "standing", "images_seen_total": seen, "fid": 70.0, "probe": probe}
        for seen, probe in ((3000, new), (1000, old), (2000, old))
    ]
    series = history_series(rows)
    assert set(series) == {"standing (noise_scale -)", "standing (noise_scale 1.05)"}
    assert [r["images_seen_total"] for r in series["standing (noise_scale -)"]] == [1000, 2000]  # sorted
    assert list(history_series(rows[1:])) == ["standing"]  # one spec: the run's name alone


def test_a_run_starts_from_its_state_else_matching_shipped_weights_else_scratch(tmp_path: Path) -> None:
    cfg = dataclasses.replace(TrainConfig(), **RECIPE)
    state, shipped = tmp_path / "state", tmp_path / "shipped"
    resume, why = starting_point(cfg, state, shipped)
    assert resume is None and "from scratch" in why
    unet_cfg, process_cfg = recipe_architecture(cfg)
    unet = UNet(UNetConfig.from_dict(unet_cfg))
    DiffusionPipeline(unet, GaussianDiffusion(DiffusionConfig.from_dict(process_cfg))).save_pretrained(shipped)
    assert shipped_matches(cfg, shipped)
    resume, why = starting_point(cfg, state, shipped)
    assert resume == str(shipped) and "warm start from the shipped weights" in why
    assert not shipped_matches(dataclasses.replace(cfg, prediction="edm"), shipped)
    assert not shipped_matches(dataclasses.replace(cfg, base_channels=48), shipped)
    state.mkdir()
    torch.save({"step": 1}, state / "checkpoint.pt")
    resume, why = starting_point(cfg, state, shipped)
    assert resume == str(state) and "resuming" in why


def test_the_shipped_model_does_not_have_the_old_recipe_any_more() -> None:
    """The shipped weights are the recipe's, so a new machine's standing run warm-starts from them."""
    assert shipped_matches(dataclasses.replace(TrainConfig(), **RECIPE), REPO_ROOT / "models" / "diffusion")


@pytest.mark.slow
def test_sigterm_checkpoints_and_the_next_call_resumes(setup: dict[str, Path], tmp_path: Path) -> None:
    state, log_path = tmp_path / "state", tmp_path / "run.log"
    argv = [
        sys.executable, "-m", "training.continue_diffusion", f"--state-dir={state}", f"--export={tmp_path / 'none'}",
        f"--data={setup['data']}", f"--data-cache={setup['root'] / 'cache'}", "--batch-size=8", "--num-timesteps=100",
        "--probe-every-minutes=0", f"--history={tmp_path / 'h.jsonl'}", "--threads=1", *TINY_FLAGS,
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    with log_path.open("w") as log:
        proc = subprocess.Popen(argv, cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 120
        while "| 3/" not in log_path.read_text() and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.2)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0, log_path.read_text()[-3000:]
    text = log_path.read_text()
    assert "from scratch" in text and "interrupted (SIGTERM)" in text
    step = load_checkpoint(state)["step"]
    assert step >= 3
    done = subprocess.run(
        [*argv, f"--max-steps={step + 2}"], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "resuming the standing run" in done.stderr
    assert load_checkpoint(state)["step"] == step + 2


def test_edm_ema_half_life_grows_with_the_images_seen() -> None:
    """Karras et al. 2022: beta = 0.5 ** (batch / min(cap, ratio * images seen))."""
    model = nn.Linear(1, 1, bias=False)
    nn.init.zeros_(model.weight)
    ema = make_ema(model, 0.9999, (10, 0.5, 1e9))
    ema.update_parameters(model)  # first update copies: 0
    with torch.no_grad():
        model.weight.fill_(1.0)
    ema.update_parameters(model)  # images seen 20 -> half-life 10 = one batch -> beta 0.5
    assert ema.module.weight.item() == pytest.approx(0.5)
    ema.update_parameters(model)  # images 30 -> half-life 15 -> beta 0.5 ** (10 / 15)
    beta = 0.5 ** (10 / 15)
    assert ema.module.weight.item() == pytest.approx(beta * 0.5 + (1 - beta))
    assert quality.AGREEMENT_TOLERANCE > 0


def test_the_study_scores_each_snapshot_once(
    setup: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from training import study_diffusion

    for run, minutes in (("edm-tiny", 4), ("edm-tiny", 8), ("v-tiny", 4)):
        snapshot = tmp_path / "study" / run / "snapshots" / f"min_{minutes:03d}"
        ship(snapshot, None, prediction=run.split("-")[0])
        card = json.loads((snapshot / "config.json").read_text())
        card["training"].update(core_minutes=minutes, images_seen_total=100 * minutes)
        (snapshot / "config.json").write_text(json.dumps(card))
    record = tmp_path / "study.jsonl"  # the repository's record: a candidate scored on another machine
    append_history(record, {"run": "eps-other", "core_minutes": 8, "images_seen_total": 700, "fid": 90.0,
                            "class_agreement": 0.2, "hardware": "another CPU"})  # fmt: skip
    argv = [str(tmp_path / "study"), "--n=4", f"--classifier={setup['classifier']}", f"--data={setup['data']}",
            f"--data-cache={setup['root'] / 'cache'}", f"--plot={tmp_path / 'study.png'}",
            f"--record={record}"]  # fmt: skip
    assert study_diffusion.main(argv) == 0
    rows = read_history(tmp_path / "study" / "probes.jsonl")
    assert sorted((r["run"], r["core_minutes"]) for r in rows) == [("edm-tiny", 4), ("edm-tiny", 8), ("v-tiny", 4)]
    assert all(r["serving_seconds_1000_steps"] > 0 and r["probe"]["n"] == 4 for r in rows)
    recorded = read_history(record)
    assert [r["run"] for r in recorded[1:]] == [r["run"] for r in rows] and all(r["hardware"] for r in recorded)
    table = capsys.readouterr().out
    assert "| edm-tiny | 8 | 800 |" in table and (tmp_path / "study.png").is_file()
    assert "| eps-other | 8 | 700 | 90.0 | 0.200 | - | another CPU |" in table  # the other machine's row too
    assert study_diffusion.main(argv) == 0  # nothing new: no second score
    assert len(read_history(tmp_path / "study" / "probes.jsonl")) == 3 and len(read_history(record)) == 4


def test_the_hardware_names_the_cpus_widest_vector_extension(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Machines of one model name ("AMD EPYC") differ in AVX512-BF16, which changes training speed 1.5x."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("model name\t: AMD EPYC\nflags\t\t: fpu sse2 avx2 avx512f avx512_bf16\n")
    assert quality.hardware(str(cpuinfo)).startswith("AMD EPYC (avx512_bf16), ")
    cpuinfo.write_text("model name\t: AMD EPYC\nflags\t\t: fpu sse2 avx2\n")
    assert quality.hardware(str(cpuinfo)).startswith("AMD EPYC (avx2), ")
    assert quality.hardware(str(tmp_path / "missing")).endswith("thread(s)")
