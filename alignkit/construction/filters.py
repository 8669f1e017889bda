"""The rules that decide whether a machine-written instruction (or its answer) is kept: short pure functions.

Self-instruct runs a proposed instruction through them in a fixed order (length, keyword blocklist,
first character, exact duplicate, ROUGE-L similarity to everything kept so far) and evol-instruct uses
them to spot failed evolutions (unchanged, a copied prompt, a short apology, an answer with no content).
Each returns a plain value, so a job can record which rule removed what and why.

ROUGE-L is rouge-score's: its tokenizer (lower-cased runs of letters and digits, no stemming, the
`RougeScorer(["rougeL"])` default) and its F-measure of the longest common subsequence (the tests check
the values against `RougeScorer`). The LCS length is computed here rather than with rouge_scorer's own
table: that module imports absl, whose logging handler keeps the sys.stderr of the moment it was imported
and closes it when anything later reconfigures logging (uvicorn does), which breaks a process that had
redirected stderr meanwhile (pytest's capture, a notebook). A text is tokenised once and its tokens are
compared with every pool item's, which is what makes checking a candidate against a growing pool
affordable; `most_similar` skips pool items that are too short or too long to reach the threshold,
which changes no answer (see there). Text in scripts the tokenizer drops (CJK, Cyrillic) has no
tokens and scores 0, so only the exact-duplicate rule catches copies there.
"""
from __future__ import annotations

import re
from typing import Sequence

from rouge_score import scoring, tokenizers

_TOKENIZER = tokenizers.DefaultTokenizer(use_stemmer=False)
_NON_WORD = re.compile(r"[\W_]+")
_WORD = re.compile(r"[^\W_]+(?:'[^\W_]+)*")  # letters and digits, with inner apostrophes (don't, it's)

# Tasks a text-only model cannot carry out: they need senses, tools or places it does not have.
# A keyword matches as a whole word or phrase in any case, so list the inflections you mean too.
BLOCKLIST = ("image", "images", "picture", "pictures", "photo", "photos", "photograph", "graph", "graphs",
             "chart", "charts", "diagram", "draw", "drawing", "plot", "sketch", "video", "videos", "audio",
             "file", "files", "attachment", "attached", "upload", "download", "map", "go to", "website", "url",
             "click", "camera")

# Words that carry no answer on their own: an answer made only of these (and punctuation) says nothing.
# "yes" and "no" are left out: they are whole answers to a yes-or-no question.
STOP_WORDS = frozenset("""
a an the and or but nor so yet if then else than that this these those there here it its it's they them
their he him his she her we us our you your i me my mine yours is are was were be been being am do does did
done doing have has had having will would shall should can could may might must of in on at by for with
from to into onto about as up down out over under again once not ok okay oh well just very too also
only all any some each every both either neither such what which who whom whose when where why how
don't doesn't didn't can't cannot won't isn't aren't wasn't weren't i'm i'd i'll i've you're that's there's let's
""".split())


def normalise(text: str) -> str:
    """Case, punctuation and spacing folded away: `Write a poem!` and `write a poem` are the same task."""
    return _NON_WORD.sub(" ", text.casefold()).strip()


def squash(text: str) -> str:
    """Runs of whitespace made one space, ends stripped."""
    return " ".join(text.split())


def same_text(a: str, b: str) -> bool:
    """Identical up to whitespace: as a revision, or as the other side of a pair, it changes nothing."""
    return a.split() == b.split()


def word_count(text: str) -> int:
    return len(text.split())


def length_ok(text: str, min_words: int, max_words: int) -> bool:
    """Too short says too little to answer; too long is usually several tasks run together or a ramble."""
    return min_words <= word_count(text) <= max_words


def blocked_keyword(text: str, keywords: Sequence[str]) -> str | None:
    """The first keyword of `keywords` that `text` holds as a whole word or phrase (any case), or None."""
    folded = text.casefold()
    for keyword in keywords:
        if re.search(rf"(?<![^\W_]){re.escape(keyword.casefold())}(?![^\W_])", folded):
            return keyword
    return None


def starts_with_letter(text: str) -> bool:
    """Instructions start with a word; a leading digit, bullet, quote or markup means list debris."""
    stripped = text.lstrip()
    return bool(stripped) and stripped[0].isalpha()


def rouge_tokens(text: str) -> list[str]:
    """rouge-score's tokens of `text`, as `RougeScorer(["rougeL"]).score` makes them."""
    return _TOKENIZER.tokenize(text)


def lcs_length(a: Sequence[str], b: Sequence[str]) -> int:
    """Length of the longest common subsequence of two token lists (one row of the usual table at a time)."""
    row = [0] * (len(b) + 1)
    for token in a:
        diagonal = 0  # the previous row's value one column to the left
        for j, other in enumerate(b, 1):
            diagonal, row[j] = row[j], diagonal + 1 if token == other else max(row[j], row[j - 1])
    return row[-1]


def rouge_l(tokens_a: Sequence[str], tokens_b: Sequence[str]) -> float:
    """ROUGE-L F-measure of two token lists (symmetric: swapping them swaps precision and recall); 0 when
    either is empty, as rouge-score has it."""
    if not tokens_a or not tokens_b:
        return 0.0
    common = lcs_length(tokens_a, tokens_b)
    return scoring.fmeasure(common / len(tokens_b), common / len(tokens_a))


def most_similar(tokens: Sequence[str], pool: Sequence[Sequence[str]], threshold: float) -> tuple[int, float] | None:
    """(index, score) of the pool item with the highest ROUGE-L F with `tokens`, the first on a tie, when that
    score is at least `threshold`; else None.

    An LCS is at most the shorter text, so F <= 2 * min(m, n) / (m + n); items whose bound is under the
    threshold can neither reach it nor beat a score that does, so they are skipped without changing the result.
    """
    best: tuple[int, float] | None = None
    size = len(tokens)
    for index, other in enumerate(pool):
        total = size + len(other)
        if not total or 2 * min(size, len(other)) / total < threshold:
            continue
        score = rouge_l(tokens, other)
        if score >= threshold and (best is None or score > best[1]):
            best = (index, score)
    return best


def is_unchanged(original: str, rewrite: str, threshold: float) -> bool:
    """A rewrite that is the original again: equal once normalised, or ROUGE-L F with it at least `threshold`."""
    if normalise(original) == normalise(rewrite):
        return True
    return rouge_l(rouge_tokens(original), rouge_tokens(rewrite)) >= threshold


def copied_marker(text: str, markers: Sequence[str]) -> str | None:
    """The first marker (a phrase of the rewriting prompt itself) found in `text`, any case, or None: a rewrite
    that says "rewritten task" or keeps the prompt's delimiters has copied the prompt instead of answering it."""
    folded = text.casefold()
    return next((marker for marker in markers if marker.casefold() in folded), None)


def is_short_refusal(text: str, markers: Sequence[str], max_words: int) -> bool:
    """A short reply holding an apology marker ("sorry", "as an AI") declines the task; a long one that
    mentions sorry in passing (a letter of apology, say) is an answer."""
    folded = text.casefold()
    return word_count(text) < max_words and any(marker.casefold() in folded for marker in markers)


def has_content(text: str, stop_words: frozenset[str] = STOP_WORDS) -> bool:
    """True when `text` has a word that is not a stop word (numbers count: "42" answers a sum)."""
    words = _WORD.findall(text.casefold().replace("\u2019", "'"))  # a typographic apostrophe reads as '
    return any(word not in stop_words for word in words)


def completion_failure(text: str, finish_reason: str, keep_cut_off: bool = False) -> str | None:
    """Why a model reply cannot be used as it stands: "error" (the backend failed: never text), "empty", or
    "cut off" (it stopped at max_tokens, so its end is missing; kept only with `keep_cut_off`); None when it can."""
    if finish_reason == "error":
        return "error"
    if not text.strip():
        return "empty"
    if finish_reason == "length" and not keep_cut_off:
        return "cut off"
    return None
