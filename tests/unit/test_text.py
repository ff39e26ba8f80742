# ruff: noqa: RUF001  (the punctuation of other scripts is the point here)
"""The one text splitter: any text, any script, chunks within the budget, no word lost."""

from __future__ import annotations

import re

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from tts_inference.text import MIN_BUDGET, clean, size, split_text, unicode_error


def _letters(text: str) -> str:
    return re.sub(r"\s+", "", text)


@given(
    text=st.text(st.characters(exclude_categories=["Cs"]), max_size=600),
    budget=st.integers(min_value=1, max_value=400),
)
@example(text="无标点的中文文本" * 200, budget=135)
@example(text="a" * 4096, budget=300)
@example(text="e\u0301\u0301\u0301" * 50, budget=16)
@example(text="👍🏽" * 40, budget=16)
@example(text="\x00\x07\t\n ", budget=50)
@settings(
    max_examples=300,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
def test_every_chunk_fits_and_the_chunks_read_back_as_the_text(text: str, budget: int) -> None:
    chunks = split_text(text, budget)
    for chunk in chunks:
        assert chunk
        assert chunk == chunk.strip()
        assert size(chunk) <= max(budget, MIN_BUDGET), chunk
    # Nothing lost, moved or doubled: only the whitespace at the cuts may differ.
    assert _letters("".join(chunks)) == _letters(clean(text))


def test_sentences_stay_whole_when_they_fit() -> None:
    text = "The pods start warm. Nothing downloads twice! Is the cache complete? Yes."
    assert split_text(text, 48) == [
        "The pods start warm. Nothing downloads twice!",
        "Is the cache complete? Yes.",
    ]
    assert split_text(text, 1000) == [text]


def test_a_long_sentence_is_cut_at_clauses_then_spaces_then_hard() -> None:
    clauses = "first part of it, second part of it; third part of it: the end"
    assert split_text(clauses, 36) == [
        "first part of it, second part of it;",
        "third part of it: the end",
    ]
    words = "one two three four five six seven eight nine ten eleven twelve"
    chunks = split_text(words, 20)
    assert all(size(c) <= 20 for c in chunks)
    assert " ".join(chunks).split() == words.split()  # cut between words, never inside one
    assert split_text("x" * 50, 20) == ["x" * 20, "x" * 20, "x" * 10]


def test_cjk_is_cut_at_its_own_punctuation_and_counted_in_bytes() -> None:
    text = "今天天气很好，我们去公园散步。然后回家吃饭！" * 3
    chunks = split_text(text, 60)  # 20 CJK characters: 3 bytes each
    assert all(size(c) <= 60 for c in chunks)
    assert all(c[-1] in "，。！" for c in chunks), chunks
    assert "".join(chunks) == text
    unpunctuated = "无标点的中文文本" * 200  # 1,600 characters, no punctuation, no spaces
    chunks = split_text(unpunctuated, 135)
    assert "".join(chunks) == unpunctuated
    assert max(size(c) for c in chunks) <= 135


def test_a_hard_cut_keeps_graphemes_whole() -> None:
    accented = "e\u0301" * 30  # e + combining acute: 3 bytes per grapheme
    for chunk in split_text(accented, 16):
        assert chunk[0] != "\u0301", chunk
    thumbs = "👍🏽" * 10  # 8 bytes per grapheme
    assert split_text(thumbs, 16) == ["👍🏽👍🏽"] * 5


def test_control_characters_are_spaces_and_an_empty_text_has_no_chunks() -> None:
    assert split_text("one\ttwo\x00three", 100) == ["one two three"]
    assert split_text("\x00\x07 \t", 100) == []
    assert split_text("", 100) == []


@pytest.mark.parametrize(("text", "bad"), [("a\ud800b", True), ("fine", False)])
def test_a_lone_surrogate_is_named(text: str, bad: bool) -> None:
    why = unicode_error(text)
    assert (why is not None) == bad
    if bad:
        assert "surrogate" in str(why)
        assert "character 1" in str(why)


def test_a_streams_first_chunk_is_short_and_the_rest_are_packed_as_before() -> None:
    text = (
        "The early train was late again this morning, so the station filled with people. "
        "A voice on the speakers apologised twice and then went quiet. Outside, it rained."
    )
    first, *rest = split_text(text, 120, first=50)
    assert first == "The early train was late again this morning,"
    assert rest == split_text(text[len(first) :], 120)
    assert split_text("Short.", 120, first=50) == ["Short."]
    assert split_text(text, 120, first=500) == split_text(text, 120)
