"""IFEval-compatible instruction checkers, loose/strict scoring and file handling."""
from __future__ import annotations

import json
import os
import re

import pytest

from alignkit.evaluation.ifeval import (
    INSTRUCTION_TYPES,
    IFEvalFormatError,
    IFEvalPrompt,
    InstructionError,
    check_instruction,
    count_sentences,
    count_words,
    load_ifeval_prompts,
    read_responses,
    response_variants,
    score_ifeval,
    split_paragraphs,
    validate_kwargs,
)
from alignkit.data.errors import RecordError
from alignkit.evaluation.ifeval.__main__ import main as cli_main
from alignkit.evaluation.ifeval.language import detect_language
from tests.helpers.files import jsonl_path

GERMAN = "Das ist ein schöner Tag und wir gehen heute mit den Kindern in den Park spazieren."
ENGLISH = "This is a short sentence about the weather today and the walk we take in the park."

# (instruction id, kwargs, a response that follows it, a response that does not)
CASES = [
    ("keywords:existence", {"keywords": ["cat", "Moon"]},
     "The CAT jumped over the moon.", "The cat jumped over the sun."),
    ("keywords:frequency", {"keyword": "fake", "frequency": 2, "relation": "at least"},
     "Fake news is fake.", "Fake news."),
    ("keywords:frequency", {"keyword": "war", "frequency": 2, "relation": "less than"},
     "War is bad.", "War and war."),
    ("keywords:forbidden_words", {"forbidden_words": ["rock", "night"]},
     "Rocket science by daylight.", "We rock all NIGHT."),
    ("keywords:letter_frequency", {"letter": "q", "let_frequency": 2, "let_relation": "at least"},
     "Quick quiz.", "Quick test."),
    ("keywords:letter_frequency", {"letter": "!", "let_frequency": 2, "let_relation": "less than"},
     "Wow!", "Wow!!"),
    ("language:response_language", {"language": "de"}, GERMAN, ENGLISH),
    ("length_constraints:number_sentences", {"num_sentences": 3, "relation": "less than"},
     "Dr. Smith arrived at 3.15 today. He left.", "One. Two! Three?"),
    ("length_constraints:number_sentences", {"num_sentences": 2, "relation": "at least"},
     "Hi there. Bye now.", "Just one sentence, without a full stop"),
    ("length_constraints:number_paragraphs", {"num_paragraphs": 3},
     "A\n***\nB\n***\nC", "A\n***\nB"),
    ("length_constraints:number_words", {"num_words": 5, "relation": "at least"},
     "one two three four five", "one two three four"),
    ("length_constraints:number_words", {"num_words": 3, "relation": "less than"},
     "hi there", "hi there friend"),
    ("length_constraints:nth_paragraph_first_word", {"num_paragraphs": 2, "nth_paragraph": 2, "first_word": "weekend"},
     'Intro text.\n\n"Weekend, at last!" we said.', "Intro.\n\nWeekday plans."),
    ("detectable_content:number_placeholders", {"num_placeholders": 2},
     "Dear [name], you live at [address].", "Dear [name], you live at (address)."),
    ("detectable_content:postscript", {"postscript_marker": "P.P.S"},
     "Body.\n\nP.P.S. see you", "Body.\n\nP.S. see you"),
    ("detectable_content:postscript", {"postscript_marker": "P.S."},
     "Body\n\np.s. later", "Body\n\nPS later"),
    ("detectable_format:number_bullet_lists", {"num_bullets": 2},
     "Intro:\n* one\n- two\n**Bold** line", "* one\n* two\n* three"),
    ("detectable_format:constrained_response", {},
     "Thinking it over... My answer is no.", "My answer is: no."),
    ("detectable_format:number_highlighted_sections", {"num_highlights": 2},
     "*first* and **second**", "*only one* and ** ** empty"),
    ("detectable_format:multiple_sections", {"section_spliter": "SECTION", "num_sections": 2},
     "SECTION 1\nIntro\nSECTION 2\nBody", "Section 1\nIntro\nSection 2\nBody"),
    ("detectable_format:json_format", {}, '```json\n{"a": [1, 2]}\n```', 'Here it is: {"a": 1}'),
    ("detectable_format:title", {}, "<<My Title>>\nText", "<< >> text"),
    ("combination:two_responses", {}, "Answer one.\n******\nAnswer two.", "Same.\n******\nSame."),
    ("combination:repeat_prompt", {"prompt_to_repeat": "Write a poem."},
     "write a poem. Roses are red.", "Sure! Write a poem. Roses are red."),
    ("startend:end_checker", {"end_phrase": "Peace!"}, 'Goodbye now. Peace!"', "Peace! Goodbye now."),
    ("startend:quotation", {}, '"Wrapped in quotes"', 'Not "wrapped" at all'),
    ("change_case:capital_word_frequency", {"capital_frequency": 2, "capital_relation": "at least"},
     "The U.S. and NASA agree.", "The Nasa says AI's fine."),
    ("change_case:capital_word_frequency", {"capital_frequency": 1, "capital_relation": "less than"},
     "no capitals here", "OK then"),
    ("change_case:english_capital", {}, ENGLISH.upper(), ENGLISH),
    ("change_case:english_lowercase", {}, ENGLISH.lower(), GERMAN.lower()),
    ("punctuation:no_comma", {}, "No commas here.", "Well, yes."),
]


def test_cases_cover_every_instruction_type():
    assert {case[0] for case in CASES} == set(INSTRUCTION_TYPES)
    assert len(INSTRUCTION_TYPES) == 25


@pytest.mark.parametrize("instruction_id,kwargs,good,bad", CASES, ids=[c[0] for c in CASES])
def test_checker_accepts_following_and_rejects_violating(instruction_id, kwargs, good, bad):
    assert check_instruction(instruction_id, kwargs, good) is True
    assert check_instruction(instruction_id, kwargs, bad) is False


@pytest.mark.parametrize("instruction_id,kwargs,good,bad", CASES, ids=[c[0] for c in CASES])
def test_blank_response_follows_nothing(instruction_id, kwargs, good, bad):
    assert not check_instruction(instruction_id, kwargs, "  \n ")
    assert not check_instruction(instruction_id, kwargs, "  \n ", loose=True)


# --- the reference checker's rules (the default) ----------------------------------------------
# Each verdict below is the IFEval reference checker's on the same text (google-research
# instruction_following_eval, run by bench/ifeval_reference_check.py's reference); each test covers
# one place where alignkit used to decide otherwise.

def _ok(instruction_id, kwargs, text, rules="reference"):
    return check_instruction(instruction_id, kwargs, text, rules=rules)


def test_sentences_are_punkt_sentences():
    # A list marker at the start of a line is a sentence of its own; "e.g." and "etc." end one.
    assert count_sentences("Steps:\n1. Mix the flour.\n2. Bake it.") == 4
    assert count_sentences("Just one sentence, e.g. this one.") == 2
    assert count_sentences("We sell pens, ink, etc. and more.") == 2
    # Known abbreviations, initials before a name and decimals do not; a line break never does.
    assert count_sentences("Mr. Brown met Dr. Lee in the U.S. They talked.") == 2
    assert count_sentences("The ruling in Brown v. Board changed schools. Done.") == 2
    assert count_sentences("Dr. Smith arrived at 3.15 today. He left.") == 2
    assert count_sentences("end\n\nNew para without stop\n\nAnother.") == 1
    assert not _ok("length_constraints:number_sentences", {"num_sentences": 4, "relation": "less than"},
                   "Steps:\n1. Mix the flour.\n2. Bake it.")


def test_capital_words_are_counted_on_nltk_word_tokens():
    kwargs = {"capital_frequency": 2, "capital_relation": "at least"}
    assert _ok("change_case:capital_word_frequency", kwargs, "I'M here")  # "I" and "'M"
    assert not _ok("change_case:capital_word_frequency", kwargs, "Use AND/OR here")  # one token


def test_any_three_asterisks_divide_paragraphs():
    check = lambda text, n: _ok("length_constraints:number_paragraphs", {"num_paragraphs": n}, text)
    assert check("Intro text\n\n***Next part", 2)
    assert check("First part ***. Second part", 2)
    assert not check("***Bold italic*** text", 1)  # split into "", "Bold italic", " text"
    assert check("***\nA\n***\nB\n***\nC\n***", 3)  # empty edges do not count
    assert not check("A\n***\n***\nB\n***\nC", 3)  # an empty paragraph between dividers fails


def test_nth_paragraph_first_word_keeps_markdown_and_splits_at_double_newlines_only():
    kwargs = {"num_paragraphs": 2, "nth_paragraph": 1, "first_word": "summary"}
    assert not _ok("length_constraints:nth_paragraph_first_word", kwargs, "**Summary:** x\n\nMore.")
    assert not _ok("length_constraints:nth_paragraph_first_word", kwargs, "Summary-ish x\n\nMore.")
    assert _ok("length_constraints:nth_paragraph_first_word", kwargs, "Summary x\n \nA\n\nB")  # "\n \n" splits nothing
    second = {"num_paragraphs": 2, "nth_paragraph": 2, "first_word": "weekend"}
    assert _ok("length_constraints:nth_paragraph_first_word", second, 'Intro.\n\n"Weekend, at last!" we said.')
    assert _ok("length_constraints:nth_paragraph_first_word", {**second, "first_word": "it"}, "Intro.\n\nIt's here.")


def test_bullets_are_lines_starting_with_a_star_or_a_dash():
    check = lambda text, n: _ok("detectable_format:number_bullet_lists", {"num_bullets": n}, text)
    assert check("*item one\n*item two", 2)  # no space needed after the star
    assert check("* one\n---\n* two", 3)  # a "---" rule starts with a dash
    assert check("*An italic line*\n* one", 2)
    assert check("**Bold** line\n* one", 1)  # "**" is not a bullet


def test_quotes_must_be_straight():
    assert not _ok("startend:quotation", {}, "“Curly quotes”")
    assert not _ok("startend:end_checker", {"end_phrase": "Peace!"}, "“Goodbye now. Peace!”")
    assert _ok("startend:end_checker", {"end_phrase": "Peace!"}, 'Goodbye now. Peace!"')


def test_undetectable_language_passes():
    assert _ok("language:response_language", {"language": "en"}, "12345 !!!")
    assert not _ok("language:response_language", {"language": "en"}, GERMAN)
    assert not _ok("change_case:english_capital", {}, "12345 !!! ABC")  # detected, and not English


def test_a_pps_is_also_a_ps():
    assert _ok("detectable_content:postscript", {"postscript_marker": "P.S."}, "Body\n\nP.P.S. later")
    assert not _ok("detectable_content:postscript", {"postscript_marker": "P.S."}, "Perhaps.s. no")


def test_highlights_count_single_and_double_asterisk_spans_separately():
    check = lambda text, n: _ok("detectable_format:number_highlighted_sections", {"num_highlights": n}, text)
    assert check("***x***", 2)
    assert not check("**bold** text", 2)


def test_empty_brackets_are_a_placeholder():
    assert _ok("detectable_content:number_placeholders", {"num_placeholders": 2}, "Dear [name], you live at [].")


def test_json_fence_labels_other_than_json_fail():
    assert not _ok("detectable_format:json_format", {}, '```javascript\n{"a": 1}\n```')
    assert _ok("detectable_format:json_format", {}, '```JSON\n{"a": 1}\n```')
    assert check_instruction("detectable_format:json_format", {}, '```javascript\n{"a": 1}\n```', loose=True)


def test_section_headers_may_end_a_longer_word_and_title_is_greedy():
    assert _ok("detectable_format:multiple_sections", {"section_spliter": "SECTION", "num_sections": 2},
               "SUBSECTION 1 a SUBSECTION 2 b")
    assert _ok("detectable_format:title", {}, "<< >> text >>")


def test_keyword_parameters_are_patterns_as_in_the_reference():
    assert _ok("keywords:existence", {"keywords": ["colou?r"]}, "The color red")
    assert _ok("keywords:existence", {"keywords": ["f(x"]}, "let f(x = 1")  # not a pattern: literal
    assert not _ok("keywords:existence", {"keywords": ["f(x"]}, "let fx = 1")


def test_letter_frequency_counts_a_non_letter_argument():
    # google-research's current checker counts "!"; its older versions drew a random letter instead.
    kwargs = {"letter": "!", "let_frequency": 2, "let_relation": "at least"}
    assert _ok("keywords:letter_frequency", kwargs, "Wow!!")
    assert not _ok("keywords:letter_frequency", kwargs, "Wow!")


# --- alignkit's rules (rules="alignkit") --------------------------------------------------------

def test_alignkit_rules_keep_the_forgiving_readings():
    lenient = lambda instruction_id, kwargs, text: _ok(instruction_id, kwargs, text, rules="alignkit")
    assert count_sentences("Steps:\n1. Mix the flour.\n2. Bake it.", "alignkit") == 2
    assert count_sentences("Pens, ink, etc. are sold. Pens, ink, etc. Then we left.", "alignkit") == 3
    assert count_sentences("Wait... what happened? Nothing… Really.", "alignkit") == 3
    assert count_sentences('He said "Stop." Then he left.', "alignkit") == 2
    assert count_sentences("首先。然后！最后？", "alignkit") == 3
    assert count_sentences("***\n---\n", "alignkit") == 0
    assert lenient("length_constraints:number_paragraphs", {"num_paragraphs": 2}, "***Bold italic*** A\n***\nB")
    summary = {"num_paragraphs": 2, "nth_paragraph": 1, "first_word": "summary"}
    assert lenient("length_constraints:nth_paragraph_first_word", summary, "**Summary:** x\n\n\nMore.")
    assert lenient("length_constraints:nth_paragraph_first_word", summary, "## Summary\n\nMore.")
    assert not lenient("length_constraints:nth_paragraph_first_word", summary, "Summary x\n \nA\n\nB")
    assert not lenient("detectable_format:number_bullet_lists", {"num_bullets": 2}, "*item one\n*item two")
    assert lenient("startend:quotation", {}, "“Curly quotes”")
    assert lenient("startend:end_checker", {"end_phrase": "Peace!"}, "“Goodbye now. Peace!”")
    assert not lenient("language:response_language", {"language": "en"}, "12345 !!!")
    assert not lenient("detectable_content:postscript", {"postscript_marker": "P.S."}, "Body\n\nP.P.S. later")
    assert not lenient("detectable_content:number_placeholders", {"num_placeholders": 2}, "Dear [name], at [].")
    assert lenient("detectable_format:json_format", {}, '```javascript\n{"a": 1}\n```')
    assert not lenient("detectable_format:multiple_sections", {"section_spliter": "SECTION", "num_sections": 2},
                       "SUBSECTION 1 a SUBSECTION 2 b")
    assert lenient("change_case:capital_word_frequency", {"capital_frequency": 2, "capital_relation": "at least"},
                   "Use AND/OR here")


def test_unknown_rules_are_an_error():
    with pytest.raises(ValueError, match="rules must be one of"):
        check_instruction("punctuation:no_comma", {}, "x", rules="strict")


def test_two_responses_rejects_a_single_answer_and_empty_middle():
    assert not check_instruction("combination:two_responses", {}, "Only one answer.")
    assert not check_instruction("combination:two_responses", {}, "A\n******\n******\nB")
    assert check_instruction("combination:two_responses", {}, "******\nA\n******\nB\n******")


def test_language_detection_is_deterministic():
    short = "hello"  # unseeded langdetect answers "nl" or "fi" for this at random
    assert len({detect_language(short) for _ in range(20)}) == 1
    assert detect_language("12345 !!!") is None
    assert check_instruction("language:response_language", {"language": "en"}, ENGLISH)


def test_word_and_paragraph_counting():
    assert count_words("Don't stop -- it's state-of-the-art!") == 9  # Don t stop it s state of the art
    assert split_paragraphs("A\n\n \n\nB\nstill B\n\n") == ["A", "B\nstill B"]


def test_words_are_counted_by_nltk_as_in_the_reference():
    from nltk.tokenize import RegexpTokenizer

    hindi = "हिन्दी भाषा में लिखा गया उत्तर"  # vowel signs: word characters for `regex`, not for `re`
    assert count_words(hindi) == len(RegexpTokenizer(r"\w+").tokenize(hindi))
    assert count_words(hindi, "alignkit") == len(re.findall(r"\w+", hindi))
    assert count_words("Don't stop", "alignkit") == count_words("Don't stop") == 3


# --- loose vs strict --------------------------------------------------------------------------

def test_loose_forgives_a_first_line_a_last_line_and_asterisks():
    no_comma, end = "punctuation:no_comma", "startend:end_checker"
    preamble = "Sure, here it is:\nThe answer has no commas"
    assert not check_instruction(no_comma, {}, preamble)
    assert check_instruction(no_comma, {}, preamble, loose=True)

    signed = "Answer text. Peace!\n(written by a bot)"
    assert not check_instruction(end, {"end_phrase": "Peace!"}, signed)
    assert check_instruction(end, {"end_phrase": "Peace!"}, signed, loose=True)

    bold_quote = '**"Hello there"**'
    assert not check_instruction("startend:quotation", {}, bold_quote)
    assert check_instruction("startend:quotation", {}, bold_quote, loose=True)


def test_loose_never_passes_on_an_emptied_response():
    # Dropping the only line would leave "", which contains no comma; that must not count.
    assert not check_instruction("punctuation:no_comma", {}, "Hello, world", loose=True)
    assert "" not in response_variants("Hello, world")
    assert response_variants("a*\nb\nc")[0] == "a*\nb\nc"
    assert set(response_variants("a*\nb\nc")) == {"a*\nb\nc", "a\nb\nc", "b\nc", "a*\nb", "a\nb", "b"}


# --- prompt- and instruction-level scoring ----------------------------------------------------

def _prompt(key, text, *pairs):
    return IFEvalPrompt(key, text, tuple(i for i, _ in pairs), tuple(k for _, k in pairs))


def test_prompt_and_instruction_level_arithmetic():
    prompts = [
        _prompt(1, "p1", ("punctuation:no_comma", {}), ("startend:quotation", {})),
        _prompt(2, "p2", ("punctuation:no_comma", {}), ("detectable_format:title", {})),
        _prompt(3, "p3", ("startend:end_checker", {"end_phrase": "Bye."})),
    ]
    responses = {
        "p1": '"No commas here"',  # both pass
        "p2": "Sure, here:\n<<Title>> body",  # comma only in the first line: loose pass
        "not in the set": "stray answer",
    }
    result = score_ifeval(prompts, responses)
    assert (result.prompts.total, result.prompts.passed_strict, result.prompts.passed_loose) == (3, 1, 2)
    assert (result.instructions.total, result.instructions.passed_strict, result.instructions.passed_loose) == (5, 3, 4)
    assert result.prompt_level_strict == pytest.approx(1 / 3)
    assert result.prompt_level_loose == pytest.approx(2 / 3)
    assert result.instruction_level_strict == pytest.approx(3 / 5)
    assert result.instruction_level_loose == pytest.approx(4 / 5)
    comma = result.per_instruction["punctuation:no_comma"]
    assert (comma.total, comma.passed_strict, comma.passed_loose) == (2, 1, 2)
    assert result.per_category["startend"].total == 2 and result.per_category["startend"].passed_strict == 1
    assert result.missing == [3]
    assert result.unmatched_responses == ["not in the set"]
    assert [o.strict for o in result.outcomes] == [[True, True], [False, True], [False]]

    numbers = json.loads(json.dumps(result.to_dict()))
    assert numbers["instruction_level_loose"] == pytest.approx(0.8)
    assert numbers["per_instruction"]["detectable_format:title"]["accuracy_strict"] == 1.0
    assert numbers["outcomes"][2]["missing"] is True


def test_missing_responses_count_as_failures():
    prompts = [_prompt("a", "p", ("punctuation:no_comma", {}))]
    result = score_ifeval(prompts, {})
    assert result.missing == ["a"]
    assert result.prompt_level_loose == 0.0 and result.instruction_level_loose == 0.0
    with pytest.raises(ValueError):
        score_ifeval([], {})
    assert score_ifeval(prompts, {"p": None}).missing == ["a"]
    with pytest.raises(TypeError, match="'a'"):
        score_ifeval(prompts, {"p": 3})


# --- parameters: defaults, nulls and errors ----------------------------------------------------

def test_null_parameters_are_ignored_and_defaults_apply():
    # The Hugging Face copy of IFEval lists every parameter, mostly null.
    kwargs = {"num_highlights": None, "postscript_marker": None, "relation": None}
    assert validate_kwargs("detectable_content:postscript", kwargs) == {"postscript_marker": "P.S."}
    assert validate_kwargs("detectable_format:multiple_sections", {"num_sections": 2})["section_spliter"] == "Section"
    assert check_instruction("detectable_format:multiple_sections", {"num_sections": 2}, "Section 1 a Section 2 b")
    assert validate_kwargs("keywords:frequency", {"keyword": "x", "frequency": 1.0, "relation": " At Least "}) == {
        "keyword": "x", "frequency": 1, "relation": "at least"}


def test_repeat_prompt_defaults_to_the_request_in_the_prompt():
    prompt = "Write a haiku about rain.\nFirst repeat the request word for word without change, then answer."
    assert check_instruction("combination:repeat_prompt", {}, "Write a haiku about rain. Drops fall.", prompt)
    assert not check_instruction("combination:repeat_prompt", {}, "Drops fall.", prompt)
    with pytest.raises(InstructionError, match="prompt_to_repeat"):
        check_instruction("combination:repeat_prompt", {}, "anything")


@pytest.mark.parametrize("instruction_id,kwargs,field", [
    ("length_constraints:number_words", {"num_words": "ten", "relation": "at least"}, "num_words"),
    ("length_constraints:number_words", {"num_words": 10, "relation": "more than"}, "relation"),
    ("length_constraints:number_words", {"num_words": 10}, "relation"),
    ("length_constraints:number_words", {"num_word": 10, "relation": "at least"}, "num_word"),
    ("keywords:letter_frequency", {"letter": "ab", "let_frequency": 1, "let_relation": "at least"}, "letter"),
    ("language:response_language", {"language": "klingon"}, "language"),
    ("length_constraints:nth_paragraph_first_word",
     {"num_paragraphs": 2, "nth_paragraph": 3, "first_word": "x"}, "nth_paragraph"),
])
def test_bad_parameters_name_the_field(instruction_id, kwargs, field):
    with pytest.raises(InstructionError) as caught:
        check_instruction(instruction_id, kwargs, "response")
    assert caught.value.field == field


def test_unknown_instruction_id_suggests_the_closest():
    with pytest.raises(InstructionError, match="punctuation:no_comma"):
        check_instruction("punctuation:no_commas", {}, "x")


# --- files ------------------------------------------------------------------------------------

GOOD = {"key": 1, "prompt": "Say hi", "instruction_id_list": ["punctuation:no_comma"], "kwargs": [{}]}


@pytest.mark.parametrize("bad_line,expected", [
    ("{not json", r":2: invalid JSON"),
    ("[1, 2]", r":2: expected a JSON object"),
    ({"key": 2, "prompt": "x", "instruction_id_list": ["punctuation:no_comma"]}, r":2: missing field 'kwargs'"),
    ({**GOOD, "key": 2, "instruction_id_list": ["punctuation:no_comma", "startend:quote"], "kwargs": [{}, {}]},
     r":2: field 'instruction_id_list\[1\]'.*startend:quotation"),
    ({**GOOD, "key": 2, "instruction_id_list": ["length_constraints:number_words"],
      "kwargs": [{"num_words": "many", "relation": "at least"}]}, r":2: field 'kwargs\[0\].num_words'"),
    ({**GOOD, "key": 2, "kwargs": [{}, {}]}, r":2: field 'kwargs' has 2 entries for 1"),
    ({**GOOD, "prompt": "another"}, r":2: field 'key': 1 already used on line 1"),
    ({**GOOD, "key": 2, "prompt": 7}, r":2: field 'prompt' must be str"),
])
def test_malformed_prompt_file_errors_name_file_line_and_field(tmp_path, bad_line, expected):
    path = jsonl_path(tmp_path / "input.jsonl", [GOOD, bad_line])
    # Lines that are not JSON objects are the file reader's RecordError; bad fields are IFEvalFormatError.
    with pytest.raises((IFEvalFormatError, RecordError), match=str(path).replace(".", r"\.") + expected):
        load_ifeval_prompts(path)


def test_prompt_file_accepts_null_parameters_and_blank_lines(tmp_path):
    record = {"key": "k", "prompt": "p", "instruction_id_list": ["detectable_format:number_bullet_lists"],
              "kwargs": [{"num_bullets": 2, "num_words": None, "relation": None}]}
    path = jsonl_path(tmp_path / "input.jsonl", ["", record, "   "])
    [prompt] = load_ifeval_prompts(path)
    assert prompt.kwargs == ({"num_bullets": 2},)


def test_read_responses_and_its_errors(tmp_path):
    good = jsonl_path(tmp_path / "ok.jsonl", [{"prompt": "a", "response": "x", "model": "m"},
                                               {"prompt": "b", "response": ""}])
    assert read_responses(good) == {"a": "x", "b": ""}
    missing = jsonl_path(tmp_path / "missing.jsonl", [{"prompt": "a", "response": "x"}, {"prompt": "b"}])
    with pytest.raises(IFEvalFormatError, match=r"missing\.jsonl:2: missing field 'response'"):
        read_responses(missing)
    twice = jsonl_path(tmp_path / "twice.jsonl", [{"prompt": "a", "response": "x"}, {"prompt": "a", "response": "y"}])
    with pytest.raises(IFEvalFormatError, match=r"twice\.jsonl:2: field 'prompt': already answered on line 1"):
        read_responses(twice)
    wrong_type = jsonl_path(tmp_path / "type.jsonl", [{"prompt": "a", "response": None}])
    with pytest.raises(IFEvalFormatError, match=r"type\.jsonl:1: field 'response' must be str"):
        read_responses(wrong_type)


def test_command_line_writes_every_number(tmp_path, capsys):
    prompts = jsonl_path(tmp_path / "input.jsonl", [GOOD, {**GOOD, "key": 2, "prompt": "Say bye"}])
    responses = jsonl_path(tmp_path / "responses.jsonl", [{"prompt": "Say hi", "response": "Hi there"}])
    out = tmp_path / "result.json"
    assert cli_main([str(prompts), str(responses), "--out", str(out)]) == 0
    numbers = json.loads(out.read_text())
    assert numbers["prompt_level_strict"] == 0.5 and numbers["missing"] == [2]
    assert "1 prompts had no response" in capsys.readouterr().out
    assert cli_main([str(tmp_path / "absent.jsonl"), str(responses)]) == 2


def test_eval_ifeval_with_no_matching_response_is_a_one_line_error(tmp_path, capsys):
    from alignkit.cli import main as alignkit_main

    prompts = jsonl_path(tmp_path / "input.jsonl", [GOOD, {**GOOD, "key": 2, "prompt": "Say bye"}])
    responses = jsonl_path(tmp_path / "responses.jsonl", [{"prompt": "Say hi!", "response": "Hi there"}])
    out = tmp_path / "result.json"
    assert alignkit_main(["eval", "ifeval", "--prompts", str(prompts), "--responses", str(responses),
                          "--out", str(out)]) == 2
    captured = capsys.readouterr()
    assert captured.err.strip().count("\n") == 0 and "Traceback" not in captured.err
    assert f"{responses}: no response matches any of the 2 prompts" in captured.err
    assert not out.exists() and "prompt_level" not in captured.out
    assert cli_main([str(prompts), str(responses)]) == 2
    assert "no response matches" in capsys.readouterr().err


def test_eval_ifeval_partly_matched_reports_the_counts(tmp_path, capsys):
    from alignkit.cli import main as alignkit_main

    prompts = jsonl_path(tmp_path / "input.jsonl", [GOOD, {**GOOD, "key": 2, "prompt": "Say bye"},
                                                       {**GOOD, "key": 3, "prompt": "Say what"}])
    responses = jsonl_path(tmp_path / "responses.jsonl", [{"prompt": "Say hi", "response": "Hi there"},
                                                           {"prompt": "elsewhere", "response": "x"}])
    assert alignkit_main(["eval", "ifeval", "--prompts", str(prompts), "--responses", str(responses)]) == 0
    captured = capsys.readouterr()
    assert (f"scored 1 of 3 prompts; 2 prompts had no response in {responses} and count as failed; "
            f"1 responses in {responses} match no prompt") in captured.err
    printed = json.loads(captured.out)
    assert (printed["n_prompts"], printed["n_answered"]) == (3, 1)
    assert printed["prompt_level_strict"] == pytest.approx(1 / 3)  # over every prompt, as it says


# --- the real IFEval prompt set -----------------------------------------------------------------

def test_real_prompt_file_is_fully_supported(shared_data):
    path = os.path.join(shared_data, "ifeval", "input_data.jsonl")
    if not os.path.exists(path):
        pytest.skip("ifeval/input_data.jsonl is not present")
    prompts = load_ifeval_prompts(path)
    with open(path, encoding="utf-8") as handle:
        raw = [json.loads(line) for line in handle if line.strip()]
    assert len(prompts) == len(raw)
    assert {i for p in prompts for i in p.instruction_ids} == {i for r in raw for i in r["instruction_id_list"]}
    assert {i for p in prompts for i in p.instruction_ids} <= set(INSTRUCTION_TYPES)

    # Echoing the prompt back is a response every checker must be able to judge.
    echoed = score_ifeval(prompts, {p.prompt: p.prompt for p in prompts})
    assert echoed.instructions.total == sum(len(r["instruction_id_list"]) for r in raw)
    assert not echoed.missing
    repeat = echoed.per_instruction["combination:repeat_prompt"]
    starts_with_request = sum(
        kw["prompt_to_repeat"].strip() == r["prompt"][: len(kw["prompt_to_repeat"].strip())]
        for r in raw for i, kw in zip(r["instruction_id_list"], r["kwargs"]) if i == "combination:repeat_prompt"
    )
    assert repeat.passed_strict == starts_with_request

    unanswered = score_ifeval(prompts, {})
    assert unanswered.missing == [r["key"] for r in raw]
    assert unanswered.prompt_level_loose == 0.0
