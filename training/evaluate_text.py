"""Held-out perplexity of the word LSTM and of add-k smoothed bigram models, on the last chapters.

    python -m training.evaluate_text                       # the shipped models/lstm
    python -m training.evaluate_text --lstm runs/lstm-export --k 0.001,0.003,0.01,0.1,1

Both models see the same token stream (the LSTM's tokenizer, `<unk>` included) and predict the same
tokens w_1..w_{N-1} of the held-out chapters; the bigram counts come from the training chapters only.
Perplexity PP = exp(-(1/N) Σ log P(w_i | history)) (Jurafsky & Martin, SLP3, Sec. 3.3).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from shared.text.bigram import BigramModel
from shared.text.corpus import CORPUS_PATH, DEFAULT_HELDOUT_CHAPTERS, load_corpus
from shared.text.lstm import WordLSTM, load_lstm, perplexity
from shared.text.tokenizer import WordTokenizer
from training.common import configure_logging

logger = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_KS = (0.001, 0.003, 0.01, 0.03, 0.1, 1.0)


def heldout_report(
    model: WordLSTM,
    tokenizer: WordTokenizer,
    corpus: str | os.PathLike[str] = CORPUS_PATH,
    heldout_chapters: int = DEFAULT_HELDOUT_CHAPTERS,
    ks: Sequence[float] = DEFAULT_KS,
) -> dict[str, Any]:
    """Perplexities on the held-out chapters: the LSTM's and the bigram's for each k (plus the best k).

    The best k is chosen on the held-out text itself, which flatters the bigram: the comparison is
    conservative for the LSTM.
    """
    train_text, heldout_text = load_corpus(corpus).split(heldout_chapters)
    train_ids, heldout_ids = tokenizer.encode(train_text), tokenizer.encode(heldout_text)
    bigram = BigramModel.fit(train_ids, len(tokenizer))
    by_k = {float(k): bigram.perplexity(heldout_ids, k) for k in ks}
    best_k = min(by_k, key=by_k.__getitem__)
    started = time.perf_counter()
    lstm_ppl = perplexity(model, heldout_ids)
    logger.info("LSTM held-out perplexity %.2f (%.1f s)", lstm_ppl, time.perf_counter() - started)
    return {
        "heldout_chapters": heldout_chapters,
        "heldout_tokens": len(heldout_ids),
        "heldout_unk_rate": round(sum(i == tokenizer.unk_id for i in heldout_ids) / len(heldout_ids), 4),
        "train_tokens": len(train_ids),
        "vocab_size": len(tokenizer),
        "lstm_perplexity": round(lstm_ppl, 2),
        "bigram_perplexity_by_k": {str(k): round(v, 2) for k, v in by_k.items()},
        "bigram_best_k": best_k,
        "bigram_perplexity": round(by_k[best_k], 2),
    }


def format_report(report: dict[str, Any]) -> str:
    lines = [
        f"held-out: last {report['heldout_chapters']} chapters, {report['heldout_tokens']:,} tokens "
        f"({100 * report['heldout_unk_rate']:.1f}% <unk>); training: {report['train_tokens']:,} tokens; "
        f"vocabulary {report['vocab_size']:,}",
        f"{'model':<28}{'perplexity':>12}",
        f"{'word LSTM':<28}{report['lstm_perplexity']:>12.2f}",
    ]
    for k, value in report["bigram_perplexity_by_k"].items():
        best = "  <- best k" if float(k) == report["bigram_best_k"] else ""
        lines.append(f"{f'bigram, add-k, k={k}':<28}{value:>12.2f}{best}")
    verdict = "beats" if report["lstm_perplexity"] < report["bigram_perplexity"] else "does NOT beat"
    lines.append(f"the LSTM {verdict} the best add-k bigram")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lstm", default=str(REPO_ROOT / "models" / "lstm"), help="LSTM model directory")
    parser.add_argument("--corpus", default=str(CORPUS_PATH), help="corpus text (stripped or raw Gutenberg)")
    parser.add_argument("--heldout-chapters", type=int, default=DEFAULT_HELDOUT_CHAPTERS)
    parser.add_argument("--k", default=",".join(str(k) for k in DEFAULT_KS), help="add-k values, comma-separated")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    configure_logging()
    args = build_parser().parse_args(argv)
    model, tokenizer, _ = load_lstm(args.lstm)
    ks = [float(k) for k in args.k.split(",") if k.strip()]
    report = heldout_report(model, tokenizer, args.corpus, args.heldout_chapters, ks)
    print(json.dumps(report, indent=2) if args.json else format_report(report))
    return 0 if report["lstm_perplexity"] < report["bigram_perplexity"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
