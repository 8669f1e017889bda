"""The instruction filters of self-instruct and evol-instruct, rule by rule."""
import json
import random
import subprocess
import sys

import pytest

from alignkit.construction import filters


def scorer_values(pairs):
    """rouge-score's own `RougeScorer(["rougeL"]).score(a, b)` F-measures, computed in a child process:
    rouge_scorer imports absl, whose logging handler would close pytest's captured stderr as soon as a later
    test starts a server that configures logging (see filters.py)."""
    code = ("import json, sys\nfrom rouge_score import rouge_scorer\nscorer = rouge_scorer.RougeScorer(['rougeL'])\n"
            "print(json.dumps([scorer.score(a, b)['rougeL'].fmeasure for a, b in json.load(sys.stdin)]))")
    done = subprocess.run([sys.executable, "-c", code], input=json.dumps(pairs), capture_output=True, text=True,
                          check=True)
    return json.loads(done.stdout)


def test_normalise_folds_case_punctuation_and_spacing_only():
    assert filters.normalise("Write a  POEM!") == filters.normalise("write a poem") == "write a poem"
    assert filters.normalise("Write a poem about cats") != filters.normalise("Write a poem about bats")


@pytest.mark.parametrize("text, ok", [("Name two planets", True), ("Name planets", False),
                                      ("one two three four five", True), ("one two three four five six", False)])
def test_length_counts_words_between_the_bounds(text, ok):
    assert filters.length_ok(text, 3, 5) is ok


@pytest.mark.parametrize("text, found", [
    ("Describe this Image in detail.", "image"),
    ("Go to the shop and buy milk.", "go to"),
    ("Imagine a city under the sea.", None),  # "image" is not a word of it
    ("Update your profile summary.", None),  # nor is "file"
    ("Summarise the story in two lines.", None),
    ("Open the attached spreadsheet", "attached"),
])
def test_blocklist_matches_whole_words_and_phrases_in_any_case(text, found):
    assert filters.blocked_keyword(text, ["image", "file", "go to", "attached"]) == found


@pytest.mark.parametrize("text, ok", [("Write a poem", True), ("  Écris un poème", True), ("1. Write", False),
                                      ('"Write a poem"', False), ("- Write", False), ("**Write**", False), ("", False)])
def test_an_instruction_must_start_with_a_letter(text, ok):
    assert filters.starts_with_letter(text) is ok


PAIRS = [
    ("Write a poem about cats", "write a short poem about dogs"),
    ("Explain how rainbows form.", "Explain how a rainbow forms in the sky!"),
    ("List three uses of vinegar", "Give three uses for baking soda at home"),
    ("Translate 'good morning' into Spanish", "Translate the phrase into Spanish: good morning"),
    ("!!!", "Write something"),  # no tokens on one side
    ("a b a b a", "b a b"),
]
# Random texts of varied lengths over a small vocabulary, so many pairs share long subsequences.
_RNG = random.Random(3)
TEXTS = [" ".join(_RNG.choice("the cat dog sat on a mat ran far away home red blue".split())
                  for _ in range(_RNG.randint(1, 12))) for _ in range(60)]
POOL, CANDIDATES = TEXTS[:40], TEXTS[40:]


@pytest.fixture(scope="module")
def reference():
    """(a, b) -> rouge-score's F-measure, for every pair the tests below compare."""
    pairs = PAIRS + [(b, a) for a, b in PAIRS] + [(p, c) for c in CANDIDATES for p in POOL]
    return dict(zip(pairs, scorer_values(pairs)))


def test_rouge_l_equals_rouge_scores_scorer(reference):
    for a, b in PAIRS:
        assert filters.rouge_l(filters.rouge_tokens(a), filters.rouge_tokens(b)) == reference[(a, b)]
        assert filters.rouge_l(filters.rouge_tokens(b), filters.rouge_tokens(a)) == reference[(b, a)]
    assert reference[PAIRS[0]] > 0.5 and reference[PAIRS[4]] == 0  # the pairs span the range


def test_lcs_length_on_known_cases():
    assert filters.lcs_length("abcbdab", "bdcaba") == 4
    assert filters.lcs_length("abc", "") == 0 and filters.lcs_length("abc", "abc") == 3


def test_most_similar_equals_a_brute_force_search_over_the_scorer(reference):
    """The length bound that skips pool items never changes the answer."""
    pool_tokens = [filters.rouge_tokens(p) for p in POOL]
    hits = 0
    for threshold in (0.3, 0.5, 0.7):
        for text in CANDIDATES:
            scores = [reference[(other, text)] for other in POOL]
            best = max(scores)
            expected = (scores.index(best), best) if best >= threshold else None
            assert filters.most_similar(filters.rouge_tokens(text), pool_tokens, threshold) == expected
            hits += expected is not None
    assert 0 < hits < 3 * len(CANDIDATES)  # both outcomes were tested


def test_most_similar_takes_the_first_of_equal_scores():
    pool = [filters.rouge_tokens(t) for t in ("bake a cake now", "paint the door", "bake a cake now")]
    assert filters.most_similar(filters.rouge_tokens("bake a cake now"), pool, 0.7) == (0, 1.0)
    assert filters.most_similar(filters.rouge_tokens("fix the car"), pool, 0.7) is None


def test_unchanged_is_equal_once_normalised_or_too_similar():
    assert filters.is_unchanged("Write a poem.", "write a POEM", 0.9)
    assert filters.is_unchanged("Explain how rainbows form", "Explain how rainbows form", 0.9)
    assert not filters.is_unchanged("Explain how rainbows form", "Explain how rainbows form after rain in summer", 0.9)
    assert filters.is_unchanged("Explain how rainbows form", "Explain how rainbows form after rain in summer", 0.6)


def test_copied_marker_finds_the_prompts_own_phrases():
    assert filters.copied_marker("Rewritten Task: list two planets", ["<<<", "rewritten task"]) == "rewritten task"
    assert filters.copied_marker("<<< List two planets", ["<<<", "rewritten task"]) == "<<<"
    assert filters.copied_marker("List two planets", ["<<<", "rewritten task"]) is None


def test_a_refusal_is_short_and_holds_a_marker():
    markers = ["sorry", "as an ai"]
    assert filters.is_short_refusal("Sorry, I can't help with that.", markers, 50)
    assert filters.is_short_refusal("As an AI, I have no opinions.", markers, 50)
    letter = "Dear Sam, I am sorry I missed your party. " + "It was a busy week at work and I lost track. " * 6
    assert not filters.is_short_refusal(letter, markers, 50)  # an apology letter is an answer
    assert not filters.is_short_refusal("Paris is the capital of France.", markers, 50)


@pytest.mark.parametrize("text, has", [("The, of and it!", False), ("", False), ("...", False), ("42", True),
                                      ("It's the Nile.", True), ("No.", True), ("Don't.", False),
                                      ("I don\u2019t.", False)])
def test_content_is_a_word_that_is_not_a_stop_word(text, has):
    assert filters.has_content(text) is has


def test_a_completion_fails_on_error_then_empty_then_cut_off():
    assert filters.completion_failure("", "error") == "error"
    assert filters.completion_failure("  \n", "stop") == "empty"
    assert filters.completion_failure("Half an ans", "length") == "cut off"
    assert filters.completion_failure("Half an ans", "length", keep_cut_off=True) is None
    assert filters.completion_failure("A whole answer.", "stop") is None
