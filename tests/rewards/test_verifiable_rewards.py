import json

import pytest

from alignkit.rewards.formats import CLOSING_PHRASE, follows_format
from alignkit.rewards.interface import Sample
from alignkit.rewards.verifiable import (ExactMatchReward, FormatReward, FunctionReward, IFEvalReward, RegexReward,
                                         import_function)
from tests.helpers.paths import DEMO_DATA

ASK = [{"role": "user", "content": "Write about cats."}]


def sample(completion, prompt=ASK, **metadata):
    return Sample(prompt, completion, metadata)


def test_ifeval_reward_is_the_fraction_or_all_of_instructions_followed():
    meta = {"instruction_id_list": ["punctuation:no_comma", "keywords:existence"],
            "kwargs": [{}, {"keywords": ["day"]}]}
    both = sample("cats sleep all day", **meta)
    one = sample("cats sleep", **meta)  # no comma, but no "day"
    none = sample("cats, dogs", **meta)
    assert IFEvalReward().score([both, one, none]).scores == [1.0, 0.5, 0.0]
    result = IFEvalReward(mode="all").score([both, one, none])
    assert result.scores == [1.0, 0.0, 0.0] and result.num_failures == 0


def test_ifeval_reward_uses_instruction_kwargs_and_loose_variants():
    meta = {"instruction_id_list": ["length_constraints:number_words"],
            "kwargs": [{"num_words": 3, "relation": "less than"}]}
    assert IFEvalReward().score([sample("two words", **meta), sample("one two three four", **meta)]).scores \
        == [1.0, 0.0]
    ending = {"instruction_id_list": ["startend:end_checker"], "kwargs": [{"end_phrase": "Bye."}]}
    text = "Hello.\nBye.\n**"  # only a loose variant (markdown stripped) ends with the phrase
    assert IFEvalReward().score([sample(text, **ending)]).scores == [0.0]
    assert IFEvalReward(loose=True).score([sample(text, **ending)]).scores == [1.0]


def test_ifeval_reward_without_instructions_or_with_bad_ones_is_a_counted_failure():
    bad = {"instruction_id_list": ["punctuation:no_coma"], "kwargs": [{}]}
    result = IFEvalReward(failure_reward=-1.0).score([sample("x"), sample("x", **bad)])
    assert result.scores == [-1.0, -1.0]
    assert result.num_failures == 2
    assert "instruction_id_list" in result.failures[0] and "no_coma" in result.failures[1]


@pytest.mark.parametrize("fmt, good, bad", [
    ("json", '{"answer": "Paris"}', '{"answer": "Paris", "extra": 1}'),
    ("upper", "THE CAPITAL IS PARIS.", "THE capital IS PARIS."),
    ("ending", f"Paris. {CLOSING_PHRASE}", CLOSING_PHRASE),
])
def test_format_reward_true_and_false_cases(fmt, good, bad):
    assert FormatReward(fmt=fmt).score([sample(good), sample(bad)]).scores == [1.0, 0.0]


def test_format_reward_reads_the_format_from_metadata_and_options_change_the_check():
    reward = FormatReward()
    result = reward.score([sample("HELLO", format="upper"), sample("HELLO", format="json"), sample("HELLO")])
    assert result.scores[:2] == [1.0, 0.0]
    assert result.failures[2] is not None and result.num_failures == 1
    assert FormatReward(fmt="json", json_key="city").score([sample('{"city": "Rome"}')]).scores == [1.0]
    assert FormatReward(fmt="ending", ending="Cheers!").score([sample("Done. Cheers!")]).scores == [1.0]


def test_the_demo_scores_with_the_same_format_check():
    from alignkit.demo import heldout

    assert heldout.follows_format is follows_format
    with open(DEMO_DATA / "heldout.jsonl") as f:
        rows = [json.loads(line) for line in f][:30]
    samples = [Sample(r["messages"][:1], r["messages"][1]["content"], {"format": r["format"]}) for r in rows]
    assert FormatReward().score(samples).scores == [1.0] * len(rows)  # the demo's own answers follow
    assert heldout.score(rows, [s.completion for s in samples])["format_following"] == 1.0
    wrong = [Sample(s.prompt, "nope", s.metadata) for s in samples]
    assert FormatReward().score(wrong).scores == [0.0] * len(rows)
    assert heldout.score(rows, ["nope"] * len(rows))["format_following"] == 0.0


def test_exact_match_against_the_reference_with_and_without_normalisation():
    samples = [sample("  Paris ", answer="Paris"), sample("paris\n", answer="Paris"),
               sample("New   York", answer="new york"), sample("Lyon", answer=["Paris", "Lyon"]),
               sample("Rome", answer="Paris")]
    assert ExactMatchReward().score(samples).scores == [1.0, 1.0, 1.0, 1.0, 0.0]
    assert ExactMatchReward(normalize=False).score(samples).scores == [1.0, 0.0, 0.0, 1.0, 0.0]
    result = ExactMatchReward(reference_key="gold", failure_reward=0.25).score([sample("Paris", answer="Paris")])
    assert result.scores == [0.25] and "gold" in result.failures[0]


def test_regex_reward_search_match_and_fullmatch():
    texts = [sample("The answer is 42."), sample("42 is the answer"), sample("42"), sample("no number")]
    assert RegexReward(pattern=r"\d+").score(texts).scores == [1.0, 1.0, 1.0, 0.0]
    assert RegexReward(pattern=r"\d+", mode="match").score(texts).scores == [0.0, 1.0, 1.0, 0.0]
    assert RegexReward(pattern=r"\d+", mode="fullmatch").score(texts).scores == [0.0, 0.0, 1.0, 0.0]
    assert RegexReward(pattern=r"(?i)^the").score(texts).scores == [1.0, 0.0, 0.0, 0.0]


def test_python_function_reward_by_import_path():
    reward = FunctionReward(function="tests.helpers.reward_functions:counts_keyword")
    result = reward.score([sample("cat cat dog", keyword="cat"), sample("dog", keyword="cat"), sample("cat")])
    assert result.scores[:2] == [2.0, 0.0]
    assert result.num_failures == 1 and "returned None" in result.failures[2]
    sees_prompt = FunctionReward(function="tests.helpers.reward_functions:answers_last_question")
    assert sees_prompt.score([sample("about cats.", prompt=[{"role": "user", "content": "what about cats?"}]),
                              sample("dogs", prompt=[{"role": "user", "content": "what about cats?"}])]).scores \
        == [1.0, 0.0]


def test_python_function_that_cannot_be_imported_or_returns_no_number_fails_clearly():
    for path, words in [("tests.helpers.no_such_module:fn", "cannot import module"),
                        ("tests.helpers.reward_functions:missing", "has no 'missing'"),
                        ("tests.helpers.reward_functions", "package.module:function"),
                        ("tests.helpers.reward_functions:NOT_CALLABLE", "not callable")]:
        with pytest.raises(ValueError, match=words) as caught:
            import_function(path)
        assert "\n" not in str(caught.value)
    reward = FunctionReward(function="tests.helpers.reward_functions:returns_text")
    with pytest.raises(TypeError, match="returned str"):
        reward.score([sample("x")])
