"""A tiny synthetic book in Project Gutenberg layout, and a tiny seeded LSTM, for fast tests."""

from __future__ import annotations

import random
from pathlib import Path

import torch

from shared.text.corpus import load_corpus
from shared.text.lstm import LSTMConfig, WordLSTM, save_lstm
from shared.text.tokenizer import WordTokenizer

SENTENCES = (
    "The cat sat on the mat.",
    "The dog lay on the rug.",
    "Dantès looked at the sea, and the sea was calm.",
    "“Wait and hope,” said the count.",
    "Mercédès wept; the old man smiled!",
    "Did the sailor see the ship?",
    "The ship sailed to Marseilles.",
)


def tiny_book(chapters: int = 8, sentences_per_chapter: int = 40, seed: int = 0) -> str:
    """Header, contents list, volume headings, chapters, footnotes and licence footer, like PG #1184."""
    rng = random.Random(seed)
    contents = "\n".join(f"Chapter {i}. Title {i}" for i in range(1, chapters + 1))
    body = []
    for i in range(1, chapters + 1):
        if i in (1, chapters // 2 + 1):
            body.append(f"VOLUME {'ONE' if i == 1 else 'TWO'}\n")
        text = " ".join(rng.choice(SENTENCES) for _ in range(sentences_per_chapter))
        body.append(f" Chapter {i}. Title {i}\n\n{text}\n")
    return (
        "The Project Gutenberg eBook of The Tiny Book\n\nLicence words here.\n\n"
        "*** START OF THE PROJECT GUTENBERG EBOOK THE TINY BOOK ***\n\nTHE TINY BOOK\n\nContents\n\n"
        f"{contents}\n\n\n" + "\n\n".join(body) + "\n\nFOOTNOTES:\n\n[1] A footnote.\n\n"
        "*** END OF THE PROJECT GUTENBERG EBOOK THE TINY BOOK ***\n\nMore licence words.\n"
    )


def write_tiny_book(path: Path, **kwargs: int) -> Path:
    path.write_text(tiny_book(**kwargs), encoding="utf-8")
    return path


def seeded_lstm(vocab_size: int, seed: int = 0, **overrides: object) -> WordLSTM:
    """A tiny LSTM with every parameter drawn from N(0, 0.3²): outputs depend on the input."""
    base: dict[str, object] = dict(embedding_dim=16, hidden_dim=16, num_layers=1, dropout=0.0, tie_weights=True)
    base.update(overrides)
    torch.manual_seed(seed)
    model = WordLSTM(LSTMConfig(vocab_size=vocab_size, **base))  # type: ignore[arg-type]
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=generator) * 0.3)
    return model.eval()


def write_tiny_lstm(directory: Path, corpus: Path, vocab_size: int = 50) -> tuple[WordLSTM, WordTokenizer]:
    """A seeded tiny LSTM and the tokenizer of the corpus's training chapters, saved as a model dir."""
    tokenizer = WordTokenizer.build(load_corpus(corpus).split()[0], vocab_size)
    model = seeded_lstm(len(tokenizer))
    save_lstm(directory, model, tokenizer, training={"note": "tiny test model"})
    return model, tokenizer
