"""One function per IFEval instruction type: does a response follow it?

Each function takes the response and the instruction's (already validated) parameters as keyword
arguments named exactly as in IFEval's `kwargs`. These are the reference rules: each function
decides as the IFEval reference checker does, quirks included, so scores equal published ones;
a docstring names each quirk. `LENIENT` maps an instruction id to alignkit's own, more forgiving
reading where one exists (rules="alignkit", see `registry.check_instruction`).

Where the reference uses a parameter as a regular expression (keywords, forbidden words, section
splitter, a custom postscript marker) so do these functions; a parameter that is not a valid
pattern is matched literally rather than crashing the run.
"""
from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Callable

from alignkit.evaluation.ifeval.language import detect_language, is_language
from alignkit.evaluation.ifeval.text import LENIENT as LENIENT_RULES
from alignkit.evaluation.ifeval.text import capital_words, count_sentences, count_words, split_paragraphs

LESS_THAN = "less than"
AT_LEAST = "at least"
RELATIONS = (LESS_THAN, AT_LEAST)

CONSTRAINED_OPTIONS = ("My answer is yes.", "My answer is no.", "My answer is maybe.")
TWO_RESPONSES_SEPARATOR = "******"


def compare(count: int, relation: str, threshold: int) -> bool:
    return count < threshold if relation == LESS_THAN else count >= threshold


def _pattern(text: str) -> str:
    """`text` as the reference uses it, a regular expression; literal when it does not compile."""
    try:
        re.compile(text)
    except re.error:
        return re.escape(text)
    return text


# --- keywords -------------------------------------------------------------------------------

def keywords_existence(response: str, *, keywords: list[str]) -> bool:
    # A search, not a word match: some keywords are word fragments ("hou", "le").
    return all(re.search(_pattern(keyword), response, flags=re.IGNORECASE) for keyword in keywords)


def keyword_frequency(response: str, *, keyword: str, frequency: int, relation: str) -> bool:
    occurrences = len(re.findall(_pattern(keyword), response, flags=re.IGNORECASE))
    return compare(occurrences, relation, frequency)


def forbidden_words(response: str, *, forbidden_words: list[str]) -> bool:
    return not any(
        re.search(rf"\b{_pattern(word)}\b", response, flags=re.IGNORECASE) for word in forbidden_words
    )


def letter_frequency(response: str, *, letter: str, let_frequency: int, let_relation: str) -> bool:
    """Occurrences of `letter`, case-insensitively; any single character counts, "!" included.

    google-research's current checker counts a non-letter argument ("!", "#") like a letter, as
    here. Its earlier versions, and lm-evaluation-harness's copy of them, replace a non-letter
    argument with a random letter, so their verdict on IFEval's two such instructions is a coin
    toss that no checker can reproduce.
    """
    occurrences = Counter(response.lower())[letter.lower()]
    return compare(occurrences, let_relation, let_frequency)


def response_language(response: str, *, language: str) -> bool:
    """The detected language is exactly `language`; text langdetect cannot classify (no letters
    it knows) passes, as in the reference, which counts such an instruction as followed."""
    detected = detect_language(response)
    return detected is None or detected == language


def response_language_lenient(response: str, *, language: str) -> bool:
    # Undetectable text fails (a check that cannot be verified must not pass), and "zh" accepts
    # both "zh-cn" and "zh-tw".
    return is_language(response, language)


# --- length -------------------------------------------------------------------------------

def number_sentences(response: str, *, num_sentences: int, relation: str) -> bool:
    return compare(count_sentences(response), relation, num_sentences)


def number_sentences_lenient(response: str, *, num_sentences: int, relation: str) -> bool:
    return compare(count_sentences(response, LENIENT_RULES), relation, num_sentences)


def number_words(response: str, *, num_words: int, relation: str) -> bool:
    return compare(count_words(response), relation, num_words)


def number_words_lenient(response: str, *, num_words: int, relation: str) -> bool:
    return compare(count_words(response, LENIENT_RULES), relation, num_words)


# Three asterisks with at most one whitespace character on either side, wherever they stand: the
# reference also splits "***Bold italic***" and "\n\n***Next".
_ANY_DIVIDER = re.compile(r"\s?\*\*\*\s?")
# alignkit rules: a markdown divider "***" standing between whitespace only.
_DIVIDER = re.compile(r"(?:(?<=\s)|^)\*\*\*(?=\s|$)")


def number_paragraphs(response: str, *, num_paragraphs: int) -> bool:
    """Exactly `num_paragraphs` paragraphs separated by "***"; an empty paragraph before the first
    or after the last divider does not count, one between two dividers fails the instruction."""
    return _count_divided(_ANY_DIVIDER.split(response), num_paragraphs)


def number_paragraphs_lenient(response: str, *, num_paragraphs: int) -> bool:
    return _count_divided(_DIVIDER.split(response), num_paragraphs)


def _count_divided(parts: list[str], expected: int) -> bool:
    filled = [bool(part.strip()) for part in parts]
    inner = filled[1:-1]
    if not all(inner):
        return False
    return sum(filled) == expected


def nth_paragraph_first_word(
    response: str, *, num_paragraphs: int, nth_paragraph: int, first_word: str
) -> bool:
    """Exactly `num_paragraphs` paragraphs split at each "\\n\\n", the nth starting with `first_word`.

    As in the reference: blank paragraphs are not counted but keep their place when the nth is
    looked up; the first word is the first whitespace-separated token with leading quotes
    removed, cut at the first . , ? ! ' or ", lowercased. Markdown stays part of it ("**Summary**"
    is not "summary").
    """
    paragraphs = response.split("\n\n")
    count = sum(1 for paragraph in paragraphs if paragraph.strip())
    if nth_paragraph > count:
        return False
    paragraph = paragraphs[nth_paragraph - 1].strip()
    if not paragraph:
        return False
    word = paragraph.split()[0].lstrip("'").lstrip('"')
    word = re.split(r"[.,?!'\"]", word, maxsplit=1)[0].lower()
    return count == num_paragraphs and word == first_word.lower()


def nth_paragraph_first_word_lenient(
    response: str, *, num_paragraphs: int, nth_paragraph: int, first_word: str
) -> bool:
    """alignkit rules: paragraphs split at blank lines (spaces allowed); leading quotes and markdown
    ("## ", "**") are not part of the word, and an apostrophe ends it."""
    paragraphs = split_paragraphs(response)
    if len(paragraphs) != num_paragraphs or nth_paragraph > len(paragraphs):
        return False
    match = re.search(r"[^\W_][\w-]*", paragraphs[nth_paragraph - 1])
    return (match.group().lower() if match else "") == first_word.lower()


# --- detectable content ---------------------------------------------------------------------

def number_placeholders(response: str, *, num_placeholders: int) -> bool:
    """Square-bracket spans on one line, shortest first; "[]" counts, as in the reference."""
    return len(re.findall(r"\[.*?\]", response)) >= num_placeholders


def number_placeholders_lenient(response: str, *, num_placeholders: int) -> bool:
    # A placeholder is non-empty text in square brackets on one line, such as [address].
    return len(re.findall(r"\[[^\[\]\n]+\]", response)) >= num_placeholders


def postscript(response: str, *, postscript_marker: str) -> bool:
    """The marker anywhere, case-insensitively, a space allowed after each dot of "P.S." / "P.P.S".

    The reference's "P.S." pattern also finds the "p.s." inside "P.P.S.", so a P.P.S. follows a
    P.S. instruction; any other marker is searched as a regular expression.
    """
    text = response.lower()
    if postscript_marker == "P.P.S":
        pattern = r"p\.\s?p\.\s?s"
    elif postscript_marker == "P.S.":
        pattern = r"p\.\s?s\."
    else:
        pattern = _pattern(postscript_marker.lower())
    return re.search(pattern, text) is not None


def postscript_lenient(response: str, *, postscript_marker: str) -> bool:
    # "P.P.S" also matches "P. P. S." and "p.p.s."; the marker must start a word and must not be
    # the tail of a longer marker, so "P.P.S." does not count as a "P.S.".
    body = r"\.\s?".join(re.escape(piece) for piece in postscript_marker.split("."))
    tail = r"(?!\w)" if postscript_marker[-1].isalnum() else ""
    return re.search(rf"(?<![\w.]){body}{tail}", response, flags=re.IGNORECASE) is not None


# --- detectable format ----------------------------------------------------------------------

# The reference's bullets: a line whose first non-space character is "*" not followed by another
# "*" (so "*item" and "*italic line*" count, "**bold**" does not), or any line starting with "-"
# ("---" rules and "-5 degrees" count). `^\s*` may start on a blank line before the bullet.
_STAR_BULLET = re.compile(r"^\s*\*[^*].*$", flags=re.MULTILINE)
_DASH_BULLET = re.compile(r"^\s*-.*$", flags=re.MULTILINE)


def number_bullet_lists(response: str, *, num_bullets: int) -> bool:
    """Exactly `num_bullets` bullet lines, counted as the reference counts them."""
    return len(_STAR_BULLET.findall(response)) + len(_DASH_BULLET.findall(response)) == num_bullets


def number_bullet_lists_lenient(response: str, *, num_bullets: int) -> bool:
    """Exactly `num_bullets` markdown bullet lines ("* item" or "- item", a space after the marker)."""
    bullets = re.findall(r"^[ \t]*[*-][ \t]+\S", response, flags=re.MULTILINE)
    return len(bullets) == num_bullets


def constrained_response(response: str) -> bool:
    return any(option in response for option in CONSTRAINED_OPTIONS)


def number_highlighted_sections(response: str, *, num_highlights: int) -> bool:
    """At least `num_highlights` highlights, counted as the reference counts them: every non-empty
    *span* between two asterisks on one line, plus every non-empty **span**, separately, so
    "***x***" is two highlights and "**bold**" one."""
    single = [span for span in re.findall(r"\*[^\n*]*\*", response) if span.strip("*").strip()]
    double = [span for span in re.findall(r"\*\*[^\n*]*\*\*", response) if span[2:-2].strip()]
    return len(single) + len(double) >= num_highlights


def number_highlighted_sections_lenient(response: str, *, num_highlights: int) -> bool:
    """At least `num_highlights` non-empty *italic* or **bold** spans on one line each."""
    spans = re.findall(r"\*\*([^\n*]*)\*\*|\*([^\n*]*)\*", response)
    return len([bold or italic for bold, italic in spans if (bold or italic).strip()]) >= num_highlights


def multiple_sections(response: str, *, section_spliter: str, num_sections: int) -> bool:
    """At least `num_sections` headers such as "SECTION 1", case-sensitively; like the reference,
    a header may be the tail of a longer word ("SUBSECTION 2")."""
    parts = re.split(rf"\s?{_pattern(section_spliter)}\s?\d+\s?", response)
    return len(parts) - 1 >= num_sections


def multiple_sections_lenient(response: str, *, section_spliter: str, num_sections: int) -> bool:
    headers = re.findall(rf"(?<!\w){re.escape(section_spliter)}\s?\d+", response)
    return len(headers) >= num_sections


_FENCE_OPENINGS = ("```json", "```Json", "```JSON", "```")


def json_format(response: str) -> bool:
    """The whole response is JSON, optionally inside a ``` fence labelled json (any of three
    spellings) or not labelled; another label ("```javascript") makes it not JSON."""
    text = response.strip()
    for opening in _FENCE_OPENINGS:
        text = text.removeprefix(opening)
    text = text.removesuffix("```").strip()
    return _is_json(text)


def json_format_lenient(response: str) -> bool:
    """The whole response is JSON, optionally inside one markdown code fence with any label."""
    text = re.sub(r"^```[\w-]*", "", response.strip())
    return _is_json(re.sub(r"```$", "", text).strip())


def _is_json(text: str) -> bool:
    try:
        json.loads(text)
    except ValueError:
        return False
    return True


def title(response: str) -> bool:
    # Greedy, as the reference: "<< >> x >>" is one title, " >> x", which is not blank.
    return any(found.lstrip("<").rstrip(">").strip() for found in re.findall(r"<<[^\n]+>>", response))


# --- combination ----------------------------------------------------------------------------

def two_responses(response: str) -> bool:
    """Two different answers separated by "******", with nothing else but optional edge separators."""
    parts = response.split(TWO_RESPONSES_SEPARATOR)
    answers = []
    for index, part in enumerate(parts):
        if part.strip():
            answers.append(part.strip())
        elif 0 < index < len(parts) - 1:
            return False
    return len(answers) == 2 and answers[0] != answers[1]


def repeat_prompt(response: str, *, prompt_to_repeat: str) -> bool:
    return response.strip().lower().startswith(prompt_to_repeat.strip().lower())


# --- start / end ----------------------------------------------------------------------------

def end_checker(response: str, *, end_phrase: str) -> bool:
    """Ends with `end_phrase`, case-insensitively, after straight double quotes around the response
    are removed (curly ones are not)."""
    return response.strip().strip('"').lower().endswith(end_phrase.strip().lower())


def end_checker_lenient(response: str, *, end_phrase: str) -> bool:
    ending = response.strip().strip("\"“”").rstrip().lower()
    return ending.endswith(end_phrase.strip().lower())


def quotation(response: str) -> bool:
    """Wrapped in straight double quotes ("), as the reference requires."""
    text = response.strip()
    return len(text) > 1 and text[0] == '"' and text[-1] == '"'


def quotation_lenient(response: str) -> bool:
    # Straight or curly double quotes both count as "wrapped in double quotation marks".
    text = response.strip()
    return len(text) > 1 and text[0] in "\"“" and text[-1] in "\"”"


# --- case and punctuation -------------------------------------------------------------------

def capital_word_frequency(response: str, *, capital_frequency: int, capital_relation: str) -> bool:
    return compare(len(capital_words(response)), capital_relation, capital_frequency)


def capital_word_frequency_lenient(response: str, *, capital_frequency: int, capital_relation: str) -> bool:
    return compare(len(capital_words(response, LENIENT_RULES)), capital_relation, capital_frequency)


def english_capital(response: str) -> bool:
    """All cased characters upper case, and English or of no language langdetect can tell (the
    reference passes undetectable text)."""
    return response.isupper() and detect_language(response) in ("en", None)


def english_capital_lenient(response: str) -> bool:
    return response.isupper() and is_language(response, "en")


def english_lowercase(response: str) -> bool:
    return response.islower() and detect_language(response) in ("en", None)


def english_lowercase_lenient(response: str) -> bool:
    return response.islower() and is_language(response, "en")


def no_comma(response: str) -> bool:
    return "," not in response


# alignkit's own readings (rules="alignkit"); instruction types not listed read the same under both.
LENIENT: dict[str, Callable[..., bool]] = {
    "language:response_language": response_language_lenient,
    "length_constraints:number_sentences": number_sentences_lenient,
    "length_constraints:number_words": number_words_lenient,
    "length_constraints:number_paragraphs": number_paragraphs_lenient,
    "length_constraints:nth_paragraph_first_word": nth_paragraph_first_word_lenient,
    "detectable_content:number_placeholders": number_placeholders_lenient,
    "detectable_content:postscript": postscript_lenient,
    "detectable_format:number_bullet_lists": number_bullet_lists_lenient,
    "detectable_format:number_highlighted_sections": number_highlighted_sections_lenient,
    "detectable_format:multiple_sections": multiple_sections_lenient,
    "detectable_format:json_format": json_format_lenient,
    "startend:end_checker": end_checker_lenient,
    "startend:quotation": quotation_lenient,
    "change_case:capital_word_frequency": capital_word_frequency_lenient,
    "change_case:english_capital": english_capital_lenient,
    "change_case:english_lowercase": english_lowercase_lenient,
}
