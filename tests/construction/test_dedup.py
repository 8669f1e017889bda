"""`alignkit data dedup`: exact duplicates after normalisation, near duplicates around the threshold (LSH's
false positives checked and kept), the first occurrence kept in input order with its content unchanged."""
import json

import pytest

from alignkit.config import ConfigError, load_config
from alignkit.construction.dedup import DedupConfig, exact_key, find_exact, find_near, jaccard, run_dedup, shingles
from alignkit.data.errors import RecordError
from alignkit.data.readers import DataSpec
from tests.helpers.files import write_jsonl
from tests.helpers.files import read_jsonl

# 12 words, each 3-word shingle different: changing the last word changes 1 of 10 shingles (9/11 = 0.82).
TWELVE = "please write a short friendly note inviting every neighbour to our party"
# 10 words: changing the last word changes 1 of 8 shingles (7/9 = 0.78), just under 0.8.
TEN = "explain why the sky looks blue during a clear afternoon"


def sft(user, answer, **fields):
    return {"messages": [{"role": "user", "content": user}, {"role": "assistant", "content": answer}], **fields}


def config(tmp_path, *paths, **keys):
    cfg = DedupConfig(output_dir=str(tmp_path / "out"), data=[DataSpec(str(p)) for p in paths], languages=False,
                      progress=False, **keys)
    cfg.validate()
    return cfg


def test_exact_key_folds_case_punctuation_and_spacing_only():
    assert exact_key("Write a poem!") == exact_key("  write   A POEM ") == exact_key("write, a poem.")
    assert exact_key("Write a poem") != exact_key("Write a poems")
    assert exact_key("🙂") != exact_key("🙃")  # no words: compared as written, not all one empty key


def test_shingles_are_word_runs_and_a_short_text_is_one():
    assert shingles("A b, C d", 3) == {"a b c", "b c d"}
    assert shingles("Hello there", 3) == {"hello there"}


def test_find_exact_points_each_repeat_at_its_first_occurrence():
    assert find_exact(["a", "b", "a", "c", "b", "a"]) == [None, None, 0, None, 1, 0]


def test_near_duplicates_just_above_the_threshold_are_found_and_those_just_below_kept():
    def family(name, size, drop):  # a set and a subset of it missing `drop` items: Jaccard (size - drop) / size
        whole = {f"{name}-{k}" for k in range(size)}
        return [whole, set(sorted(whole)[drop:])]

    above = [s for i in range(20) for s in family(f"hi{i}", 20, 3)]  # 17/20 = 0.85 each
    at = [s for i in range(20) for s in family(f"at{i}", 20, 4)]  # 16/20 = 0.8: the threshold counts
    below = [s for i in range(20) for s in family(f"lo{i}", 20, 5)]  # 15/20 = 0.75
    matches, lsh = find_near(above + at + below, threshold=0.8, num_perm=128, seed=0)
    assert [m.index if m else None for m in matches[:80]] == [None if k % 2 == 0 else k - 1 for k in range(80)]
    assert [m.jaccard for m in matches[1:80:2]] == [0.85] * 20 + [0.8] * 20
    assert all(abs(m.estimated - m.jaccard) < 0.2 for m in matches[1:80:2])
    assert matches[80:] == [None] * 40
    # LSH proposed below-threshold pairs (false positives) and the exact check turned every one down.
    assert lsh["rejected"] > 0 and lsh["proposed"] == lsh["rejected"] + 40


def test_the_most_similar_kept_record_is_named():
    whole = {f"w{k:02d}" for k in range(40)}
    ordered = sorted(whole)
    fair, good = set(ordered[4:]), set(ordered[:37])  # 36/40 = 0.9 and 37/40 = 0.925 of `whole`
    assert jaccard(fair, good) == 33 / 40  # under 0.85: both are kept
    matches, _ = find_near([fair, good, whole], threshold=0.85, num_perm=128, seed=0)
    assert matches[:2] == [None, None]
    assert (matches[2].index, matches[2].jaccard) == (1, 37 / 40)


def test_a_different_seed_still_gives_the_same_verified_answer_here():
    sets = [{f"w{k}" for k in range(30)}, {f"w{k}" for k in range(2, 30)}]
    for seed in (0, 1, 7):
        assert find_near(sets, threshold=0.8, num_perm=128, seed=seed)[0][1].jaccard == 28 / 30


def test_run_dedup_keeps_first_occurrences_in_order_unchanged_and_says_what_each_dropped_matched(tmp_path):
    near_words = TWELVE.split()
    below_words = TEN.split()
    assert jaccard(shingles(TWELVE, 3), shingles(" ".join(near_words[:-1] + ["picnic"]), 3)) == 9 / 11
    assert jaccard(shingles(TEN, 3), shingles(" ".join(below_words[:-1] + ["morning"]), 3)) == 7 / 9
    rows = [
        sft(TWELVE, "Dear neighbour, come along!", id="a", score=1.5),
        sft(TWELVE.upper() + "!!", "dear   neighbour COME along", id="b"),  # exact once normalised
        sft(" ".join(near_words[:-1] + ["picnic"]), "Dear neighbour, come along!", id="c"),  # 0.82: near
        sft(TEN, "Light scatters.", id="d"),
        sft(" ".join(below_words[:-1] + ["morning"]), "Light scatters.", id="e"),  # 0.78: kept
        {"instruction": "Name a colour.", "input": "", "output": "Blue.", "id": "f"},
    ]
    path = write_jsonl(tmp_path / "train.jsonl", rows)
    result = run_dedup(config(tmp_path, path, text="prompt"))
    out = tmp_path / "out"
    assert read_jsonl(out / "data.jsonl") == [rows[0], rows[3], rows[4], rows[5]]
    dropped = read_jsonl(out / "dropped.jsonl")
    assert [(d["reason"], d["source"], d["record"]["id"]) for d in dropped] == [
        ("exact duplicate", f"{path}:2", "b"), ("near duplicate", f"{path}:3", "c")]
    assert dropped[0]["matched"] == {"source": f"{path}:1", "index": 0}
    assert dropped[1]["matched"]["source"] == f"{path}:1" and dropped[1]["matched"]["jaccard"] > 0.8
    assert result.written == {"data.jsonl": 4, "dropped.jsonl": 2}
    steps = result.counts.to_dict()
    assert steps["exact"] == {"seen": 6, "kept": 5, "dropped": {"exact duplicate": 1}}
    assert steps["near"] == {"seen": 5, "kept": 4, "dropped": {"near duplicate": 1}}
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == steps and summary["stats"]["records"] == 4


def test_the_same_conversation_in_other_layouts_and_files_is_a_duplicate(tmp_path):
    first = write_jsonl(tmp_path / "a.jsonl", [sft("Add 2 and 3.", "5"), sft("Say hi.", "Hi!")])
    second = write_jsonl(tmp_path / "b.jsonl", [
        {"instruction": "add 2 and 3", "output": "5."},
        {"conversations": [{"from": "human", "value": "Say hi"}, {"from": "gpt", "value": "hi"}]},
        {"prompt": "Say hi.", "completion": "Hello there, friend."},
    ])
    run_dedup(config(tmp_path, first, second))
    dropped = read_jsonl(tmp_path / "out" / "dropped.jsonl")
    assert [(d["source"], d["matched"]["source"]) for d in dropped] == [(f"{second}:1", f"{first}:1"),
                                                                        (f"{second}:2", f"{first}:2")]
    assert len(read_jsonl(tmp_path / "out" / "data.jsonl")) == 3


def test_text_picks_what_is_compared_for_preference_pairs(tmp_path):
    pairs = [
        {"prompt": "Write a haiku about rain.", "chosen": "Soft rain on the roof.", "rejected": "No."},
        {"prompt": "Write a haiku about rain.", "chosen": "Grey clouds weep slowly.", "rejected": "Rain."},
        {"prompt": "Name a fruit.", "chosen": "Soft rain on the roof.", "rejected": "Soft rain on the roof!?"},
    ]
    path = write_jsonl(tmp_path / "pairs.jsonl", pairs)
    dropped_lines = {}
    for text in ("prompt", "response", "all"):
        run_dedup(config(tmp_path, path, text=text))
        dropped_lines[text] = [d["source"] for d in read_jsonl(tmp_path / "out" / "dropped.jsonl")]
    # The rejected response is not the record's content: pair 3's rejected copy of pair 1's chosen is not matched.
    assert dropped_lines == {"prompt": [f"{path}:2"], "response": [f"{path}:3"], "all": []}


def test_a_rerun_rewrites_the_outputs_identically(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [sft(TWELVE, "x"), sft(TWELVE, "x"), sft(TEN, "y")])
    run_dedup(config(tmp_path, path))
    before = {name: (tmp_path / "out" / name).read_bytes() for name in ("data.jsonl", "dropped.jsonl")}
    run_dedup(config(tmp_path, path))
    assert {name: (tmp_path / "out" / name).read_bytes() for name in before} == before


def test_bad_records_and_missing_turns_stop_with_file_line_and_field(tmp_path):
    bad = write_jsonl(tmp_path / "bad.jsonl", [sft("Hi.", "Hello."), {"messages": [{"role": "robot", "content": "x"}]}])
    with pytest.raises(RecordError, match=r"bad\.jsonl:2: messages\[0\]\.role: unknown role"):
        run_dedup(config(tmp_path, bad))
    prompts = write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": "Tell me a joke."}])
    with pytest.raises(RecordError, match=r"prompts\.jsonl:1: no assistant turn to compare \(text: response\)"):
        run_dedup(config(tmp_path, prompts, text="response"))


def test_config_errors_name_the_key(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [sft("a", "b")])
    base = [f"output_dir={tmp_path / 'out'}", f"data=[{path}]"]
    for override, message in [("threshold=1.5", r"threshold: must be a number in \(0, 1\], got 1.5"),
                              ("text=answers", "text: must be one of prompt, response, all"),
                              ("shingle_words=0", "shingle_words: must be a whole number >= 1"),
                              ("tokenizer=no/such/folder", "tokenizer: must be empty, embedded or a model folder")]:
        with pytest.raises(ConfigError, match=message):
            load_config(DedupConfig, None, base + [override])
    with pytest.raises(ConfigError, match="data: must be a list of at least one data file"):
        load_config(DedupConfig, None, [f"output_dir={tmp_path}"])


def test_a_generating_jobs_folder_is_refused(tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "journal.jsonl").write_text("{}\n")
    path = write_jsonl(tmp_path / "d.jsonl", [sft("a", "b")])
    with pytest.raises(ConfigError, match="holds a generating job"):
        run_dedup(config(tmp_path, path))
