"""One word-level tokenizer for the bigram model and the LSTM.

Text is lower-cased, curly apostrophes become straight ones, and it is split into words (letters and
digits, with inner apostrophes and hyphens: "dantès", "m'sieur", "look-out", "24th") and the
punctuation marks `. , ; : ! ?`; quotes, dashes and underscores (italics) are dropped. The vocabulary is the
`max_size - 1` most frequent training words plus `<unk>` (id 0) for the rest; ties break
alphabetically, so building it twice from the same text gives the same ids. Words that the book
writes capitalised inside sentences (names: "Dantès", "Monte", "Paris", "I") keep that display
form when ids are decoded back to text.
"""

from __future__ import annotations

import json
import os
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

UNK = "<unk>"
TOKEN_PATTERN = r"[^\W_]+(?:['-][^\W_]+)*|[.,;:!?]"
_TOKEN = re.compile(TOKEN_PATTERN)
_PUNCT = frozenset(".,;:!?")
_APOSTROPHES = str.maketrans({"’": "'", "‘": "'", "ʼ": "'"})
FORMAT_VERSION = 1


def tokenize(text: str) -> list[str]:
    """Normalised word and punctuation tokens of `text`."""
    return _TOKEN.findall(text.lower().translate(_APOSTROPHES))


def detokenize(tokens: Iterable[str], display: dict[str, str] | None = None) -> str:
    """Tokens back to readable text: punctuation attaches to the word before it, a sentence starts
    with a capital letter, and words in `display` are written in that form ("dantès" -> "Dantès")."""
    display = display or {}
    out: list[str] = []
    capitalise = True
    for token in tokens:
        if token in _PUNCT:
            if out:
                out[-1] += token
            else:
                out.append(token)
            capitalise = token in ".!?"
            continue
        word = display.get(token, "I" if token == "i" else token)
        out.append(word[:1].upper() + word[1:] if capitalise else word)
        capitalise = False
    return " ".join(out)


def display_forms(text: str, min_ratio: float = 2.0) -> dict[str, str]:
    """Lower-case token -> its usual capitalised form, for words that appear capitalised inside
    sentences at least `min_ratio` times as often as in lower case (proper names, "I")."""
    cased: dict[str, Counter[str]] = {}
    lower: Counter[str] = Counter()
    sentence_start = True
    for raw in _TOKEN.findall(text.translate(_APOSTROPHES)):
        if raw in _PUNCT:
            sentence_start = raw in ".!?"
            continue
        if not sentence_start:
            if raw.islower() or not raw[:1].isalpha():
                lower[raw.lower()] += 1
            else:
                cased.setdefault(raw.lower(), Counter())[raw] += 1
        sentence_start = False
    forms = {}
    for token, variants in cased.items():
        form, count = variants.most_common(1)[0]
        if count >= min_ratio * max(lower[token], 1) or (count >= 2 and lower[token] == 0):
            forms[token] = form
    return forms


class WordTokenizer:
    """Maps tokens to ids over a capped vocabulary; id 0 is `<unk>`."""

    def __init__(self, vocab: Sequence[str], display: dict[str, str] | None = None) -> None:
        if not vocab or vocab[0] != UNK:
            raise ValueError(f"the vocabulary must start with {UNK!r}")
        if len(set(vocab)) != len(vocab):
            raise ValueError("the vocabulary has duplicate tokens")
        self.vocab: tuple[str, ...] = tuple(vocab)
        self._ids = {token: i for i, token in enumerate(self.vocab)}
        self.display = {token: form for token, form in (display or {}).items() if token in self._ids}

    unk_id = 0

    @classmethod
    def build(cls, text: str, max_size: int) -> WordTokenizer:
        """The `max_size - 1` most frequent tokens of `text` plus `<unk>`."""
        if max_size < 2:
            raise ValueError(f"max_size must be at least 2, got {max_size}")
        counts = Counter(tokenize(text))
        ranked = sorted(counts.items(), key=lambda item: (-item[1], item[0]))
        return cls([UNK, *(token for token, _ in ranked[: max_size - 1])], display_forms(text))

    def __len__(self) -> int:
        return len(self.vocab)

    def __contains__(self, token: object) -> bool:
        return token in self._ids and token != UNK

    def encode(self, text: str) -> list[int]:
        return [self._ids.get(token, self.unk_id) for token in tokenize(text)]

    def token_ids(self, tokens: Iterable[str]) -> list[int]:
        return [self._ids.get(token, self.unk_id) for token in tokens]

    def decode(self, ids: Iterable[int]) -> str:
        return detokenize((self.vocab[i] for i in ids), self.display)

    def to_dict(self) -> dict[str, Any]:
        return {
            "format_version": FORMAT_VERSION,
            "pattern": TOKEN_PATTERN,
            "lowercase": True,
            "vocab": self.vocab,
            "display": dict(sorted(self.display.items())),
        }

    def save(self, path: str | os.PathLike[str]) -> Path:
        out = Path(path)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(self.to_dict(), ensure_ascii=False) + "\n", encoding="utf-8")
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> WordTokenizer:
        if data.get("format_version") != FORMAT_VERSION or data.get("pattern") != TOKEN_PATTERN:
            raise ValueError("written by an incompatible tokenizer (format or pattern differs)")
        return cls(data["vocab"], data.get("display"))

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> WordTokenizer:
        try:
            return cls.from_dict(json.loads(Path(path).read_text(encoding="utf-8")))
        except ValueError as exc:
            raise ValueError(f"{path}: {exc}") from exc
