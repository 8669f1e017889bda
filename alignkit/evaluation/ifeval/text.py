"""Offline text measurements the checkers share: words, sentences, paragraphs.

Everything here is plain regular expressions so scoring never needs downloaded tokenizer data.
"""
from __future__ import annotations

import re

# A word is a run of letters, digits or underscores, so "don't" counts as two words and
# "state-of-the-art" as four. IFEval counts words the same way, which keeps word limits comparable
# with published scores.
_WORD = re.compile(r"\w+")

# Capitalised words keep internal dots and hyphens together so "U.S." is one all-capital word,
# while a possessive ("AI's") is split off and does not spoil the capitals before it.
_CAPITAL_CANDIDATE = re.compile(r"\w+(?:[.\-]\w+)*")

# A run of sentence-ending punctuation, any closing quotes, brackets or markdown emphasis after it,
# then whitespace or the end of the text.
_LATIN_END = re.compile(r"[.!?…]+[\"'”’)\]*_]*(?=\s|$)")
# Scripts that end sentences without a following space (CJK full stops, Devanagari danda,
# Arabic question mark) always end a sentence.
_OTHER_END = re.compile(r"[。！？।؟]+[\"'”’)\]]*")

# Abbreviations that a capitalised word normally follows (names), so they never end a sentence.
_NEVER_FINAL = {"mr", "mrs", "ms", "dr", "prof", "st", "vs", "e.g", "i.e", "cf", "approx", "no", "fig"}
# Abbreviations that may end a sentence; they do when the next word is not lowercase.
_MAYBE_FINAL = {"etc", "jr", "sr", "inc", "ltd", "co", "corp", "a.m", "p.m"}


def count_words(text: str) -> int:
    return len(_WORD.findall(text))


def capital_words(text: str) -> list[str]:
    """Words written entirely in capitals (at least one cased letter, none lowercase)."""
    return [word for word in _CAPITAL_CANDIDATE.findall(text) if word.isupper()]


def split_sentences(text: str) -> list[str]:
    """Sentences of `text`, split at terminal punctuation.

    Line breaks alone do not end a sentence (a heading without a full stop joins the next
    sentence), matching how IFEval counts. Abbreviations, initials, decimals, URLs, ellipses
    before a lowercase word and numbered-list markers ("1.") are not sentence ends.
    """
    ends = sorted(
        [m.end() for m in _LATIN_END.finditer(text) if _ends_sentence(text, m)]
        + [m.end() for m in _OTHER_END.finditer(text)]
    )
    sentences, start = [], 0
    for end in ends + [len(text)]:
        piece = text[start:end].strip()
        start = max(start, end)
        # Pieces of pure punctuation or markup ("***", "---") are not sentences.
        if _WORD.search(piece):
            sentences.append(piece)
    return sentences


def count_sentences(text: str) -> int:
    return len(split_sentences(text))


def _ends_sentence(text: str, match: re.Match[str]) -> bool:
    punctuation = match.group().rstrip("\"'”’)]*_")
    if "!" in punctuation or "?" in punctuation:
        return True
    following = text[match.end():].lstrip()
    if not following:
        return True
    next_is_lower = following[0].islower()
    if len(punctuation) > 1 or punctuation == "…":  # an ellipsis trails off unless a new sentence starts
        return not next_is_lower
    before = text[:match.start()]
    raw_word = before.rsplit(None, 1)[-1] if before.strip() else ""
    previous_word = raw_word.lstrip("\"'“‘([*_")
    lowered = previous_word.lower()
    if lowered in _NEVER_FINAL:
        return False
    if len(previous_word) == 1 and previous_word.isalpha() and previous_word.isupper():
        return False  # an initial, as in "J. R. R. Tolkien"
    if lowered in _MAYBE_FINAL or "." in previous_word:  # dotted acronyms such as "U.S."
        return not next_is_lower
    if previous_word.isdigit() and _starts_line(before, raw_word):
        return False  # a numbered-list marker such as "2."
    return True


def _starts_line(before: str, raw_word: str) -> bool:
    line_prefix = before[: len(before) - len(raw_word)]
    return line_prefix.rstrip(" \t").endswith("\n") or not line_prefix.strip()


def split_paragraphs(text: str) -> list[str]:
    """Non-empty paragraphs separated by one or more blank lines."""
    return [part.strip() for part in re.split(r"\n[ \t]*\n", text) if part.strip()]
