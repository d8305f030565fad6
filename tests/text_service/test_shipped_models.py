"""The shipped LSTM (models/lstm), measured rather than assumed: on the held-out chapters of the
shipped corpus it beats the best add-k bigram, and its card reports the same numbers."""

from __future__ import annotations

from pathlib import Path

import pytest

from shared.text.lstm import load_lstm
from shared.weights import WEIGHTS_FILE
from training.evaluate_text import heldout_report

SHIPPED = Path(__file__).resolve().parents[2] / "models" / "lstm"

pytestmark = pytest.mark.skipif(not (SHIPPED / WEIGHTS_FILE).is_file(), reason="no shipped LSTM in models/lstm")


@pytest.mark.slow
def test_the_shipped_lstm_beats_the_add_k_bigram_on_the_heldout_chapters() -> None:
    model, tokenizer, card = load_lstm(SHIPPED)
    report = heldout_report(model, tokenizer, ks=(0.003, 0.01, 0.03))
    assert report["heldout_tokens"] > 20_000
    assert report["lstm_perplexity"] < report["bigram_perplexity"]
    assert report["lstm_perplexity"] == pytest.approx(card["training"]["heldout"]["lstm_perplexity"], abs=0.05)


def test_the_shipped_weights_stay_small() -> None:
    assert (SHIPPED / WEIGHTS_FILE).stat().st_size < 16 * 2**20
