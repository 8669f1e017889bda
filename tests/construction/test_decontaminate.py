"""`alignkit data decontaminate`: planted evaluation text is caught and attributed to its file, short texts
are one gram, the fraction rule, and a real run against ../shared/data with a sentence taken from it."""
import json
import re

import pytest

from alignkit.config import ConfigError, load_config
from alignkit.construction.decontaminate import (DecontaminateConfig, is_contaminated, ngrams, run_decontaminate,
                                                 string_values)
from alignkit.data.readers import DataSpec, read_records
from tests.helpers.files import write_jsonl
from tests.helpers.files import read_jsonl

# Written for this test: an "evaluation" question nested the way real sets nest them.
EVAL_SENTENCE = ("Describe how a lighthouse keeper on a remote northern island would prepare the lamp "
                 "before a winter storm arrives tonight")


def sft(user, answer):
    return {"messages": [{"role": "user", "content": user}, {"role": "assistant", "content": answer}]}


def config(tmp_path, data, eval_files, **keys):
    cfg = DecontaminateConfig(output_dir=str(tmp_path / "out"), data=[DataSpec(str(p)) for p in data],
                              eval_files=[str(p) for p in eval_files], languages=False, progress=False, **keys)
    cfg.validate()
    return cfg


def test_string_values_reach_every_nested_string_but_not_keys_or_numbers():
    record = {"id": 3, "turns": ["first", {"text": "second", "score": 1.0}], "meta": {"note": "third"}, "ok": True}
    assert list(string_values(record)) == ["first", "second", "third"]


def test_ngrams_are_normalised_distinct_and_a_short_text_is_one_gram():
    assert ngrams("The cat, the CAT; the cat!", 2) == ["the cat", "cat the"]
    assert ngrams("Only four words here.", 13) == ["only four words here"]
    assert ngrams("?!", 13) == []


def test_the_rule_counts_matches_and_optionally_the_fraction():
    assert is_contaminated(1, 40, min_matches=1, min_fraction=0)
    assert not is_contaminated(1, 40, min_matches=2, min_fraction=0)
    assert not is_contaminated(10, 40, min_matches=1, min_fraction=0.5)
    assert is_contaminated(20, 40, min_matches=1, min_fraction=0.5)
    assert not is_contaminated(0, 0, min_matches=1, min_fraction=0)


def test_a_planted_sentence_is_removed_and_attributed_to_its_file(tmp_path):
    evals = write_jsonl(tmp_path / "eval.jsonl", [
        {"id": 1, "turns": ["What is two plus two?"]},
        {"id": 2, "meta": {"question": EVAL_SENTENCE, "category": "writing"}},
    ])
    other = write_jsonl(tmp_path / "other.jsonl", [{"q": "A completely different question about rivers and mountains "
                                                         "that shares nothing at all with the training data here"}])
    rows = [
        sft("Write a limerick about a cat who learns to play the violin badly.", "There once was a cat..."),
        sft("Please help. " + EVAL_SENTENCE.upper() + "!", "Check the oil and wipe the glass."),
        sft("Give me a recipe for pancakes with blueberries and maple syrup.", "Mix flour, eggs and milk."),
        sft("Describe how a lighthouse keeper prepares for a storm.", "Carefully."),  # a few shared words only
    ]
    data = write_jsonl(tmp_path / "train.jsonl", rows)
    result = run_decontaminate(config(tmp_path, [data], [other, evals]))
    out = tmp_path / "out"
    assert read_jsonl(out / "data.jsonl") == [rows[0], rows[2], rows[3]]
    (dropped,) = read_jsonl(out / "dropped.jsonl")
    assert dropped["reason"] == "contaminated" and dropped["source"] == f"{data}:2" and dropped["record"] == rows[1]
    matched = dropped["matched"]
    assert matched["eval_file"] == evals and matched["eval_record"] == f"{evals}:2"
    assert len(matched["ngram"].split()) == 13 and matched["ngram"] in " ".join(ngrams(EVAL_SENTENCE, 100))
    assert matched["ngrams_shared"] == len(EVAL_SENTENCE.split()) - 12  # every 13-gram of the sentence
    assert result.counts.to_dict()["decontaminate"] == {
        "seen": 4, "kept": 3, "dropped": {f"matches {other}": 0, f"matches {evals}": 1}}
    summary = json.loads((out / "summary.json").read_text())
    assert summary["eval_files"][evals]["records_removed_sharing"] == 1
    assert summary["eval_files"][other]["records_removed_sharing"] == 0
    assert summary["stats"]["records"] == 3


def test_short_records_are_one_gram_matched_only_by_a_whole_evaluation_string(tmp_path):
    evals = write_jsonl(tmp_path / "eval.jsonl", [{"turns": [EVAL_SENTENCE, "Now shorten it to one line."]}])
    rows = [sft("now SHORTEN it, to one line", "Done."),  # the same 6 words as a whole string: contaminated
            sft("Shorten it to one line.", "Done."),  # inside it, but not the whole string: kept
            sft("Describe how a lighthouse keeper", "Done.")]  # a piece of a long string: kept
    data = write_jsonl(tmp_path / "train.jsonl", rows)
    run_decontaminate(config(tmp_path, [data], [evals], text="prompt"))
    assert [d["source"] for d in read_jsonl(tmp_path / "out" / "dropped.jsonl")] == [f"{data}:1"]
    assert read_jsonl(tmp_path / "out" / "dropped.jsonl")[0]["matched"]["ngram"] == "now shorten it to one line"


def test_min_fraction_lets_a_record_that_quotes_a_little_through(tmp_path):
    evals = write_jsonl(tmp_path / "eval.jsonl", [{"q": EVAL_SENTENCE}])
    filler = " ".join(f"word{k}" for k in range(60))
    rows = [sft(EVAL_SENTENCE, "Sure."), sft(f"{filler} {EVAL_SENTENCE} {filler}", "Sure.")]
    data = write_jsonl(tmp_path / "train.jsonl", rows)
    run_decontaminate(config(tmp_path, [data], [evals], text="prompt", min_fraction=0.5))
    assert [d["source"] for d in read_jsonl(tmp_path / "out" / "dropped.jsonl")] == [f"{data}:1"]
    run_decontaminate(config(tmp_path, [data], [evals], text="prompt"))
    assert len(read_jsonl(tmp_path / "out" / "dropped.jsonl")) == 2


def test_a_record_is_counted_against_the_file_it_shares_most_with(tmp_path):
    words = EVAL_SENTENCE.split()
    assert len(words) == 20  # 8 13-grams
    first = write_jsonl(tmp_path / "first.jsonl", [{"q": " ".join(words[:14])}])  # holds 2 of them
    second = write_jsonl(tmp_path / "second.jsonl", [{"q": EVAL_SENTENCE}])  # all 8
    data = write_jsonl(tmp_path / "train.jsonl", [sft(EVAL_SENTENCE, "Sure.")])
    result = run_decontaminate(config(tmp_path, [data], [first, second], text="prompt"))
    (dropped,) = read_jsonl(tmp_path / "out" / "dropped.jsonl")
    assert dropped["matched"]["eval_file"] == second
    assert dropped["matched"]["per_file"] == {first: 2, second: 8}
    assert result.counts.to_dict()["decontaminate"]["dropped"] == {f"matches {first}": 0, f"matches {second}": 1}


def test_preference_pairs_compare_the_prompt_and_chosen_response(tmp_path):
    evals = write_jsonl(tmp_path / "eval.jsonl", [{"q": EVAL_SENTENCE}])
    pairs = [{"prompt": "Answer briefly.", "chosen": "Fine.", "rejected": EVAL_SENTENCE},
             {"prompt": "Answer briefly.", "chosen": EVAL_SENTENCE, "rejected": "Fine."}]
    data = write_jsonl(tmp_path / "pairs.jsonl", pairs)
    run_decontaminate(config(tmp_path, [data], [evals], text="response"))
    assert [d["source"] for d in read_jsonl(tmp_path / "out" / "dropped.jsonl")] == [f"{data}:2"]


def test_config_errors_name_the_key(tmp_path):
    data = write_jsonl(tmp_path / "d.jsonl", [sft("a", "b")])
    base = [f"output_dir={tmp_path / 'out'}", f"data=[{data}]"]
    with pytest.raises(ConfigError, match="eval_files: must be a list of at least one evaluation file"):
        load_config(DecontaminateConfig, None, base)
    with pytest.raises(ConfigError, match=r"eval_files\[1\]: must be an existing file \(not found\), got 'missing.json'"):
        load_config(DecontaminateConfig, None, base + [f"eval_files=[{data}, missing.json]"])
    with pytest.raises(ConfigError, match="min_fraction: must be a number in"):
        load_config(DecontaminateConfig, None, base + [f"eval_files=[{data}]", "min_fraction=2"])


def test_a_sentence_taken_from_the_shared_evaluation_data_is_caught_there(tmp_path, shared_data):
    files = [f"{shared_data}/{name}" for name in ("llmbar/natural.json", "llmbar/adversarial_neighbor.json",
                                                   "ifeval/input_data.jsonl", "mt_bench/question.jsonl")]
    # Taken at test time, never stored: the first long MT-Bench question and a stretch of an IFEval prompt.
    question = next(r for r in read_records(files[3]) if len(r.data["turns"][0].split()) >= 20)
    prompt = next(r for r in read_records(files[2]) if len(r.data["prompt"].split()) >= 40)
    stretch = " ".join(prompt.data["prompt"].split()[10:30])
    rows = [sft("Write a limerick about a cat who learns to play the violin badly.", "There once was a cat..."),
            sft(question.data["turns"][0], "An answer written here."),
            sft("Could you help with this: " + stretch.lower(), "Sure, here it is."),
            sft("Give me a recipe for pancakes with blueberries and maple syrup.", "Mix flour, eggs and milk.")]
    data = write_jsonl(tmp_path / "train.jsonl", rows)
    result = run_decontaminate(config(tmp_path, [data], files))
    dropped = read_jsonl(tmp_path / "out" / "dropped.jsonl")
    assert [(d["source"], d["matched"]["eval_file"]) for d in dropped] == [(f"{data}:2", files[3]),
                                                                          (f"{data}:3", files[2])]
    assert dropped[0]["matched"]["eval_record"] == f"{files[3]}:{question.line}"
    assert dropped[1]["matched"]["eval_record"] == f"{files[2]}:{prompt.line}"
    assert re.sub(r"[\W_]+", " ", stretch.casefold()).find(dropped[1]["matched"]["ngram"]) >= 0
    assert read_jsonl(tmp_path / "out" / "data.jsonl") == [rows[0], rows[3]]
    steps = result.counts.to_dict()["decontaminate"]["dropped"]
    assert steps == {f"matches {files[0]}": 0, f"matches {files[1]}": 0, f"matches {files[2]}": 1,
                     f"matches {files[3]}": 1}
