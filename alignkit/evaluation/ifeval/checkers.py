"""One function per IFEval instruction type: does a response follow it?

Each function takes the response and the instruction's (already validated) parameters as keyword
arguments named exactly as in IFEval's `kwargs`. The behaviour follows the IFEval reference
closely so scores stay comparable; deliberate differences are noted where they occur.
"""
from __future__ import annotations

import json
import re
from collections import Counter

from alignkit.evaluation.ifeval.language import is_language
from alignkit.evaluation.ifeval.text import capital_words, count_sentences, count_words, split_paragraphs

LESS_THAN = "less than"
AT_LEAST = "at least"
RELATIONS = (LESS_THAN, AT_LEAST)

CONSTRAINED_OPTIONS = ("My answer is yes.", "My answer is no.", "My answer is maybe.")
TWO_RESPONSES_SEPARATOR = "******"


def compare(count: int, relation: str, threshold: int) -> bool:
    return count < threshold if relation == LESS_THAN else count >= threshold


# --- keywords -------------------------------------------------------------------------------

def keywords_existence(response: str, *, keywords: list[str]) -> bool:
    # Substring match, as in IFEval: some keywords are word fragments ("hou", "le").
    lowered = response.lower()
    return all(keyword.lower() in lowered for keyword in keywords)


def keyword_frequency(response: str, *, keyword: str, frequency: int, relation: str) -> bool:
    occurrences = len(re.findall(re.escape(keyword), response, flags=re.IGNORECASE))
    return compare(occurrences, relation, frequency)


def forbidden_words(response: str, *, forbidden_words: list[str]) -> bool:
    return not any(
        re.search(rf"\b{re.escape(word)}\b", response, flags=re.IGNORECASE) for word in forbidden_words
    )


def letter_frequency(response: str, *, letter: str, let_frequency: int, let_relation: str) -> bool:
    occurrences = Counter(response.lower())[letter.lower()]
    return compare(occurrences, let_relation, let_frequency)


def response_language(response: str, *, language: str) -> bool:
    return is_language(response, language)


# --- length -------------------------------------------------------------------------------

def number_sentences(response: str, *, num_sentences: int, relation: str) -> bool:
    return compare(count_sentences(response), relation, num_sentences)


def number_words(response: str, *, num_words: int, relation: str) -> bool:
    return compare(count_words(response), relation, num_words)


# A markdown divider "***" standing between whitespace; "***bold italic***" is emphasis, not a divider.
_DIVIDER = re.compile(r"(?:(?<=\s)|^)\*\*\*(?=\s|$)")


def number_paragraphs(response: str, *, num_paragraphs: int) -> bool:
    """Exactly `num_paragraphs` paragraphs separated by "***" dividers."""
    parts = [part.strip() for part in _DIVIDER.split(response)]
    # A divider before the first or after the last paragraph is harmless; two dividers in a row
    # leave an empty paragraph between them, which is a malformed answer.
    while parts and not parts[0]:
        parts.pop(0)
    while parts and not parts[-1]:
        parts.pop()
    if not all(parts):
        return False
    return len(parts) == num_paragraphs


def nth_paragraph_first_word(
    response: str, *, num_paragraphs: int, nth_paragraph: int, first_word: str
) -> bool:
    """Exactly `num_paragraphs` blank-line-separated paragraphs, the nth starting with `first_word`."""
    paragraphs = split_paragraphs(response)
    if len(paragraphs) != num_paragraphs or nth_paragraph > len(paragraphs):
        return False
    return _first_word(paragraphs[nth_paragraph - 1]) == first_word.lower()


def _first_word(paragraph: str) -> str:
    # Leading quotes and markdown ("## ", "**") are not part of the word, and an apostrophe ends it
    # ("It's" starts with "it"); hyphenated words stay whole.
    match = re.search(r"[^\W_][\w-]*", paragraph)
    return match.group().lower() if match else ""


# --- detectable content ---------------------------------------------------------------------

def number_placeholders(response: str, *, num_placeholders: int) -> bool:
    # A placeholder is non-empty text in square brackets on one line, such as [address].
    return len(re.findall(r"\[[^\[\]\n]+\]", response)) >= num_placeholders


def postscript(response: str, *, postscript_marker: str) -> bool:
    return re.search(_marker_pattern(postscript_marker), response, flags=re.IGNORECASE) is not None


def _marker_pattern(marker: str) -> str:
    # "P.P.S" also matches "P. P. S." and "p.p.s."; the marker must start a word and must not be
    # the tail of a longer marker, so "P.P.S." does not count as a "P.S.".
    body = r"\.\s?".join(re.escape(piece) for piece in marker.split("."))
    tail = r"(?!\w)" if marker[-1].isalnum() else ""
    return rf"(?<![\w.]){body}{tail}"


# --- detectable format ----------------------------------------------------------------------

def number_bullet_lists(response: str, *, num_bullets: int) -> bool:
    """Exactly `num_bullets` markdown bullet lines ("* item" or "- item")."""
    bullets = re.findall(r"^[ \t]*[*-][ \t]+\S", response, flags=re.MULTILINE)
    return len(bullets) == num_bullets


def constrained_response(response: str) -> bool:
    return any(option in response for option in CONSTRAINED_OPTIONS)


def number_highlighted_sections(response: str, *, num_highlights: int) -> bool:
    """At least `num_highlights` non-empty *italic* or **bold** spans on one line each."""
    spans = re.findall(r"\*\*([^\n*]*)\*\*|\*([^\n*]*)\*", response)
    highlighted = [bold or italic for bold, italic in spans if (bold or italic).strip()]
    return len(highlighted) >= num_highlights


def multiple_sections(response: str, *, section_spliter: str, num_sections: int) -> bool:
    """At least `num_sections` section headers such as "SECTION 1" (case-sensitive, as IFEval)."""
    headers = re.findall(rf"(?<!\w){re.escape(section_spliter)}\s?\d+", response)
    return len(headers) >= num_sections


def json_format(response: str) -> bool:
    """The whole response is JSON, optionally inside one markdown code fence."""
    text = response.strip()
    text = re.sub(r"^```[\w-]*", "", text)
    text = re.sub(r"```$", "", text).strip()
    try:
        json.loads(text)
    except ValueError:
        return False
    return True


def title(response: str) -> bool:
    return any(inner.strip() for inner in re.findall(r"<<([^\n]+?)>>", response))


# --- combination ----------------------------------------------------------------------------

def two_responses(response: str) -> bool:
    """Two different answers separated by "******", with nothing else but optional edge separators."""
    parts = [part.strip() for part in response.split(TWO_RESPONSES_SEPARATOR)]
    while parts and not parts[0]:
        parts.pop(0)
    while parts and not parts[-1]:
        parts.pop()
    return len(parts) == 2 and all(parts) and parts[0] != parts[1]


def repeat_prompt(response: str, *, prompt_to_repeat: str) -> bool:
    return response.strip().lower().startswith(prompt_to_repeat.strip().lower())


# --- start / end ----------------------------------------------------------------------------

def end_checker(response: str, *, end_phrase: str) -> bool:
    ending = response.strip().strip("\"“”").rstrip().lower()
    return ending.endswith(end_phrase.strip().lower())


def quotation(response: str) -> bool:
    # Straight or curly double quotes both count as "wrapped in double quotation marks".
    text = response.strip()
    return len(text) > 1 and text[0] in "\"“" and text[-1] in "\"”"


# --- case and punctuation -------------------------------------------------------------------

def capital_word_frequency(response: str, *, capital_frequency: int, capital_relation: str) -> bool:
    return compare(len(capital_words(response)), capital_relation, capital_frequency)


def english_capital(response: str) -> bool:
    return response.isupper() and is_language(response, "en")


def english_lowercase(response: str) -> bool:
    return response.islower() and is_language(response, "en")


def no_comma(response: str) -> bool:
    return "," not in response
