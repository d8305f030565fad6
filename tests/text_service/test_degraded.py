"""A model that fails to load: its routes answer 503 with the reason, the others keep serving, and
/health says what is loaded. Also: nothing loads at import or before start-up; settings from env."""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from text_service.app import create_app
from text_service.settings import Settings, get_settings


def test_missing_lstm_and_disabled_embeddings_are_503s_and_reported(tmp_path: Path, tiny_book_path: Path) -> None:
    settings = Settings(corpus_path=tiny_book_path, lstm_dir=tmp_path / "nowhere", load_embeddings=False)
    with TestClient(create_app(settings)) as client:
        health = client.get("/health").json()
        assert health["status"] == "degraded"
        assert health["models"]["lstm"]["loaded"] is False and "not found" in health["models"]["lstm"]["detail"]
        assert health["models"]["embeddings"]["loaded"] is False
        assert health["models"]["bigram"]["loaded"] is True  # builds its own tokenizer from the corpus

        response = client.post("/generate_with_rnn", json={"start_word": "the", "length": 3})
        assert response.status_code == 503 and "lstm" in response.json()["detail"]
        for route, body in [("/embed", {"word": "sea"}), ("/similarity", {"word1": "a", "word2": "b"})]:
            response = client.post(route, json=body)
            assert response.status_code == 503 and "TEXT_LOAD_EMBEDDINGS" in response.json()["detail"]
        assert client.post("/generate", json={"start_word": "the", "length": 3}).status_code == 200


def test_corrupt_weights_and_a_missing_corpus_are_503s_not_500s(tmp_path: Path, tiny_lstm_dir: Path) -> None:
    broken = tmp_path / "lstm"
    broken.mkdir()
    for item in tiny_lstm_dir.iterdir():
        (broken / item.name).write_bytes(item.read_bytes())
    (broken / "model.safetensors").write_bytes(b"not a safetensors file")
    settings = Settings(corpus_path=tmp_path / "missing.txt", lstm_dir=broken, load_embeddings=False)
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        assert client.post("/generate_with_rnn", json={"start_word": "the", "length": 3}).status_code == 503
        response = client.post("/generate", json={"start_word": "the", "length": 3})
        assert response.status_code == 503 and "missing.txt" in response.json()["detail"]
        assert client.get("/health").json()["models"]["bigram"]["loaded"] is False


def test_models_load_at_start_up_not_when_the_app_is_built(tmp_path: Path) -> None:
    app = create_app(Settings(lstm_dir=tmp_path / "nowhere", load_embeddings=False))
    assert not hasattr(app.state, "models")


def test_settings_come_from_text_prefixed_environment_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TEXT_PORT", "9123")
    monkeypatch.setenv("TEXT_LOAD_EMBEDDINGS", "false")
    settings = Settings()
    assert settings.port == 9123 and settings.load_embeddings is False
    get_settings.cache_clear()
    try:
        assert get_settings() is get_settings() and get_settings().port == 9123
    finally:
        get_settings.cache_clear()
