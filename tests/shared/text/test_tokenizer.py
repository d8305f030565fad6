"""The shared word tokenizer: normalisation, capped vocabulary with <unk>, round trips."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from shared.text.tokenizer import UNK, WordTokenizer, detokenize, display_forms, tokenize


def test_tokenize_normalises_words_and_keeps_sentence_punctuation() -> None:
    text = "On the 24th of February, the look-out — “Yes,” said Dantès’ _father_; m’sieur!"
    assert tokenize(text) == [
        "on", "the", "24th", "of", "february", ",", "the", "look-out", "yes", ",",
        "said", "dantès", "father", ";", "m'sieur", "!",
    ]  # fmt: skip


def test_detokenize_attaches_punctuation_and_capitalises_sentences() -> None:
    assert detokenize(["the", "count", ",", "i", "think", ".", "yes", "?"]) == "The count, I think. Yes?"


def test_build_caps_the_vocabulary_by_frequency_with_unk_first() -> None:
    tokenizer = WordTokenizer.build("b a c a b a d", max_size=3)
    assert tokenizer.vocab == (UNK, "a", "b")
    assert tokenizer.encode("a b c zzz") == [1, 2, 0, 0]
    assert "a" in tokenizer and "c" not in tokenizer and UNK not in tokenizer


def test_build_breaks_frequency_ties_alphabetically() -> None:
    assert WordTokenizer.build("z y x", max_size=3).vocab == (UNK, "x", "y")


def test_decode_inverts_encode_inside_the_vocabulary() -> None:
    tokenizer = WordTokenizer.build("the count smiled. the sea was calm, and the count smiled!", 100)
    ids = tokenizer.encode("the sea was calm, and the count smiled!")
    assert tokenizer.decode(ids) == "The sea was calm, and the count smiled!"


def test_save_and_load_round_trip(tmp_path: Path) -> None:
    tokenizer = WordTokenizer.build("Mercédès et Dantès, à Marseille.", 10)
    loaded = WordTokenizer.load(tokenizer.save(tmp_path / "tokenizer.json"))
    assert loaded.vocab == tokenizer.vocab


def test_load_rejects_a_tokenizer_with_another_pattern(tmp_path: Path) -> None:
    path = WordTokenizer.build("a b", 5).save(tmp_path / "tokenizer.json")
    data = json.loads(path.read_text())
    path.write_text(json.dumps({**data, "pattern": r"\w+"}))
    with pytest.raises(ValueError, match="incompatible"):
        WordTokenizer.load(path)


@pytest.mark.parametrize("vocab", [[], ["a", UNK], [UNK, "a", "a"]])
def test_invalid_vocabularies_are_rejected(vocab: list[str]) -> None:
    with pytest.raises(ValueError, match="vocabulary"):
        WordTokenizer(vocab)


def test_names_keep_the_capitals_the_book_gives_them_inside_sentences() -> None:
    text = "Then Dantès saw Paris. The sea, said Dantès, is calm in Paris. I think the sea is calm. Yes, the sea."
    forms = display_forms(text)
    assert forms == {"dantès": "Dantès", "paris": "Paris"}  # "The", "I" and "Yes" start sentences here
    tokenizer = WordTokenizer.build(text, 50)
    assert tokenizer.decode(tokenizer.encode("the sea , said dantès in paris")) == "The sea, said Dantès in Paris"


def test_display_forms_survive_save_and_load(tmp_path: Path) -> None:
    tokenizer = WordTokenizer.build("We met Haydée and then Haydée sang.", 20)
    loaded = WordTokenizer.load(tokenizer.save(tmp_path / "tokenizer.json"))
    assert loaded.display == {"haydée": "Haydée"} == tokenizer.display
