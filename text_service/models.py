"""The models the text service holds, loaded once at start-up. A model that fails to load is recorded
with the reason (its routes answer 503 with it; /health lists it) instead of stopping the service."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from shared.text.bigram import BigramModel
from shared.text.corpus import load_corpus
from shared.text.embeddings import Embedder, load_embedder
from shared.text.lstm import WordLSTM, load_lstm
from shared.text.schemas import BIGRAM, EMBEDDINGS, LSTM
from shared.text.tokenizer import WordTokenizer
from shared.weights import WeightsError, count_parameters
from text_service.settings import Settings

logger = logging.getLogger(__name__)


@dataclass
class TextModels:
    bigram: BigramModel | None = None
    bigram_tokenizer: WordTokenizer | None = None
    lstm: WordLSTM | None = None
    lstm_tokenizer: WordTokenizer | None = None
    embedder: Embedder | None = None
    details: dict[str, str] = field(default_factory=dict)  # name -> what is loaded, or why not
    loaded: dict[str, bool] = field(default_factory=dict)

    def _attempt(self, name: str, load: Callable[[], str], expected: tuple[type[Exception], ...]) -> None:
        started = time.perf_counter()
        try:
            detail = load()
        except Exception as exc:  # any failure must leave the other routes serving
            self.loaded[name], self.details[name] = False, f"{type(exc).__name__}: {exc}"
            logger.warning("%s model not loaded: %s", name, exc, exc_info=not isinstance(exc, expected))
            return
        self.loaded[name], self.details[name] = True, detail
        logger.info("%s model loaded in %.2f s: %s", name, time.perf_counter() - started, detail)


def load_models(settings: Settings) -> TextModels:
    """The LSTM (with its tokenizer), the bigram counts (same tokenizer) and the embedder."""
    models = TextModels()
    missing = (FileNotFoundError, WeightsError)

    def lstm() -> str:
        models.lstm, models.lstm_tokenizer, card = load_lstm(settings.lstm_dir)
        heldout = card.get("training", {}).get("heldout", {})
        ppl = f", held-out perplexity {heldout['lstm_perplexity']}" if "lstm_perplexity" in heldout else ""
        return f"{count_parameters(models.lstm):,} parameters, vocabulary {len(models.lstm_tokenizer):,}{ppl}"

    def bigram() -> str:
        corpus = load_corpus(settings.corpus_path)
        tokenizer = models.lstm_tokenizer
        if tokenizer is None:  # no LSTM: build the tokenizer it would have had
            chapters = min(settings.heldout_chapters, len(corpus.chapters) - 1)
            train_text = corpus.split(chapters)[0] if chapters > 0 else corpus.body
            tokenizer = WordTokenizer.build(train_text, settings.vocab_size)
        ids = tokenizer.encode(corpus.body)
        models.bigram, models.bigram_tokenizer = BigramModel.fit(ids, len(tokenizer)), tokenizer
        return f"{len(models.bigram.counts):,} distinct bigrams from {len(ids):,} tokens"

    def embeddings() -> str:
        if not settings.load_embeddings:
            raise RuntimeError("disabled by TEXT_LOAD_EMBEDDINGS=false")
        models.embedder = load_embedder(settings.embedding_model or None)
        return f"{models.embedder.name}, {models.embedder.dim} dimensions"

    models._attempt(LSTM, lstm, missing)
    models._attempt(BIGRAM, bigram, missing)
    models._attempt(EMBEDDINGS, embeddings, (*missing, RuntimeError, ImportError))
    return models
