"""Corpus loading: Gutenberg header and footer stripped, chapters found past the contents list,
held-out split = the last chapters; and the shipped copy of the book is the stripped text."""

from __future__ import annotations

from pathlib import Path

import pytest

from shared.text.corpus import CORPUS_PATH, load_corpus, split_chapters, strip_gutenberg
from tests.shared.text.helpers import tiny_book, write_tiny_book


def test_strip_gutenberg_keeps_only_the_text_between_the_markers() -> None:
    stripped = strip_gutenberg(tiny_book())
    assert stripped.startswith("THE TINY BOOK")
    assert "Licence words" not in stripped and "More licence" not in stripped
    assert "*** START" not in stripped and "*** END" not in stripped


def test_strip_gutenberg_without_markers_returns_the_whole_text() -> None:
    assert strip_gutenberg("just some text\n") == "just some text\n"


def test_chapters_start_after_the_contents_and_drop_volume_lines_and_footnotes() -> None:
    chapters = split_chapters(strip_gutenberg(tiny_book(chapters=8)))
    assert [c.number for c in chapters] == list(range(1, 9))
    assert chapters[0].title == "Title 1"
    assert all("Chapter" not in c.text and "VOLUME" not in c.text for c in chapters)
    assert "footnote" not in chapters[-1].text.lower()
    assert all(c.text for c in chapters)


def test_text_without_headings_is_one_chapter() -> None:
    assert len(split_chapters("no headings here")) == 1


def test_heldout_split_is_the_last_chapters(tmp_path: Path) -> None:
    corpus = load_corpus(write_tiny_book(tmp_path / "book.txt", chapters=8))
    train, heldout = corpus.split(heldout_chapters=3)
    assert heldout == "\n\n".join(c.text for c in corpus.chapters[5:])
    assert train == "\n\n".join(c.text for c in corpus.chapters[:5])
    with pytest.raises(ValueError, match="heldout_chapters"):
        corpus.split(heldout_chapters=8)


def test_the_shipped_corpus_is_the_stripped_book() -> None:
    corpus = load_corpus(CORPUS_PATH)
    assert "PROJECT GUTENBERG" not in corpus.text.upper()
    assert len(corpus.chapters) == 117
    assert corpus.chapters[0].title == "Marseilles—The Arrival"
    assert corpus.chapters[-1].title == "The Fifth of October"
    train, heldout = corpus.split()
    assert len(heldout) < 0.1 * len(train)
