"""The diffusion trainer on a tiny synthetic ImageFolder: loss goes down, checkpoints resume exactly,
warm starts load shipped weights, and the exported weights feed the sampling entry point."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
from PIL import Image

from diffusion_worker import sample as sample_cli
from shared.diffusion.pipeline import DiffusionPipeline
from training.common import DivergenceError, load_checkpoint
from training.data import load_image_dataset
from training.train_diffusion import TrainConfig, init_state, main, train, train_step

TINY_NET = dict(
    base_channels=8,
    channel_mult=(1, 2),
    num_res_blocks=1,
    attention_resolutions=(4,),
    num_heads=2,
    num_groups=4,
    dropout=0.0,
)


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two classes of 8x8 images: reddish squares with noise, bluish stripes."""
    root = tmp_path_factory.mktemp("tiny-data")
    gen = torch.Generator().manual_seed(0)
    for label, name in enumerate(("reds", "stripes")):
        folder = root / "train" / name
        folder.mkdir(parents=True)
        for k in range(16):
            img = torch.zeros(8, 8, 3)
            if label == 0:
                img[..., 0] = 0.8
            else:
                img[::2, :, 2] = 0.9
            img = (img + 0.1 * torch.rand(8, 8, 3, generator=gen)).clamp(0, 1)
            Image.fromarray((img * 255).to(torch.uint8).numpy()).save(folder / f"{k}.png")
    return root


def config(tmp_path: Path, data: Path, **overrides: object) -> TrainConfig:
    base = TrainConfig(
        data=str(data),
        data_cache=str(tmp_path / "cache"),
        out=str(tmp_path / "run"),
        export=str(tmp_path / "model"),
        batch_size=8,
        num_timesteps=100,
        warmup_steps=1,
        lr=1e-3,
        checkpoint_every=1000,
        sample_every=1000,
        sample_images=4,
        sample_steps=2,
        device="cpu",
        seed=0,
        **TINY_NET,  # type: ignore[arg-type]
    )
    return dataclasses.replace(base, **overrides)  # type: ignore[arg-type]


def test_a_few_steps_lower_the_loss(tmp_path: Path, tiny_data: Path) -> None:
    cfg = config(tmp_path, tiny_data, min_snr_gamma=0.0, label_dropout=0.0)
    dataset = load_image_dataset(cfg.data, cache_dir=cfg.data_cache)
    state = init_state(cfg, dataset, torch.device("cpu"))
    x0 = dataset.images.float() / 127.5 - 1
    labels = dataset.labels
    gen = torch.Generator().manual_seed(1)
    t = torch.randint(0, 100, (len(x0),), generator=gen)
    noise = torch.randn(x0.shape, generator=gen)

    def held_out_loss() -> float:
        with torch.no_grad():
            return state.diffusion.training_loss(state.unet, x0, labels, t=t, noise=noise).item()

    before = held_out_loss()
    for _ in range(40):
        train_step(state, state.unet, x0[:8], labels[:8], cfg)
        train_step(state, state.unet, x0[16:24], labels[16:24], cfg)
    after = held_out_loss()
    assert state.step == 80
    assert after < 0.7 * before, (before, after)


def test_resume_continues_exactly_where_it_stopped(tmp_path: Path, tiny_data: Path) -> None:
    straight = train(config(tmp_path / "a", tiny_data, max_steps=6))
    train(config(tmp_path / "b", tiny_data, max_steps=3))
    first_half = load_checkpoint(tmp_path / "b" / "run")
    assert first_half["step"] == 3
    resumed = train(config(tmp_path / "b", tiny_data, max_steps=6, resume=str(tmp_path / "b" / "run")))

    assert straight["steps"] == resumed["steps"] == 6
    a, b = load_checkpoint(tmp_path / "a" / "run"), load_checkpoint(tmp_path / "b" / "run")
    for key in ("model", "ema"):
        for name, tensor in a[key].items():
            assert torch.allclose(tensor, b[key][name], atol=1e-6), f"{key}.{name} differs after resume"
    assert a["optimizer"]["state"][0]["step"] == b["optimizer"]["state"][0]["step"] == 6
    assert not all(torch.equal(first_half["model"][k], b["model"][k]) for k in first_half["model"])


def test_checkpoint_round_trips(tmp_path: Path, tiny_data: Path) -> None:
    cfg = config(tmp_path, tiny_data, max_steps=2)
    train(cfg)
    checkpoint = load_checkpoint(Path(cfg.out) / "checkpoint.pt")
    dataset = load_image_dataset(cfg.data, cache_dir=cfg.data_cache)
    restored = init_state(dataclasses.replace(cfg, resume=cfg.out), dataset, torch.device("cpu"))
    assert restored.step == 2
    for name, tensor in restored.unet.state_dict().items():
        assert torch.equal(tensor, checkpoint["model"][name])
    moments = restored.optimizer.state_dict()["state"]
    assert len(moments) == len(list(restored.unet.parameters()))
    for index, saved in checkpoint["optimizer"]["state"].items():
        assert torch.equal(moments[index]["exp_avg"], saved["exp_avg"])
    assert sum(m["exp_avg"].abs().sum() for m in moments.values()) > 0


def test_exported_weights_warm_start_a_new_run(tmp_path: Path, tiny_data: Path) -> None:
    first = config(tmp_path / "first", tiny_data, max_steps=3)
    train(first)
    shipped = DiffusionPipeline.from_pretrained(first.export, device="cpu")
    card_path = Path(first.export) / "config.json"
    card = json.loads(card_path.read_text())
    assert card["training"]["images_seen_total"] == 3 * 8
    card["training"]["core_minutes"] = 5.0  # as if these weights had cost five core-minutes so far
    card_path.write_text(json.dumps(card))

    second = config(tmp_path / "second", tiny_data, max_steps=2, resume=first.export, base_channels=16)
    dataset = load_image_dataset(second.data, cache_dir=second.data_cache)
    state = init_state(second, dataset, torch.device("cpu"))
    assert state.unet.config == shipped.config  # architecture comes from the weights, not the flags
    assert state.step == 0
    for name, tensor in shipped.unet.state_dict().items():
        assert torch.equal(state.unet.state_dict()[name], tensor)
        assert torch.equal(state.ema.module.state_dict()[name], tensor)
    assert int(state.ema.n_averaged) == 3  # the average continues instead of restarting its warm-up
    result = train(second)
    assert result["images_seen_total"] == 3 * 8 + 2 * 8
    assert result["warm_started_from"] == shipped.card["sha256"]
    # compute adds up across warm starts too (a new machine's standing run continues the card's totals)
    assert 5.0 <= result["core_minutes"] < 6.0


def test_time_budget_stops_cleanly_and_still_exports(tmp_path: Path, tiny_data: Path) -> None:
    cfg = config(tmp_path, tiny_data, epochs=1000, max_minutes=1e-6)
    result = train(cfg)
    assert result["steps"] == 1  # one step always runs, then the budget check stops the run
    assert (Path(cfg.export) / "model.safetensors").is_file()
    assert load_checkpoint(cfg.out)["step"] == 1


def test_cli_trains_exports_and_the_sampler_turns_it_into_a_grid(
    tmp_path: Path, tiny_data: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    export = tmp_path / "model"
    args = [
        "--data",
        str(tiny_data),
        "--data-cache",
        str(tmp_path / "cache"),
        "--out",
        str(tmp_path / "run"),
        "--export",
        str(export),
        "--epochs",
        "1",
        "--batch-size",
        "8",
        "--num-timesteps",
        "50",
        "--base-channels",
        "8",
        "--channel-mult",
        "1,2",
        "--num-res-blocks",
        "1",
        "--attention-resolutions",
        "4",
        "--num-heads",
        "2",
        "--num-groups",
        "4",
        "--sample-images",
        "4",
        "--sample-steps",
        "2",
        "--device",
        "cpu",
    ]
    assert main(args) == 0
    assert "diffusion" in capsys.readouterr().err  # the tqdm bar
    card = json.loads((export / "config.json").read_text())
    assert card["training"]["steps"] == 4  # 32 images / batch 8, one epoch
    assert card["unet"]["class_names"] == ["reds", "stripes"]
    assert (export / "samples.png").is_file() and (tmp_path / "run" / "samples" / "step_0000004.png").is_file()

    grid = tmp_path / "grid.png"
    assert sample_cli.main(["--weights", str(export), "--n", "4", "--steps", "50", "--out", str(grid)]) == 0
    assert Image.open(grid).size == (2 + 2 * 10, 2 + 2 * 10)  # 2x2 grid of 8x8 with padding 2
    assert len(list((tmp_path / "grid_images").glob("*.png"))) == 4


def test_a_nan_loss_stops_the_run_without_exporting(
    tmp_path: Path, tiny_data: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from training import train_diffusion

    real = train_diffusion.train_step
    calls = {"n": 0}

    def nan_at_3(*args: object) -> float:
        calls["n"] += 1
        value = real(*args)  # type: ignore[arg-type]
        return float("nan") if calls["n"] == 3 else value

    monkeypatch.setattr(train_diffusion, "train_step", nan_at_3)
    cfg = config(tmp_path, tiny_data, max_steps=6)
    with pytest.raises(DivergenceError, match="nan at step 3"):
        train(cfg)
    assert not (Path(cfg.export) / "model.safetensors").exists()


def test_a_shorter_fresh_run_does_not_replace_a_longer_trained_export(tmp_path: Path, tiny_data: Path) -> None:
    long_run = config(tmp_path / "long", tiny_data, max_steps=4)
    assert train(long_run)["exported"]
    shipped = (Path(long_run.export) / "model.safetensors").read_bytes()
    short = config(tmp_path / "short", tiny_data, max_steps=1, export=long_run.export)
    assert not train(short)["exported"]
    assert (Path(long_run.export) / "model.safetensors").read_bytes() == shipped
    assert train(dataclasses.replace(short, overwrite_export=True))["exported"]
    assert (Path(long_run.export) / "model.safetensors").read_bytes() != shipped
