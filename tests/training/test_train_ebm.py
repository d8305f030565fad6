"""The EBM trainer on a tiny synthetic ImageFolder: steps run, checkpoints round-trip, divergence is
caught and rolled back, and the exported weights feed the sampling CLI."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
from PIL import Image

from ebm_worker import sample as sample_cli
from shared.ebm.objective import CDTerms
from shared.ebm.pipeline import EBMPipeline
from training import train_ebm
from training.common import load_checkpoint
from training.data import load_image_dataset
from training.train_ebm import DivergenceError, TrainConfig, init_state, main, train, train_step


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("tiny-ebm-data")
    gen = torch.Generator().manual_seed(0)
    for label, name in enumerate(("dark", "light")):
        folder = root / "train" / name
        folder.mkdir(parents=True)
        for k in range(16):
            img = (0.2 + 0.6 * label + 0.1 * torch.rand(8, 8, 3, generator=gen)).clamp(0, 1)
            Image.fromarray((img * 255).to(torch.uint8).numpy()).save(folder / f"{k}.png")
    return root


def config(tmp_path: Path, data: Path, **overrides: object) -> TrainConfig:
    base = TrainConfig(
        data=str(data), data_cache=str(tmp_path / "cache"), out=str(tmp_path / "run"), export=str(tmp_path / "model"),
        batch_size=8, base_channels=8, channel_mult=(1, 2), buffer_size=64, langevin_steps=3, serve_steps=3,
        checkpoint_every=2, sample_every=1000, sample_images=4, device="cpu", lr=1e-3,
    )  # fmt: skip
    return dataclasses.replace(base, **overrides)  # type: ignore[arg-type]


def test_training_steps_run_and_refresh_the_buffer(tmp_path: Path, tiny_data: Path) -> None:
    cfg = config(tmp_path, tiny_data)
    dataset = load_image_dataset(cfg.data, cache_dir=cfg.data_cache)
    state = init_state(cfg, dataset, torch.device("cpu"))
    buffer_before = state.buffer.images.clone()
    weights_before = [p.detach().clone() for p in state.net.parameters()]
    x = dataset.images[:8].float() / 127.5 - 1
    for _ in range(3):
        terms = train_step(state, x, dataset.labels[:8], cfg)
    assert state.step == 3
    assert torch.isfinite(terms.loss) and terms.cross_entropy > 0  # JEM: the classifier term is on
    assert not torch.equal(state.buffer.images, buffer_before)  # chains ended somewhere new
    assert any(not torch.equal(a, b) for a, b in zip(weights_before, state.net.parameters(), strict=True))


def test_a_batch_larger_than_the_data_is_an_error_not_an_empty_export(tmp_path: Path, tiny_data: Path) -> None:
    cfg = config(tmp_path, tiny_data, batch_size=64)  # 32 images
    with pytest.raises(ValueError, match="batch size 64 is larger than the dataset"):
        train(cfg)
    assert not (tmp_path / "model").exists()


def test_checkpoint_round_trip_and_resume(tmp_path: Path, tiny_data: Path) -> None:
    cfg = config(tmp_path, tiny_data, max_steps=3)
    result = train(cfg)
    assert result["steps"] == 3 and result["restores"] == 0
    checkpoint = load_checkpoint(cfg.out)
    dataset = load_image_dataset(cfg.data, cache_dir=cfg.data_cache)
    state = init_state(dataclasses.replace(cfg, resume=cfg.out), dataset, torch.device("cpu"))
    assert state.step == 3
    assert torch.equal(state.buffer.images, checkpoint["buffer"]["images"])
    for name, tensor in state.net.state_dict().items():
        assert torch.equal(tensor, checkpoint["model"][name])
    resumed = train(dataclasses.replace(cfg, resume=cfg.out, max_steps=5))
    assert resumed["steps"] == 5


def test_injected_blow_up_restores_the_last_good_checkpoint(
    tmp_path: Path, tiny_data: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    cfg = config(tmp_path, tiny_data, max_steps=6, checkpoint_every=2)
    real_step = train_ebm.train_step
    calls = {"n": 0}
    saved: dict[str, torch.Tensor] = {}

    def blow_up_once(state: train_ebm.TrainState, x: torch.Tensor, y: torch.Tensor, c: TrainConfig) -> CDTerms:
        calls["n"] += 1
        terms = real_step(state, x, y, c)
        if calls["n"] == 2:  # step 2 is checkpointed; remember what the checkpoint holds
            saved.update({k: v.clone() for k, v in state.net.state_dict().items()})
        if calls["n"] == 3:
            return dataclasses.replace(terms, loss=torch.tensor(float("nan")), energy_pos=float("nan"))
        return terms

    monkeypatch.setattr(train_ebm, "train_step", blow_up_once)
    result = train(cfg)
    assert result["restores"] == 1 and result["steps"] == 6
    assert "divergence (loss is nan)" in caplog.text and "restored the checkpoint of step 2" in caplog.text
    assert calls["n"] == 7  # step 3 was redone after the roll-back
    card = json.loads((Path(cfg.export) / "config.json").read_text())
    assert card["training"]["restores"] == 1


def test_runaway_energies_count_as_divergence_and_stop_without_export(
    tmp_path: Path, tiny_data: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = config(tmp_path, tiny_data, max_steps=6, max_restores=2, divergence_threshold=10.0)

    def always_huge(state: train_ebm.TrainState, x: torch.Tensor, y: torch.Tensor, c: TrainConfig) -> CDTerms:
        state.step += 1
        return CDTerms(torch.tensor(1.0), energy_pos=-1e4, energy_neg=3.0, cross_entropy=0.0)

    monkeypatch.setattr(train_ebm, "train_step", always_huge)
    with pytest.raises(DivergenceError, match="after 2 restores"):
        train(cfg)
    assert not (Path(cfg.export) / "model.safetensors").exists()  # nothing garbage was exported
    assert main(["--data", str(tiny_data), *_cli_args(tmp_path), "--max-restores", "0",
                 "--divergence-threshold", "10"]) == 1  # fmt: skip


def _cli_args(tmp_path: Path) -> list[str]:
    return [
        "--recipe", "persistent", "--data-cache", str(tmp_path / "cache"), "--out", str(tmp_path / "cli-run"),
        "--export", str(tmp_path / "cli-model"),
        "--batch-size", "8", "--base-channels", "8", "--channel-mult", "1,2", "--buffer-size", "64",
        "--langevin-steps", "3", "--serve-steps", "4", "--sample-images", "4", "--device", "cpu", "--epochs", "1",
    ]  # fmt: skip


def test_cli_trains_exports_and_the_sampler_turns_it_into_a_grid(tmp_path: Path, tiny_data: Path) -> None:
    assert main(["--data", str(tiny_data), *_cli_args(tmp_path), "--serve-step-size", "3.5"]) == 0
    export = tmp_path / "cli-model"
    card = json.loads((export / "config.json").read_text())
    assert card["kind"] == "ebm-cnn" and card["training"]["steps"] == 4  # 32 images / batch 8
    assert card["sampling"]["steps"] == 4 and card["energy"]["class_names"] == ["dark", "light"]
    assert (export / "samples.png").is_file()
    pipeline = EBMPipeline.from_pretrained(export, device="cpu")
    assert pipeline.default_langevin.steps == 4
    # the serving chain's step size is its own; the training chains kept theirs (2.0, the default)
    assert pipeline.default_langevin.step_size == 3.5 and card["training"]["langevin_train"]["step_size"] == 2.0

    grid = tmp_path / "ebm.png"
    assert sample_cli.main(["--weights", str(export), "--n", "4", "--class-label", "all", "--out", str(grid)]) == 0
    assert Image.open(grid).size == (22, 22)  # 2x2 grid of 8x8 images, padding 2
    assert len(list((tmp_path / "ebm_images").glob("*.png"))) == 4
