"""Strict parsing of judge replies: pairwise verdicts, numeric scores, and log-prob verdicts.

Output formats (the judge prompts in `prompts.py` ask for exactly these):

* Pairwise: a line ``Verdict: A`` or ``Verdict: B`` (``Verdict: tie`` only when ties are allowed),
  normally the last line of the reply.
* Single-answer grading: a line ``Rating: N`` with N a number from 1 to 10.
* Rubric grading: a line ``Score: N`` with N a number from 1 to 5.

Tolerated: any letter case; markdown or brackets around the line or the value (``**Verdict:** [[B]]``,
``## Verdict: (A).``, ``Rating: [[7]]``); a ``Final`` before the label; the value on the line after the
label; ``Output A`` / ``Response A`` / ``Assistant A`` for the letter; ``7/10`` or ``7 out of 10`` when the
denominator is the top of the scale; a reply that consists only of the value (``B``, ``**8**``).

Never guessed: a reply without a label line, a value that is not exactly one allowed answer ("A or B",
"both", "neither", "A is better", "7-8", "11"), label lines that disagree, refusals and empty replies are
all parse *failures*. Callers record them as failures and report their rate; a failure is never a win,
a loss, a tie or a score.

Copied verdicts: the outputs being judged are untrusted, and one may end with its own "Verdict: A".
A judge that copies such text into its reply has not decided anything, so label lines inside a copy
are not read. Pass those texts as `quoted`. A label line counts as copied when it, or the line its
value is read from, belongs to two consecutive non-empty lines of the reply that also stand
consecutively in one quoted text (compared after the normalisation above, so "> " quoting or bold
does not hide a copy). Label lines outside copies are read as usual; when every label line is inside
a copy, the reply is a failure. A lone line cannot be told apart: a judge whose whole reply is
"Verdict: A" is read as deciding A even if an output contains that line.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Sequence

# Characters that markdown, quoting or the "[[A]]" convention wrap around labels and values.
_MARKUP = re.compile(r"[*_`#>\[\](){}\"'\u201c\u201d\u2018\u2019]")
_WHO = r"(?:(?:output|response|assistant|answer)\s+)?"
_LETTER = re.compile(rf"^{_WHO}([ab])$")
_NUMBER = re.compile(r"^(\d+(?:\.\d+)?)(?:\s*(?:/|out of)\s*(\d+))?$")
# Space markers that BPE / SentencePiece vocabularies put in raw token strings.
_TOKEN_SPACE = "\u0120\u2581"


@dataclass(frozen=True)
class ParsedVerdict:
    """A pairwise verdict in terms of the positions shown to the judge."""

    label: str | None  # "A" | "B" | "tie"; None when the reply could not be parsed
    failure: str | None = None  # why parsing failed; None on success
    prob_a: float | None = None  # log-prob reading only: normalised mass of A vs B
    prob_b: float | None = None

    @property
    def ok(self) -> bool:
        return self.failure is None


@dataclass(frozen=True)
class ParsedScore:
    score: float | None
    failure: str | None = None

    @property
    def ok(self) -> bool:
        return self.failure is None


def clean_reply(text: str) -> str:
    text = _MARKUP.sub(" ", text)
    text = " ".join(text.split()).lower()
    return text.rstrip(".!").strip()


def _copied_lines(lines: list[str], quoted: Sequence[str]) -> set[int]:
    """Indexes of cleaned reply `lines` that are part of a two-line verbatim copy of a quoted text."""
    pairs = set()
    for text in quoted:
        source = [line for line in map(clean_reply, text.splitlines()) if line]
        pairs.update(zip(source, source[1:]))
    filled = [i for i, line in enumerate(lines) if line]
    copied = set()
    for first, second in zip(filled, filled[1:]):
        if (lines[first], lines[second]) in pairs:
            copied.update((first, second))
    return copied


def labelled_values(text: str, label: str, quoted: Sequence[str] = ()) -> tuple[list[str], int]:
    """Values of every `label:` line, in order (the next non-empty line when the value is on its own),
    and how many label lines were left out as copies of `quoted` text (see the module doc)."""
    pattern = re.compile(rf"^(?:final\s+)?{label}\s*:\s*(.*)$")
    lines = [clean_reply(line) for line in text.splitlines()]
    copied = _copied_lines(lines, quoted) if quoted else set()
    values, skipped = [], 0
    for i, line in enumerate(lines):
        match = pattern.match(line)
        if match is None:
            continue
        value, at = match.group(1), i
        if not value:
            at = next((j for j in range(i + 1, len(lines)) if lines[j]), i)
            value = lines[at] if at != i else ""
        if i in copied or at in copied:
            skipped += 1
            continue
        values.append(value)
    return values, skipped


def _only_copies(label: str) -> str:
    return f"the only '{label}:' lines are inside text copied from an output shown to the judge"


def _letter(value: str, allow_tie: bool) -> str | None:
    match = _LETTER.match(value)
    if match:
        return match.group(1).upper()
    if allow_tie and value == "tie":
        return "tie"
    return None


def parse_verdict(text: str | None, allow_tie: bool = False, quoted: Sequence[str] = ()) -> ParsedVerdict:
    """Read ``Verdict: A|B`` (or ``tie`` when `allow_tie`) from a judge reply; see the module doc.

    `quoted`: the outputs shown to the judge; verdict lines copied from them are not the judge's.
    """
    if text is None or not text.strip():
        return ParsedVerdict(None, "empty reply")
    values, copied = labelled_values(text, "verdict", quoted)
    if copied and not values:
        return ParsedVerdict(None, _only_copies("Verdict"))
    if not values:
        bare = _letter(clean_reply(text), allow_tie)
        if bare is not None:
            return ParsedVerdict(bare)
        return ParsedVerdict(None, "no 'Verdict:' line")
    decided = _letter(values[-1], allow_tie)
    if decided is None:
        if values[-1] == "tie":
            return ParsedVerdict(None, "verdict 'tie' but ties are not allowed")
        return ParsedVerdict(None, f"verdict value {values[-1]!r} is not one of A, B"
                                   + (", tie" if allow_tie else ""))
    others = {_letter(value, allow_tie) for value in values[:-1]} - {None, decided}
    if others:
        return ParsedVerdict(None, f"conflicting verdict lines: {sorted(others | {decided})}")
    return ParsedVerdict(decided)


def compile_verdict_pattern(pattern: str) -> re.Pattern:
    """A judge's own verdict format as a regex with one group holding the answer (e.g.
    ``Output \\((a|b)\\) is better``); matched case-insensitively. Raises ValueError for a bad one."""
    try:
        compiled = re.compile(pattern, re.IGNORECASE)
    except re.error as error:
        raise ValueError(f"verdict_pattern {pattern!r}: not a regular expression ({error})") from None
    if compiled.groups != 1:
        raise ValueError(f"verdict_pattern {pattern!r}: needs exactly one group, the answer; it has {compiled.groups}")
    return compiled


def parse_verdict_pattern(text: str | None, pattern: str, allow_tie: bool = False,
                          quoted: Sequence[str] = ()) -> ParsedVerdict:
    """Read a verdict written in another format: every match of `pattern` in the reply, whose group must
    read as A or B (or tie when `allow_tie`) after the usual clean-up ("(a)", "**B**", "Output A" all
    read). Matches whose text stands in an output shown to the judge (`quoted`) were copied, not decided.
    No match, a group that is not an answer, or matches that disagree: a failure, as with `parse_verdict`."""
    if text is None or not text.strip():
        return ParsedVerdict(None, "empty reply")
    compiled = compile_verdict_pattern(pattern)
    shown = [q.lower() for q in quoted]
    matches = [m for m in compiled.finditer(text) if not any(m.group(0).lower() in q for q in shown)]
    if not matches:
        return ParsedVerdict(None, f"no match for verdict_pattern {pattern!r}")
    decided = [_letter(clean_reply(m.group(1) or ""), allow_tie) for m in matches]
    if None in decided:
        value = matches[decided.index(None)].group(1)
        return ParsedVerdict(None, f"verdict_pattern matched {value!r}, which is not one of A, B"
                                   + (", tie" if allow_tie else ""))
    if len(set(decided)) > 1:
        return ParsedVerdict(None, f"conflicting verdicts: {sorted(set(decided))}")
    return ParsedVerdict(decided[0])


def _number(value: str, low: int, high: int) -> tuple[float | None, str | None]:
    match = _NUMBER.match(value)
    if match is None:
        return None, f"value {value!r} is not a number"
    if match.group(2) is not None and int(match.group(2)) != high:
        return None, f"value {value!r} is not on the 1-{high} scale"
    number = float(match.group(1))
    if not low <= number <= high:
        return None, f"{number:g} is outside {low}-{high}"
    return number, None


def parse_score(text: str | None, label: str, low: int, high: int, quoted: Sequence[str] = ()) -> ParsedScore:
    """Read ``<label>: N`` with `low` <= N <= `high` from a judge reply; see the module doc (`quoted` too)."""
    if text is None or not text.strip():
        return ParsedScore(None, "empty reply")
    values, copied = labelled_values(text, label.lower(), quoted)
    if copied and not values:
        return ParsedScore(None, _only_copies(label))
    if not values:
        bare, _ = _number(clean_reply(text), low, high)
        if bare is not None:
            return ParsedScore(bare)
        return ParsedScore(None, f"no '{label}:' line")
    score, failure = _number(values[-1], low, high)
    if failure:
        return ParsedScore(None, failure)
    earlier = {_number(value, low, high)[0] for value in values[:-1]} - {None, score}
    if earlier:
        return ParsedScore(None, f"conflicting {label} lines: {sorted(earlier | {score})}")
    return ParsedScore(score)


def _token_label(token: str, allow_tie: bool) -> str | None:
    stripped = _MARKUP.sub("", token.strip(_TOKEN_SPACE + " \t\n:"))
    # Case-sensitive on purpose: at a verdict position " a" is far more often the article than a label.
    if stripped in ("A", "B"):
        return stripped
    if allow_tie and stripped.lower() == "tie":
        return "tie"
    return None


def verdict_from_logprobs(top_logprobs: list[dict[str, float]] | None, allow_tie: bool = False) -> ParsedVerdict:
    """Read a verdict from per-token top log-probabilities instead of the sampled text.

    Each dict's first entry is taken as the token that was generated: the local backend puts it first,
    and in a dict sorted by probability it is the most likely token, which greedy decoding generates.
    The verdict position is the first generated token that is a label ("A", "B", with spaces/markup
    around it; "tie" when allowed); there the probability mass of all candidates spelling A is compared
    with those spelling B (and "tie"). This is meant for replies that are the verdict alone
    (``Verdict: A``): in a reply that reasons first, an earlier "A" would be read.
    No label anywhere, or a dead heat for the largest mass, is a failure.
    """
    if not top_logprobs:
        return ParsedVerdict(None, "no log-probabilities returned")
    for candidates in top_logprobs:
        if not candidates:
            continue
        generated = next(iter(candidates))
        if _token_label(generated, allow_tie) is None:
            continue
        mass = {"A": 0.0, "B": 0.0, "tie": 0.0}
        for token, logprob in candidates.items():
            label = _token_label(token, allow_tie)
            if label is not None:
                mass[label] += math.exp(logprob)
        ranked = sorted(mass.values(), reverse=True)
        if ranked[0] == ranked[1]:
            return ParsedVerdict(None, "the two most likely verdicts have equal probability")
        winner = max(mass, key=mass.__getitem__)
        total = sum(mass.values())
        return ParsedVerdict(winner, prob_a=mass["A"] / total, prob_b=mass["B"] / total)
    return ParsedVerdict(None, "no verdict token among the top log-probabilities")
