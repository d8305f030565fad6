"""The Count of Monte Cristo (Project Gutenberg #1184): load, strip the Gutenberg header and
footer, split into chapters, and hold out the last chapters for evaluation.

The stripped text ships in `shared/text/texts/monte-cristo.txt`; regenerate it from the Gutenberg
file with

    python -m shared.text.corpus ../shared/data/monte-cristo-pg1184.txt
"""

from __future__ import annotations

import argparse
import logging
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger(__name__)

CORPUS_PATH = Path(__file__).resolve().parent / "texts" / "monte-cristo.txt"
DEFAULT_HELDOUT_CHAPTERS = 6  # chapters 112-117: about 5% of the book

_START = re.compile(r"^\*\*\* ?START OF (THE|THIS) PROJECT GUTENBERG EBOOK.*$", re.MULTILINE)
_END = re.compile(r"^\*\*\* ?END OF (THE|THIS) PROJECT GUTENBERG EBOOK.*$", re.MULTILINE)
_HEADING = re.compile(r"^[ \t]*Chapter (\d+)\.[ \t]*(.*)$", re.MULTILINE)
_VOLUME = re.compile(r"^[ \t]*VOLUME [A-Z]+[ \t]*$", re.MULTILINE)
_FOOTNOTES = re.compile(r"^FOOTNOTES:\s*$", re.MULTILINE)


@dataclass(frozen=True)
class Chapter:
    number: int
    title: str
    text: str


@dataclass(frozen=True)
class Corpus:
    """The book as chapters; `text` is the whole stripped file (front matter included)."""

    text: str
    chapters: tuple[Chapter, ...]

    @property
    def body(self) -> str:
        """All chapters, without the front matter and footnotes."""
        return "\n\n".join(c.text for c in self.chapters)

    def split(self, heldout_chapters: int = DEFAULT_HELDOUT_CHAPTERS) -> tuple[str, str]:
        """(training text, held-out text): the held-out part is the last `heldout_chapters` chapters."""
        if not 0 < heldout_chapters < len(self.chapters):
            raise ValueError(f"heldout_chapters must be in 1..{len(self.chapters) - 1}, got {heldout_chapters}")
        cut = len(self.chapters) - heldout_chapters
        train = "\n\n".join(c.text for c in self.chapters[:cut])
        heldout = "\n\n".join(c.text for c in self.chapters[cut:])
        return train, heldout


def strip_gutenberg(text: str) -> str:
    """The text between the `*** START OF ...` and `*** END OF ...` markers (the whole text if absent)."""
    start, end = _START.search(text), _END.search(text)
    body = text[start.end() if start else 0 : end.start() if end else len(text)]
    return body.replace("\r\n", "\n").strip() + "\n"


def split_chapters(text: str) -> tuple[Chapter, ...]:
    """Body chapters in order. The table of contents repeats each heading, so the body starts at the
    last `Chapter 1.` heading; volume headings and the closing footnotes are dropped."""
    headings = list(_HEADING.finditer(text))
    firsts = [i for i, m in enumerate(headings) if m.group(1) == "1"]
    if not firsts:
        return (Chapter(1, "", _VOLUME.sub("", text).strip()),)
    headings = headings[firsts[-1] :]
    footnotes = _FOOTNOTES.search(text, headings[-1].end())
    stop = footnotes.start() if footnotes else len(text)
    chapters = []
    for heading, following in zip(headings, [*headings[1:], None], strict=True):
        body = text[heading.end() : following.start() if following else stop]
        chapters.append(Chapter(int(heading.group(1)), heading.group(2).strip(), _VOLUME.sub("", body).strip()))
    return tuple(chapters)


def load_corpus(path: str | os.PathLike[str] | None = None) -> Corpus:
    """Read a corpus file (default: the shipped stripped book); a raw Gutenberg file is stripped too."""
    text = strip_gutenberg(Path(path or CORPUS_PATH).read_text(encoding="utf-8"))
    return Corpus(text=text, chapters=split_chapters(text))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Strip a Project Gutenberg file into the shipped corpus.")
    parser.add_argument("source", help="the Gutenberg .txt (e.g. ../shared/data/monte-cristo-pg1184.txt)")
    parser.add_argument("--out", default=str(CORPUS_PATH))
    args = parser.parse_args(argv)
    stripped = strip_gutenberg(Path(args.source).read_text(encoding="utf-8"))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(stripped, encoding="utf-8")
    print(f"wrote {args.out}: {len(stripped):,} characters, {len(split_chapters(stripped))} chapters")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
