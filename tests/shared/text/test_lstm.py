"""The word LSTM: config checks, shapes, tied weights, seeded temperature sampling, perplexity, and
the model directory round trip (fp16 safetensors + config.json + tokenizer.json)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from shared.text.lstm import LSTMConfig, WordLSTM, load_lstm, perplexity, sample, save_lstm
from shared.text.tokenizer import WordTokenizer
from shared.weights import CARD_FILE, WeightsError
from tests.shared.text.helpers import seeded_lstm

V = 12


@pytest.mark.filterwarnings("ignore:LSTM with projections is not supported with oneDNN")
def test_forward_shapes_and_carried_state() -> None:
    model = seeded_lstm(V, num_layers=2, hidden_dim=16, embedding_dim=8)
    ids = torch.randint(0, V, (3, 5))
    logits, (h, c) = model(ids)
    assert logits.shape == (3, 5, V)
    assert h.shape == (2, 3, 8) and c.shape == (2, 3, 16)  # projected to E because the weights are tied
    whole, _ = model(ids)
    first, state = model(ids[:, :2])
    rest, _ = model(ids[:, 2:], state)
    assert torch.allclose(torch.cat([first, rest], dim=1), whole, atol=1e-6)


def test_tied_weights_share_the_embedding_matrix() -> None:
    tied, untied = seeded_lstm(V), seeded_lstm(V, tie_weights=False)
    assert "output_weight" not in dict(tied.named_parameters())
    assert untied.output_weight is not None and untied.output_weight.shape == (V, 16)  # (V, H): no projection
    ids = torch.randint(0, V, (1, 4))
    with torch.no_grad():
        h, _ = tied.lstm(tied.embedding(ids))  # (1, 4, E)
        assert torch.allclose(tied(ids)[0], h @ tied.embedding.weight.T + tied.output_bias, atol=1e-6)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        (dict(vocab_size=0), "positive"),
        (dict(vocab_size=5, dropout=1.0), "dropout"),
        (dict(vocab_size=5, embedding_dim=32, hidden_dim=16, tie_weights=True), "tied"),
    ],
)
def test_invalid_configs_are_rejected(fields: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        LSTMConfig(**fields)  # type: ignore[arg-type]


def test_config_round_trips_through_a_dict_and_rejects_unknown_fields() -> None:
    config = LSTMConfig(vocab_size=7, hidden_dim=300)
    assert LSTMConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ValueError, match="unknown"):
        LSTMConfig.from_dict({**config.to_dict(), "heads": 4})


def test_sampling_is_seeded_and_avoids_banned_ids() -> None:
    model = seeded_lstm(V)
    first = sample(model, [1, 2], 40, temperature=1.5, seed=3, banned={0})
    assert first == sample(model, [1, 2], 40, temperature=1.5, seed=3, banned={0})
    assert first != sample(model, [1, 2], 40, temperature=1.5, seed=4, banned={0})
    assert len(first) == 40 and 0 not in first and all(0 < i < V for i in first)


def test_low_temperature_sampling_is_greedy_decoding() -> None:
    model = seeded_lstm(V)
    greedy, ids = [], [3]
    with torch.no_grad():
        for _ in range(10):
            token = int(model(torch.tensor([ids]))[0][0, -1].argmax())
            greedy.append(token)
            ids.append(token)
    assert sample(model, [3], 10, temperature=1e-4, seed=0) == greedy


def test_sampling_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="temperature"):
        sample(seeded_lstm(V), [1], 3, temperature=0.0)
    with pytest.raises(ValueError, match="start token"):
        sample(seeded_lstm(V), [], 3)


def test_perplexity_equals_exp_of_the_cross_entropy_of_one_pass() -> None:
    model = seeded_lstm(V)
    ids = torch.randint(0, V, (200,), generator=torch.Generator().manual_seed(0)).tolist()
    with torch.no_grad():
        logits, _ = model(torch.tensor([ids[:-1]]))
        expected = math.exp(F.cross_entropy(logits[0], torch.tensor(ids[1:])).item())
    assert perplexity(model, ids, chunk=7) == pytest.approx(expected, rel=1e-5)  # chunks carry the state


def test_save_and_load_round_trip_in_fp16(tmp_path: Path) -> None:
    tokenizer = WordTokenizer.build("a b c d e f g h i j k", V)
    model = seeded_lstm(len(tokenizer))
    save_lstm(tmp_path / "lstm", model, tokenizer, training={"steps": 3})
    loaded, loaded_tokenizer, card = load_lstm(tmp_path / "lstm")
    assert loaded_tokenizer.vocab == tokenizer.vocab
    assert card["training"] == {"steps": 3} and card["kind"] == "word-lstm" and len(card["sha256"]) == 64
    assert next(loaded.parameters()).dtype == torch.float32 and not loaded.training
    ids = torch.tensor([[1, 2, 3, 4]])
    assert torch.allclose(loaded(ids)[0], model(ids)[0], atol=2e-2)  # fp16 rounding only


def test_load_reports_a_missing_tokenizer_or_a_mismatched_vocabulary(tmp_path: Path) -> None:
    tokenizer = WordTokenizer.build("a b c d e f g h i j k", V)
    directory = save_lstm(tmp_path / "lstm", seeded_lstm(len(tokenizer)), tokenizer, training={})
    WordTokenizer.build("a b c", 3).save(directory / "tokenizer.json")
    with pytest.raises(WeightsError, match="tokens"):
        load_lstm(directory)
    (directory / "tokenizer.json").unlink()
    with pytest.raises(WeightsError, match="tokenizer"):
        load_lstm(directory)


def test_load_reports_a_card_of_another_kind(tmp_path: Path) -> None:
    tokenizer = WordTokenizer.build("a b c d e f g h i j k", V)
    directory = save_lstm(tmp_path / "lstm", seeded_lstm(len(tokenizer)), tokenizer, training={})
    card = json.loads((directory / CARD_FILE).read_text())
    (directory / CARD_FILE).write_text(json.dumps({**card, "kind": "unet"}))
    with pytest.raises(WeightsError, match="word-lstm"):
        load_lstm(directory)


def test_save_refuses_a_tokenizer_of_another_size(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="tokens"):
        save_lstm(tmp_path, WordLSTM(LSTMConfig(vocab_size=5, hidden_dim=256)), WordTokenizer.build("a", 2), {})
