"""A text service on a tiny synthetic book and a tiny seeded LSTM (the real embedder, loaded once)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from tests.shared.text.helpers import write_tiny_book, write_tiny_lstm
from text_service.app import create_app
from text_service.settings import Settings


@pytest.fixture(scope="module")
def tiny_book_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_book(tmp_path_factory.mktemp("book") / "book.txt")


@pytest.fixture(scope="module")
def tiny_lstm_dir(tmp_path_factory: pytest.TempPathFactory, tiny_book_path: Path) -> Path:
    directory = tmp_path_factory.mktemp("models") / "lstm"
    write_tiny_lstm(directory, tiny_book_path)
    return directory


@pytest.fixture(scope="module")
def client(tiny_book_path: Path, tiny_lstm_dir: Path) -> Iterator[TestClient]:
    settings = Settings(corpus_path=tiny_book_path, lstm_dir=tiny_lstm_dir, load_embeddings=True)
    with TestClient(create_app(settings)) as test_client:
        yield test_client
