"""Train the word-level LSTM on The Count of Monte Cristo and export it to models/lstm.

    python -m training.train_rnn --max-minutes 20
    python -m training.train_rnn --resume runs/rnn          # continue a run exactly
    python -m training.train_rnn --resume models/lstm       # warm start from the shipped weights

The training chapters (all but the last --heldout-chapters) become one token stream, cut into
--batch-size parallel streams read in --seq-len windows with the LSTM state carried from window to
window (truncated backpropagation through time, as in Zaremba et al. 2014). Each epoch starts at a
seeded random offset, so windows differ between epochs and a resumed run reads the same ones.
AdamW, linear warm-up then cosine decay (Loshchilov & Hutter 2017), gradient clipping. At the end
the held-out perplexities of the LSTM and of add-k bigrams go into the exported model card.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from shared.device import pick_device
from shared.text.corpus import CORPUS_PATH, DEFAULT_HELDOUT_CHAPTERS, load_corpus
from shared.text.lstm import LSTMConfig, LSTMState, WordLSTM, load_lstm, perplexity, save_lstm
from shared.text.tokenizer import WordTokenizer, tokenize
from shared.weights import count_parameters
from training.common import (
    Budget,
    add_dataclass_arguments,
    configure_logging,
    dataclass_from_args,
    is_checkpoint,
    load_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
    warmup_lambda,
)
from training.evaluate_text import format_report, heldout_report

logger = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parent.parent
_NET = LSTMConfig(vocab_size=1)  # defaults of the network fields


@dataclass(frozen=True)
class TrainConfig:
    # data and files
    corpus: str = str(CORPUS_PATH)
    heldout_chapters: int = DEFAULT_HELDOUT_CHAPTERS
    out: str = "runs/rnn"
    export: str = str(REPO_ROOT / "models" / "lstm")
    resume: str | None = None
    # length of the run
    epochs: int = 7
    batch_size: int = 32
    seq_len: int = 64
    max_minutes: float | None = None
    max_steps: int | None = None
    # optimisation
    lr: float = 3e-3
    min_lr_ratio: float = 0.05
    warmup_steps: int = 100
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    # tokenizer and network (ignored when resuming: the checkpoint or weights fix them)
    vocab_size: int = 10_000
    embedding_dim: int = _NET.embedding_dim
    hidden_dim: int = _NET.hidden_dim
    num_layers: int = _NET.num_layers
    dropout: float = _NET.dropout
    tie_weights: bool = _NET.tie_weights
    # hardware and bookkeeping
    device: str = "auto"
    seed: int = 0
    checkpoint_every: int = 200
    eval_every: int = 0


HELP = {
    "corpus": "the stripped book (a raw Project Gutenberg file works too)",
    "heldout_chapters": "the last N chapters are held out for perplexity",
    "out": "run directory: checkpoint.pt",
    "export": "where the inference weights (safetensors + config.json + tokenizer.json) are written",
    "resume": "a run directory / checkpoint.pt (exact continuation) or a model directory (warm start)",
    "epochs": "passes over the training chapters; the cosine schedule spans all of them",
    "max_minutes": "stop cleanly (checkpoint + export) after this much wall time",
    "max_steps": "stop after this many optimiser steps in total (the LR schedule still spans --epochs)",
    "vocab_size": "vocabulary cap, <unk> included",
    "min_lr_ratio": "the cosine schedule ends at lr * min_lr_ratio",
    "eval_every": "steps between held-out perplexity checks (0: only at the end)",
}


@dataclass
class TrainState:
    model: WordLSTM
    tokenizer: WordTokenizer
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    step: int = 0
    hidden: LSTMState | None = None
    history: dict[str, Any] = field(default_factory=dict)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_dataclass_arguments(parser, TrainConfig, HELP)
    return parser


def cosine_lambda(total_steps: int, warmup_steps: int, min_ratio: float) -> Callable[[int], float]:
    """Linear warm-up, then cosine decay from 1 to `min_ratio` at `total_steps` (Loshchilov & Hutter
    2017, Eq. 5, without restarts)."""
    warmup = warmup_lambda(warmup_steps)

    def factor(step: int) -> float:
        progress = min(1.0, step / max(1, total_steps))
        return warmup(step) * (min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress)))

    return factor


def batchify(ids: Sequence[int], batch_size: int) -> torch.Tensor:
    """One token stream -> (batch_size, n) parallel streams (the tail that does not fit is dropped)."""
    n = len(ids) // batch_size
    if n < 3:
        raise ValueError(f"{len(ids)} training tokens are too few for batch size {batch_size}")
    return torch.tensor(list(ids[: n * batch_size])).view(batch_size, n)  # (B, n)


def steps_per_epoch(num_tokens: int, batch_size: int, seq_len: int) -> int:
    """Windows per epoch; one window of slack leaves room for the random start offset."""
    steps = (num_tokens // batch_size - 1) // seq_len - 1
    if steps < 1:
        raise ValueError(f"{num_tokens} tokens are too few for --batch-size {batch_size} and --seq-len {seq_len}")
    return steps


def windows(
    state: TrainState, streams: torch.Tensor, cfg: TrainConfig
) -> Iterator[tuple[torch.Tensor, torch.Tensor, bool]]:
    """Endless (inputs, targets, epoch_start) windows, (B, T) each. Epoch e starts at an offset drawn
    from a generator seeded with (seed, e); a resumed run skips the windows already done."""
    per_epoch = steps_per_epoch(streams.numel(), cfg.batch_size, cfg.seq_len)
    while True:
        epoch, done = divmod(state.step, per_epoch)
        generator = torch.Generator().manual_seed(cfg.seed * 1_000_003 + epoch)
        offset = int(torch.randint(0, cfg.seq_len, (1,), generator=generator))
        for i in range(done, per_epoch):
            lo = offset + i * cfg.seq_len
            yield streams[:, lo : lo + cfg.seq_len], streams[:, lo + 1 : lo + cfg.seq_len + 1], i == 0


def init_state(cfg: TrainConfig, train_text: str, device: torch.device, total_steps: int) -> TrainState:
    """A fresh run, an exact continuation of a checkpoint, or a warm start from shipped weights."""
    checkpoint = load_checkpoint(cfg.resume) if cfg.resume and is_checkpoint(cfg.resume) else None
    warm = load_lstm(cfg.resume) if cfg.resume and checkpoint is None else None
    if checkpoint is not None:
        tokenizer = WordTokenizer.from_dict(checkpoint["tokenizer"])
        model = WordLSTM(LSTMConfig.from_dict(checkpoint["lstm_config"]))
    elif warm is not None:
        model, tokenizer, _ = warm
        model.train()
    else:
        tokenizer = WordTokenizer.build(train_text, cfg.vocab_size)
        net = dict(embedding_dim=cfg.embedding_dim, hidden_dim=cfg.hidden_dim, num_layers=cfg.num_layers)
        model = WordLSTM(LSTMConfig(len(tokenizer), dropout=cfg.dropout, tie_weights=cfg.tie_weights, **net))
    model.to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    schedule = cosine_lambda(total_steps, cfg.warmup_steps, cfg.min_lr_ratio)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    state = TrainState(model, tokenizer, optimizer, scheduler)
    if checkpoint is not None:
        model.load_state_dict(checkpoint["model"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        scheduler.load_state_dict(checkpoint["scheduler"])
        state.step, state.history = checkpoint["step"], checkpoint["history"]
        hidden = checkpoint["hidden"]
        state.hidden = None if hidden is None else (hidden[0].to(device), hidden[1].to(device))
        set_rng_state(checkpoint["rng"])
        logger.info("resumed %s at step %d", cfg.resume, state.step)
    elif warm is not None:
        previous = warm[2].get("training", {})
        state.history = {
            "tokens_seen_before": previous.get("tokens_seen_total", 0),
            "warm_started_from": warm[2].get("sha256", ""),
        }
        logger.info("warm start from %s (%s tokens seen before)", cfg.resume, state.history["tokens_seen_before"])
    return state


def checkpoint_state(state: TrainState, cfg: TrainConfig) -> dict[str, Any]:
    return {
        "model": state.model.state_dict(),
        "optimizer": state.optimizer.state_dict(),
        "scheduler": state.scheduler.state_dict(),
        "step": state.step,
        "hidden": None if state.hidden is None else tuple(h.cpu() for h in state.hidden),
        "history": state.history,
        "rng": rng_state(),
        "tokenizer": state.tokenizer.to_dict(),
        "lstm_config": state.model.config.to_dict(),
        "train_config": dataclasses.asdict(cfg),
    }


def train_step(state: TrainState, x: torch.Tensor, y: torch.Tensor, epoch_start: bool, cfg: TrainConfig) -> float:
    """One optimiser step on one (B, T) window; returns the mean cross-entropy (nats per token)."""
    if epoch_start:
        state.hidden = None
    logits, hidden = state.model(x, state.hidden)  # (B, T, V)
    state.hidden = (hidden[0].detach(), hidden[1].detach())  # truncated BPTT: no gradient across windows
    loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))
    state.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    nn.utils.clip_grad_norm_(state.model.parameters(), cfg.grad_clip)
    state.optimizer.step()
    state.scheduler.step()
    state.step += 1
    return loss.item()


def summary(state: TrainState, cfg: TrainConfig, per_epoch: int, loss: float, seconds: float) -> dict[str, Any]:
    tokens = state.step * cfg.batch_size * cfg.seq_len
    return {
        "steps": state.step,
        "epochs": round(state.step / per_epoch, 3),
        "tokens_seen": tokens,
        "tokens_seen_total": tokens + state.history.get("tokens_seen_before", 0),
        "warm_started_from": state.history.get("warm_started_from"),
        "final_loss_ema": round(loss, 4),
        "wall_minutes_this_run": round(seconds / 60, 2),
        "batch_size": cfg.batch_size,
        "seq_len": cfg.seq_len,
        "lr": cfg.lr,
        "corpus": Path(cfg.corpus).name,
        "heldout_chapters": cfg.heldout_chapters,
        "device": str(next(state.model.parameters()).device),
        "finished_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def train(cfg: TrainConfig) -> dict[str, Any]:
    """Run the training loop, export, and evaluate the exported weights; returns the model card's
    training summary (held-out perplexities included)."""
    device = pick_device(cfg.device)
    torch.manual_seed(cfg.seed)
    train_text, heldout_text = load_corpus(cfg.corpus).split(cfg.heldout_chapters)
    per_epoch = steps_per_epoch(len(tokenize(train_text)), cfg.batch_size, cfg.seq_len)
    total_steps = cfg.epochs * per_epoch
    state = init_state(cfg, train_text, device, total_steps)
    streams = batchify(state.tokenizer.encode(train_text), cfg.batch_size).to(device)
    heldout_ids = state.tokenizer.encode(heldout_text)
    stop_at = total_steps if cfg.max_steps is None else min(total_steps, cfg.max_steps)
    out = Path(cfg.out)
    logger.info(
        "training a %d-parameter LSTM on %s: %d tokens, vocabulary %d, %d steps/epoch, up to step %d",
        count_parameters(state.model),
        device,
        streams.numel(),
        len(state.tokenizer),
        per_epoch,
        stop_at,
    )
    budget, loss_ema, reason = Budget(cfg.max_minutes), math.nan, "finished"
    bar = tqdm(total=stop_at, initial=state.step, desc="lstm", unit="step", dynamic_ncols=True)
    state.model.train()
    try:
        for x, y, epoch_start in windows(state, streams, cfg):
            if state.step >= stop_at:
                break
            value = train_step(state, x, y, epoch_start, cfg)
            loss_ema = value if math.isnan(loss_ema) else 0.98 * loss_ema + 0.02 * value
            bar.update(1)
            rate = (bar.format_dict["rate"] or 0) * cfg.batch_size * cfg.seq_len
            bar.set_postfix(loss=f"{loss_ema:.3f}", ppl=f"{math.exp(loss_ema):.0f}", tok_s=f"{rate:.0f}")
            if state.step % cfg.checkpoint_every == 0:
                save_checkpoint(out, checkpoint_state(state, cfg))
            if cfg.eval_every and state.step % cfg.eval_every == 0:
                logger.info("step %d: held-out perplexity %.1f", state.step, perplexity(state.model, heldout_ids))
                state.model.train()
            if budget.exhausted():
                reason = f"time budget of {cfg.max_minutes} minutes reached"
                break
    except KeyboardInterrupt:
        reason = "interrupted"
    finally:
        bar.close()

    logger.info("stopping at step %d: %s", state.step, reason)
    save_checkpoint(out, checkpoint_state(state, cfg))
    result = summary(state, cfg, per_epoch, loss_ema, budget.elapsed)
    model = state.model.to("cpu").eval()
    save_lstm(cfg.export, model, state.tokenizer, result)
    shipped, tokenizer, _ = load_lstm(cfg.export)  # evaluate the fp16 weights that ship
    result["heldout"] = heldout_report(shipped, tokenizer, cfg.corpus, cfg.heldout_chapters)
    save_lstm(cfg.export, model, state.tokenizer, result)
    logger.info("exported to %s\n%s", cfg.export, format_report(result["heldout"]))
    return result


def main(argv: Sequence[str] | None = None) -> int:
    configure_logging()
    cfg = dataclass_from_args(TrainConfig, build_parser().parse_args(argv))
    train(cfg)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
