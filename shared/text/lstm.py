"""Word-level LSTM language model: config, network, seeded temperature sampling, perplexity, and the
model directory (safetensors weights + config.json card + tokenizer.json).

Shapes: B batch, T time steps, V vocabulary, E embedding width, H hidden width, L layers.
The input embedding and the output layer share one matrix when `tie_weights` (Press & Wolf 2017,
"Using the Output Embedding to Improve Language Models"; Inan et al. 2017); when H != E the LSTM
projects its output down to E (Sak et al. 2014, LSTMP; torch's `proj_size`) so the shapes match.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from shared.config import JsonConfig
from shared.text.tokenizer import WordTokenizer
from shared.weights import WeightsError, count_parameters, load_network, save_model_dir

logger = logging.getLogger(__name__)

KIND = "word-lstm"
TOKENIZER_FILE = "tokenizer.json"
LSTMState = tuple[torch.Tensor, torch.Tensor]  # (h, c): (L, B, H_out) and (L, B, H)


@dataclass(frozen=True)
class LSTMConfig(JsonConfig):
    vocab_size: int
    embedding_dim: int = 256
    hidden_dim: int = 256
    num_layers: int = 2
    dropout: float = 0.25
    tie_weights: bool = True

    def __post_init__(self) -> None:
        if min(self.vocab_size, self.embedding_dim, self.hidden_dim, self.num_layers) < 1:
            raise ValueError(f"sizes must be positive: {self}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.tie_weights and self.hidden_dim < self.embedding_dim:
            raise ValueError("tied weights need hidden_dim >= embedding_dim (the LSTM projects down to E)")

    @property
    def proj_size(self) -> int:
        return self.embedding_dim if self.tie_weights and self.hidden_dim != self.embedding_dim else 0

    @property
    def output_dim(self) -> int:
        return self.proj_size or self.hidden_dim


class WordLSTM(nn.Module):
    """Embedding -> dropout -> L-layer LSTM -> dropout -> linear to V logits."""

    def __init__(self, config: LSTMConfig) -> None:
        super().__init__()
        self.config = config
        self.embedding = nn.Embedding(config.vocab_size, config.embedding_dim)
        self.dropout = nn.Dropout(config.dropout)
        self.lstm = nn.LSTM(
            config.embedding_dim,
            config.hidden_dim,
            num_layers=config.num_layers,
            dropout=config.dropout if config.num_layers > 1 else 0.0,
            proj_size=config.proj_size,
            batch_first=True,
        )
        untied = not config.tie_weights
        self.output_weight = nn.Parameter(torch.empty(config.vocab_size, config.output_dim)) if untied else None
        self.output_bias = nn.Parameter(torch.zeros(config.vocab_size))
        nn.init.uniform_(self.embedding.weight, -0.1, 0.1)
        if self.output_weight is not None:
            nn.init.uniform_(self.output_weight, -0.1, 0.1)

    def forward(self, ids: torch.Tensor, state: LSTMState | None = None) -> tuple[torch.Tensor, LSTMState]:
        """ids (B, T) -> logits (B, T, V) and the state after the last step."""
        x = self.dropout(self.embedding(ids))  # (B, T, E)
        h, state = self.lstm(x, state)  # (B, T, H_out)
        weight = self.embedding.weight if self.output_weight is None else self.output_weight
        return F.linear(self.dropout(h), weight, self.output_bias), state


@torch.no_grad()
def sample(
    model: WordLSTM,
    start: Sequence[int],
    length: int,
    temperature: float = 1.0,
    seed: int | None = None,
    banned: Collection[int] = (),
) -> list[int]:
    """`length` ids after `start`, each drawn from softmax(logits / temperature) without the `banned`
    ids; noise comes from one `torch.Generator` seeded with `seed`, so a seed fixes the output."""
    if not start:
        raise ValueError("sampling needs at least one start token")
    if temperature <= 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    model.eval()
    generator = torch.Generator()
    generator.manual_seed(seed if seed is not None else int(torch.randint(0, 2**62, ()).item()))
    mask = torch.zeros(model.config.vocab_size, dtype=torch.bool)
    mask[list(banned)] = True
    device = next(model.parameters()).device
    logits, state = model(torch.tensor([list(start)], device=device))  # (1, T, V)
    out: list[int] = []
    for _ in range(length):
        scaled = (logits[0, -1].float().cpu() / temperature).masked_fill(mask, -math.inf)
        token = int(torch.multinomial(torch.softmax(scaled, dim=-1), 1, generator=generator))
        out.append(token)
        logits, state = model(torch.tensor([[token]], device=device), state)
    return out


@torch.no_grad()
def perplexity(model: WordLSTM, ids: Sequence[int], chunk: int = 512) -> float:
    """exp(mean NLL) of ids[1:] given all earlier ids, read as one stream in chunks with the state
    carried across (perplexity as in Jurafsky & Martin, SLP3, Sec. 3.3)."""
    if len(ids) < 2:
        raise ValueError("perplexity needs at least two tokens")
    was_training = model.training
    model.eval()
    stream = torch.tensor(list(ids), device=next(model.parameters()).device)
    total, state = 0.0, None
    for lo in range(0, len(stream) - 1, chunk):
        inputs = stream[lo : lo + chunk][None]  # (1, T)
        targets = stream[lo + 1 : lo + chunk + 1][None]
        inputs = inputs[:, : targets.shape[1]]
        logits, state = model(inputs, state)
        total += float(F.cross_entropy(logits[0].float(), targets[0], reduction="sum"))
    model.train(was_training)
    return math.exp(total / (len(stream) - 1))


def save_lstm(
    directory: str | os.PathLike[str], model: WordLSTM, tokenizer: WordTokenizer, training: dict[str, Any]
) -> Path:
    """Write model.safetensors (fp16), config.json and tokenizer.json; returns the directory."""
    if len(tokenizer) != model.config.vocab_size:
        raise ValueError(f"tokenizer has {len(tokenizer)} tokens, the model {model.config.vocab_size}")
    card = {
        "kind": KIND,
        "config": model.config.to_dict(),
        "parameters": count_parameters(model),
        "tokenizer": TOKENIZER_FILE,
        "training": training,
    }
    out = save_model_dir(directory, model.state_dict(), card, dtype=torch.float16)
    tokenizer.save(out / TOKENIZER_FILE)
    return out


def load_lstm(directory: str | os.PathLike[str]) -> tuple[WordLSTM, WordTokenizer, dict[str, Any]]:
    """(model in eval mode, fp32 on the CPU; its tokenizer; the card with the weights' sha256)."""
    model, card = load_network(directory, KIND, lambda card: WordLSTM(LSTMConfig.from_dict(card["config"])))
    tokenizer_path = Path(directory) / str(card.get("tokenizer", TOKENIZER_FILE))
    if not tokenizer_path.is_file():
        raise WeightsError(f"{tokenizer_path} not found: an LSTM directory needs its tokenizer")
    try:
        tokenizer = WordTokenizer.load(tokenizer_path)
    except (ValueError, KeyError) as exc:
        raise WeightsError(f"{tokenizer_path} is not a usable tokenizer: {exc}") from exc
    if len(tokenizer) != model.config.vocab_size:
        raise WeightsError(f"{tokenizer_path} has {len(tokenizer)} tokens, the model {model.config.vocab_size}")
    return model.float().eval(), tokenizer, card
