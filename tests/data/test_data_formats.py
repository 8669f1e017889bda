"""Instruction formats normalised to chat messages, their errors, skip mode, DataSpecs and mixing."""
from __future__ import annotations

import collections
import functools
import json
import os

import pytest

from alignkit.data.errors import DataError, RecordError
from alignkit.data.formats import load_conversations, to_conversation
from alignkit.data.mixing import load_mix, mix
from alignkit.data.readers import DataSpec
from tests.helpers.data import FILE_KINDS, UNIT_OF, assert_record_error, bot, split_for, user, write_records


def system(text):
    return {"role": "system", "content": text}


# Each format: two records and the conversations they must become, written out by hand.
CASES = {
    "messages": (
        [{"messages": [system("Be brief."), user("Hi"), bot("Hello.")]},
         {"messages": [user("2+2?"), bot("4"), user("and 3+3?"), bot("6")]}],
        [[system("Be brief."), user("Hi"), bot("Hello.")], [user("2+2?"), bot("4"), user("and 3+3?"), bot("6")]],
    ),
    "sharegpt": (
        [{"conversations": [{"from": "system", "value": "S"}, {"from": "human", "value": "Q"},
                            {"from": "gpt", "value": "A"}]},
         {"conversations": [{"from": "user", "value": "q1"}, {"from": "assistant", "value": "a1"}]}],
        [[system("S"), user("Q"), bot("A")], [user("q1"), bot("a1")]],
    ),
    "alpaca": (
        [{"instruction": "Translate.", "input": "chat", "output": "cat", "system": "You translate."},
         {"instruction": "Say hi.", "input": "", "output": "hi"}],
        [[system("You translate."), user("Translate.\n\nchat"), bot("cat")], [user("Say hi."), bot("hi")]],
    ),
    "prompt_completion": (
        [{"prompt": "Name a colour.", "completion": "Blue."},
         {"prompt": [system("S"), user("Name a fruit.")], "completion": [bot("Apple.")]}],
        [[user("Name a colour."), bot("Blue.")], [system("S"), user("Name a fruit."), bot("Apple.")]],
    ),
}


@pytest.mark.parametrize("kind", FILE_KINDS)
@pytest.mark.parametrize("fmt", list(CASES))
def test_every_format_from_every_file_type(tmp_path, fmt, kind):
    records, expected = CASES[fmt]
    if kind in ("parquet", "disk", "disk_split") and fmt == "prompt_completion":
        # A column holds one type, so a table cannot mix string and message-list prompts.
        records, expected = records[1:], expected[1:]
    path = write_records(tmp_path, kind, records)
    for fmt_given in ("auto", fmt):
        conversations, report = load_conversations(path, fmt=fmt_given, split=split_for(kind))
        assert [c.messages for c in conversations] == expected
        assert [(c.source, c.line, c.unit) for c in conversations] == [
            (path, i + 1, UNIT_OF[kind]) for i in range(len(expected))]
        assert (report.kept, report.skipped) == (len(expected), 0)


def test_sharegpt_turns_may_use_role_and_content():
    record = {"conversations": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}
    assert to_conversation(record) == [user("q"), bot("a")]


def test_auto_prefers_messages_over_other_columns():
    # ultrachat_200k style: a prompt column next to the full conversation.
    record = {"prompt": "q", "prompt_id": "x1", "messages": [user("q"), bot("a")]}
    assert to_conversation(record) == [user("q"), bot("a")]


def test_a_table_mixing_layouts_parses_each_row_by_its_non_null_columns(tmp_path):
    records = [CASES["alpaca"][0][1], CASES["messages"][0][0]]
    path = write_records(tmp_path, "parquet", records)
    conversations, _ = load_conversations(path)
    assert [c.messages for c in conversations] == [CASES["alpaca"][1][1], CASES["messages"][1][0]]


BAD = [
    ({"messages": [user("q"), {"role": "tool", "content": "x"}]}, "messages[1].role", "unknown role 'tool'"),
    ({"messages": [{"content": "q"}, bot("a")]}, "messages[0].role", "missing"),
    ({"messages": [user("q"), {"role": "assistant"}]}, "messages[1].content", "missing"),
    ({"messages": [user("q"), {"role": "assistant", "content": 7}]}, "messages[1].content",
     "expected a string, got a number"),
    ({"messages": [user("q"), {"role": "assistant", "content": [{"type": "text", "text": "a"}]}]},
     "messages[1].content", "expected a string, got a list"),
    ({"messages": [user("q")]}, "messages", "no assistant turn"),
    ({"messages": [user("q"), bot("a"), user("more?")]}, "messages[2].role", "ends with a user turn"),
    ({"messages": []}, "messages", "empty conversation"),
    ({"messages": [user("q"), bot("  ")]}, "messages[1].content", "assistant turn is empty"),
    ({"messages": [user("q"), system("s"), bot("a")]}, "messages[1].role", "system message must be the first turn"),
    ({"messages": "hello"}, "messages", "got a string that is not JSON"),
    ({"messages": [user("q"), "a"]}, "messages[1]", "expected an object"),
    ({"conversations": [{"from": "human", "value": "q"}, {"from": "bing", "value": "a"}]},
     "conversations[1].from", "unknown speaker 'bing'"),
    ({"conversations": [{"from": "human", "value": "q"}, {"from": "gpt"}]}, "conversations[1].value", "missing"),
    ({"instruction": "Do it.", "input": ""}, "output", "missing"),
    ({"instruction": "Do it.", "output": None}, "output", "missing (null)"),
    ({"instruction": "Do it.", "output": ""}, "output", "assistant turn is empty"),
    ({"instruction": 3, "output": "x"}, "instruction", "expected a string"),
    ({"prompt": "q"}, "completion", "missing"),
    ({"prompt": "q", "completion": [user("a")]}, "completion[0].role", "completion turns must be assistant turns"),
    ({"text": "free text"}, "", "cannot tell the format"),
]


@pytest.mark.parametrize("record,field,reason", BAD)
def test_bad_records_name_the_field(record, field, reason):
    assert_record_error(to_conversation, record, field, reason)


@pytest.mark.parametrize("kind", ["jsonl", "json", "parquet", "csv", "disk"])
def test_a_bad_record_in_a_file_names_file_position_and_field(tmp_path, kind):
    good = {"messages": [user("q"), bot("a")]}
    bad = {"messages": [user("q"), bot("a"), {"role": "narrator", "content": "x"}]}
    path = write_records(tmp_path, kind, [good, good, bad], name="train")
    with pytest.raises(RecordError) as caught:
        load_conversations(path)
    where = {"line": f"{path}:3", "record": f"{path}:record 3", "row": f"{path}:row 3"}[UNIT_OF[kind]]
    assert str(caught.value) == f"{where}: messages[2].role: unknown role 'narrator'; expected one of system, user, assistant"


def test_generation_prompts_may_end_with_a_user_turn():
    assert to_conversation({"prompt": "Write a poem."}, require_assistant=False) == [user("Write a poem.")]
    assert to_conversation({"instruction": "Sum.", "input": "1 2"}, require_assistant=False) == [user("Sum.\n\n1 2")]
    assert to_conversation({"messages": [user("q"), bot("a"), user("q2")]}, require_assistant=False)[-1] == user("q2")
    with pytest.raises(RecordError, match="no user turn"):
        to_conversation({"messages": [system("s")]}, require_assistant=False)


def test_skip_mode_counts_and_lists_bad_records(tmp_path):
    good = {"messages": [user("q"), bot("a")]}
    path = tmp_path / "mixed.jsonl"
    lines = [good, {"messages": [user("q")]}, good, None, {"instruction": "x"}, good]
    path.write_text("\n".join("{broken" if r is None else json.dumps(r) for r in lines) + "\n")
    conversations, report = load_conversations(path, skip_bad=True)
    assert [c.line for c in conversations] == [1, 3, 6]
    assert (report.kept, report.skipped) == (3, 3)
    assert [(e.line, e.field) for e in report.listed] == [(2, "messages"), (4, ""), (5, "output")]
    assert f"{path}:5: output: missing" in report.summary()
    with pytest.raises(RecordError, match=f"{path}:2: messages: no assistant turn"):
        load_conversations(path, skip_bad=False)


def test_data_specs_carry_their_own_format_and_split(tmp_path):
    alpaca = write_records(tmp_path, "jsonl", CASES["alpaca"][0], name="alpaca")
    sharegpt = write_records(tmp_path, "disk_split", CASES["sharegpt"][0], name="sharegpt")
    specs = [DataSpec(alpaca, format="alpaca"), {"path": sharegpt, "format": "sharegpt", "split": "train"}]
    conversations, report = load_conversations(specs)
    assert [c.messages for c in conversations] == CASES["alpaca"][1] + CASES["sharegpt"][1]
    with pytest.raises(RecordError, match="messages: missing"):
        load_conversations(DataSpec(alpaca, format="messages"))
    with pytest.raises(DataError, match="unknown format 'chatml'"):
        load_conversations(DataSpec(alpaca, format="chatml"))


def test_ifeval_prompts_load_as_generation_prompts(shared_data):
    path = os.path.join(shared_data, "ifeval", "input_data.jsonl")
    conversations, report = load_conversations(path, require_assistant=False)
    assert report.skipped == 0 and len(conversations) == report.kept > 500
    assert all(len(c.messages) == 1 and c.messages[0]["role"] == "user" for c in conversations)


# ---- mixing ----

def test_mix_follows_the_weights_and_repeats_only_after_a_full_pass():
    big, small = [f"b{i}" for i in range(100)], [f"s{i}" for i in range(50)]
    mixed, summary = mix([big, small], [3, 1], seed=0, total=400)
    assert len(mixed) == 400
    assert [p.count for p in summary.parts] == [300, 100]
    seen = collections.Counter(mixed)
    # 300 from 100 items: three full passes; 100 from 50: two full passes.
    assert {seen[item] for item in big} == {3} and {seen[item] for item in small} == {2}


def test_partial_pass_draws_without_replacement():
    data = list(range(100))
    mixed, _ = mix([data], [1.0], seed=1, total=130)
    counts = collections.Counter(mixed)
    assert set(counts.values()) == {1, 2} and sum(1 for c in counts.values() if c == 2) == 30
    sample, _ = mix([data], [1.0], seed=1, total=40)
    assert len(set(sample)) == 40


def test_mix_is_deterministic_under_the_seed():
    datasets = [list(range(30)), list("abcdefghij")]
    first, _ = mix(datasets, [0.5, 0.5], seed=7, total=50)
    second, _ = mix(datasets, [0.5, 0.5], seed=7, total=50)
    other, _ = mix(datasets, [0.5, 0.5], seed=8, total=50)
    assert first == second and first != other
    assert collections.Counter(map(type, first)) == collections.Counter(map(type, other))


def test_default_total_uses_the_scarce_dataset_once_and_subsamples_the_rest():
    mixed, summary = mix([list(range(1000)), list("abcdefghij")], [0.8, 0.2], seed=0)
    # "abcdefghij" is 20% of the mix, so the mix holds 50 items: 40 numbers and all 10 letters.
    assert summary.total == 50 and [p.count for p in summary.parts] == [40, 10]
    assert len(set(mixed)) == 50


def test_rounding_keeps_the_total_and_zero_weight_contributes_nothing():
    _, summary = mix([list(range(10))] * 3 + [list("xyz")], [1, 1, 1, 0], seed=0, total=10)
    counts = [p.count for p in summary.parts]
    assert sum(counts) == 10 and sorted(counts[:3]) == [3, 3, 4] and counts[3] == 0
    assert "mixed 10 items (seed 0)" in summary.summary()


@pytest.mark.parametrize("weights,total,message", [([1, -1], 10, "weight 1 must be"), ([1], 10, "got 1 weights"),
                                                   ([0, 0], 10, "all weights are zero"),
                                                   ([1, 1], 0, "total must be a positive integer")])
def test_mix_rejects_bad_arguments(weights, total, message):
    with pytest.raises(ValueError, match=message):
        mix([[1, 2], [3]], weights, seed=0, total=total)


def test_mix_rejects_an_empty_dataset_with_weight():
    with pytest.raises(ValueError, match="dataset 1: empty"):
        mix([[1, 2], []], [1, 1], seed=0, total=4)


def test_load_mix_from_specs(tmp_path):
    first = write_records(tmp_path, "jsonl", [{"prompt": f"p{i}", "completion": "c"} for i in range(20)], name="a")
    second = write_records(tmp_path, "csv", [{"instruction": f"i{i}", "output": "o"} for i in range(5)], name="b")
    specs = [{"path": first, "weight": 1}, {"path": second, "format": "alpaca", "weight": 3}]
    load = functools.partial(load_conversations, skip_bad=True)
    mixed, report, summary = load_mix(specs, load, seed=3, total=40)
    from_second = sum(1 for c in mixed if c.source == second)
    assert len(mixed) == 40 and from_second == 30 and report.kept == 25
    assert [p.name for p in summary.parts] == [first, second]
