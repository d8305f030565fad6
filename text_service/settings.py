"""The text service's settings: one pydantic-settings object, read from TEXT_* environment variables."""

from __future__ import annotations

import functools
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from shared.text.corpus import CORPUS_PATH, DEFAULT_HELDOUT_CHAPTERS

REPO_ROOT = Path(__file__).resolve().parent.parent


class Settings(BaseSettings):
    """Where the models are and how the server listens; every field is `TEXT_<NAME>` in the environment."""

    model_config = SettingsConfigDict(env_prefix="TEXT_", frozen=True)

    host: str = "127.0.0.1"
    port: int = Field(default=8001, ge=1, le=65535)
    log_level: str = "info"
    lstm_dir: Path = REPO_ROOT / "models" / "lstm"
    corpus_path: Path = CORPUS_PATH
    # Used only when the LSTM directory (and so its tokenizer) is missing: the bigram model then
    # builds the same kind of tokenizer from the corpus's training chapters.
    vocab_size: int = Field(default=10_000, ge=2)
    heldout_chapters: int = Field(default=DEFAULT_HELDOUT_CHAPTERS, ge=1)
    load_embeddings: bool = True
    embedding_model: str = ""  # a sentence-transformers directory; "" = the bundled all-MiniLM-L6-v2
    torch_threads: int | None = Field(default=None, ge=1)


@functools.cache
def get_settings() -> Settings:
    return Settings()
