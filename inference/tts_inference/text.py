# ruff: noqa: RUF001, RUF002  (the punctuation of other scripts is the point here)
"""Text as the model reads it: cleaned, then split into chunks of at most a budget.

F5-TTS speaks one chunk per sampling run, and a chunk's length decides its
duration, so a chunk must stay within what the model can take. F5-TTS counts a
text's length in UTF-8 bytes (a CJK character counts 3, as in its own
``chunk_text``); so does this module.

A text is cut where a reader pauses longest, falling back a level only where a
piece is still over the budget:

1. sentence ends (``. ! ? …`` before a space, ``。！？`` anywhere, line breaks);
2. clause punctuation (``, ; :`` and dashes before a space, ``，；：、`` anywhere);
3. spaces;
4. hard, at the budget, never inside a character and, where the budget allows,
   never inside a grapheme (a letter and its combining marks, an emoji sequence).

The pieces of each level are packed greedily into chunks of at most the
budget (the parts of a long sentence among themselves, not with the sentences
around it), keeping the text's own separators, so the chunks read back as the
text: no word is lost, moved or doubled. Pure Python, no model: speech, jobs and run-job all
split through here.
"""

from __future__ import annotations

import re
import unicodedata

__all__ = ["MIN_BUDGET", "clean", "size", "split_text", "unicode_error"]

#: The smallest budget a split takes: any one character fits (4 bytes), and a few words do.
MIN_BUDGET = 16

# Each pattern matches the separator after a cut point; the cut is at its end, so the
# punctuation stays with the piece before it and the spaces after it too.
_LEVELS = (
    re.compile(r"(?<=[.!?…‼⁇⁈⁉])[\"'”’)\]]*\s+|(?<=[。！？｡])[」』）”’]*\s*|\n\s*"),
    re.compile(r"(?<=[,;:—–])\s+|(?<=[，；：、､])\s*|\s+[—–]\s+"),
    re.compile(r"\s+"),
)

# Characters that never start a grapheme: combining marks, joiners, variation selectors,
# emoji modifiers and tags. A hard cut moves back over them.
_EXTENDS = re.compile(r"[\u200c\u200d\ufe00-\ufe0f\U0001f3fb-\U0001f3ff\U000e0020-\U000e007f]")


def size(text: str) -> int:
    """A text's length as F5-TTS counts it: UTF-8 bytes."""
    return len(text.encode("utf-8"))


def unicode_error(text: str) -> str | None:
    """Why the text cannot be encoded (a lone surrogate), or None when it can."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        return f"the text holds a lone surrogate {text[exc.start]!r} at character {exc.start}"
    return None


def clean(text: str) -> str:
    """Control characters become spaces (a tab or NUL is no word); line breaks stay."""
    return "".join(c if c == "\n" or unicodedata.category(c) != "Cc" else " " for c in text).strip()


def split_text(text: str, budget: int, first: int | None = None) -> list[str]:
    """The text in chunks of at most ``budget`` UTF-8 bytes; [] when nothing is left to say.

    ``first``, when smaller, bounds the first chunk alone: a stream's first audio then
    waits for a short chunk rather than a full one.
    """
    text = clean(text)
    if not text:
        return []
    budget = max(budget, MIN_BUDGET)
    if first is not None and max(first, MIN_BUDGET) < budget:
        head = _chunks(text, max(first, MIN_BUDGET), 0)[0]
        if head.strip() and len(head) < len(text):
            return [head.strip(), *split_text(text[len(head) :], budget)]
    chunks = (chunk.strip() for chunk in _chunks(text, budget, 0))
    return [chunk for chunk in chunks if chunk]


def _chunks(text: str, budget: int, level: int) -> list[str]:
    """``text`` cut at this level's separators and packed greedily into chunks; a piece
    over the budget is cut at the next level, its parts packed among themselves only.
    """
    if size(text.rstrip()) <= budget:
        return [text]
    if level == len(_LEVELS):
        return _hard(text, budget)
    out: list[str] = []
    current = ""
    for piece in _cut(text, _LEVELS[level]):
        if size(piece.rstrip()) > budget:
            if current:
                out.append(current)
                current = ""
            out.extend(_chunks(piece, budget, level + 1))
            continue
        if current and size((current + piece).rstrip()) > budget:
            out.append(current)
            current = ""
        current += piece
    if current:
        out.append(current)
    return out


def _cut(text: str, separators: re.Pattern[str]) -> list[str]:
    """``text`` cut after each separator; each piece keeps the separator that ends it."""
    pieces: list[str] = []
    start = 0
    for match in separators.finditer(text):
        if start < match.end() < len(text):
            pieces.append(text[start : match.end()])
            start = match.end()
    pieces.append(text[start:])
    return pieces


def _hard(text: str, budget: int) -> list[str]:
    """Cut at the budget, between graphemes where a grapheme fits, else between characters."""
    out: list[str] = []
    while size(text) > budget:
        end = _fit(text, budget)
        cut = end
        while cut > 0 and _extends(text[cut]):
            cut -= 1
        if cut == 0:  # one grapheme longer than the budget: cut it between characters
            cut = end
        out.append(text[:cut])
        text = text[cut:]
    if text:
        out.append(text)
    return out


def _fit(text: str, budget: int) -> int:
    """How many leading characters of ``text`` fit in ``budget`` bytes (at least one)."""
    used = 0
    for index, char in enumerate(text):
        used += size(char)
        if used > budget:
            return max(index, 1)
    return len(text)


def _extends(char: str) -> bool:
    return (
        unicodedata.combining(char) != 0
        or bool(_EXTENDS.match(char))
        or (unicodedata.category(char) in ("Mn", "Mc", "Me"))
    )
