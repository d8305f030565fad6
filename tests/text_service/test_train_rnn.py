"""The LSTM trainer on a tiny synthetic book: the loss goes down, a stopped and resumed run ends
with the same weights as an uninterrupted one, warm starts, the time budget, and the export that
the service and the evaluation script read."""

from __future__ import annotations

import dataclasses
import itertools
from pathlib import Path

import pytest
import torch

from shared.text.corpus import load_corpus
from shared.text.lstm import load_lstm
from training import evaluate_text
from training.common import load_checkpoint
from training.train_rnn import TrainConfig, batchify, init_state, main, train, train_step, windows


def config(tmp_path: Path, book: Path, **overrides: object) -> TrainConfig:
    base = TrainConfig(
        corpus=str(book),
        heldout_chapters=2,
        out=str(tmp_path / "run"),
        export=str(tmp_path / "model"),
        epochs=2,
        batch_size=4,
        seq_len=8,
        lr=1e-2,
        warmup_steps=1,
        vocab_size=40,
        embedding_dim=16,
        hidden_dim=16,
        num_layers=1,
        dropout=0.1,
        device="cpu",
        checkpoint_every=1000,
    )
    return dataclasses.replace(base, **overrides)  # type: ignore[arg-type]


def test_a_few_dozen_steps_lower_the_loss(tmp_path: Path, tiny_book_path: Path) -> None:
    cfg = config(tmp_path, tiny_book_path, dropout=0.0)
    train_text, _ = load_corpus(cfg.corpus).split(cfg.heldout_chapters)
    state = init_state(cfg, train_text, torch.device("cpu"), total_steps=100)
    streams = batchify(state.tokenizer.encode(train_text), cfg.batch_size)
    losses = [train_step(state, x, y, start, cfg) for x, y, start in itertools.islice(windows(state, streams, cfg), 60)]
    assert sum(losses[-10:]) / 10 < 0.9 * sum(losses[:3]) / 3
    assert state.step == 60


def test_a_resumed_run_ends_exactly_where_an_uninterrupted_one_does(tmp_path: Path, tiny_book_path: Path) -> None:
    whole = config(tmp_path / "a", tiny_book_path, max_steps=70)  # crosses an epoch boundary (57 steps/epoch)
    train(whole)
    first = config(tmp_path / "b", tiny_book_path, max_steps=40)
    train(first)
    assert load_checkpoint(first.out)["step"] == 40
    train(dataclasses.replace(first, max_steps=70, resume=first.out))
    a, b = load_checkpoint(whole.out), load_checkpoint(first.out)
    assert a["step"] == b["step"] == 70
    for name, tensor in a["model"].items():
        assert torch.equal(tensor, b["model"][name]), name
    assert load_lstm(first.export)[1].display == load_lstm(whole.export)[1].display == {"marseilles": "Marseilles"}


def test_export_holds_weights_tokenizer_and_heldout_perplexities(tmp_path: Path, tiny_book_path: Path) -> None:
    cfg = config(tmp_path, tiny_book_path)
    result = train(cfg)
    model, tokenizer, card = load_lstm(cfg.export)
    heldout = card["training"]["heldout"]
    assert result["heldout"] == heldout and card["training"]["steps"] == result["steps"] > 0
    assert heldout["heldout_tokens"] > 100 and heldout["bigram_best_k"] in evaluate_text.DEFAULT_KS
    assert heldout["lstm_perplexity"] < len(tokenizer)  # better than uniform after two epochs
    assert model.config.vocab_size == len(tokenizer) <= cfg.vocab_size


def test_warm_start_from_a_model_directory_counts_tokens_seen_before(tmp_path: Path, tiny_book_path: Path) -> None:
    first = config(tmp_path / "a", tiny_book_path, max_steps=5)
    train(first)
    second = config(tmp_path / "b", tiny_book_path, max_steps=3, resume=first.export)
    result = train(second)
    assert result["tokens_seen_total"] == (5 + 3) * first.batch_size * first.seq_len
    assert result["warm_started_from"] and len(result["warm_started_from"]) == 64


def test_the_time_budget_stops_the_run_and_still_exports(tmp_path: Path, tiny_book_path: Path) -> None:
    cfg = config(tmp_path, tiny_book_path, max_minutes=1e-6)
    result = train(cfg)
    assert result["steps"] == 1
    assert (Path(cfg.export) / "model.safetensors").is_file()


def test_the_cli_and_the_evaluation_script_run_end_to_end(
    tmp_path: Path, tiny_book_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["--corpus", str(tiny_book_path), "--heldout-chapters", "2", "--out", str(tmp_path / "run")]
    args += ["--export", str(tmp_path / "model"), "--epochs", "3", "--batch-size", "4", "--seq-len", "8"]
    args += ["--vocab-size", "40", "--embedding-dim", "16", "--hidden-dim", "16", "--num-layers", "1"]
    args += ["--lr", "1e-2", "--warmup-steps", "1", "--device", "cpu"]
    assert main(args) == 0
    capsys.readouterr()
    code = evaluate_text.main(
        ["--lstm", str(tmp_path / "model"), "--corpus", str(tiny_book_path), "--heldout-chapters", "2"]
    )
    report = capsys.readouterr().out
    assert "word LSTM" in report and "k=0.01" in report and "best k" in report
    assert code == (0 if "the LSTM beats" in report else 1)
