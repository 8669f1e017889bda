"""`alignkit score --rewards`: any reward source scores a file; a response the reward cannot score keeps the
reward's failure_reward with its reason recorded; earlier scores are replaced; bad use is a one-line error."""
from __future__ import annotations

import json

import pytest

from alignkit.cli import main
from tests.helpers.files import write_jsonl

KEYWORD = "tests.helpers.reward_functions:counts_keyword"


def rewards_file(tmp_path, text: str) -> str:
    path = tmp_path / "rewards.yaml"
    path.write_text(text)
    return str(path)


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("alignkit score: error: "), err
    return err


def test_failures_are_recorded_per_response_and_old_scores_replaced(tmp_path, capsys):
    records = write_jsonl(tmp_path / "in.jsonl", [
        {"prompt": "Say hello", "responses": ["hi", "hello", "hell"], "keyword": "l",
         "rewards": [9, 9, 9], "failures": ["old", "old", "old"]},  # scored before: replaced whole
        {"prompt": "Say hi", "response": "hi"},  # no keyword: the reward cannot score it
        {"messages": [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "all"}], "keyword": "l"},
    ])
    spec = rewards_file(tmp_path, f"rewards:\n  - {{kind: python, function: '{KEYWORD}', failure_reward: -1}}\n"
                                  "  - {kind: regex, pattern: '^h', weight: 10}\n")
    out = tmp_path / "scored.jsonl"
    assert main(["score", "--rewards", spec, "--input", records, "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "1 of 5 responses could not be scored" in printed
    many, one, conversation = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert many["rewards"] == [10.0, 12.0, 12.0] and many["failures"] == [None, None, None]
    assert many["reward_components"] == {"python": [0.0, 2.0, 2.0], "regex": [1.0, 1.0, 1.0]}
    assert one["reward"] == -1 + 10.0 and "counts_keyword returned None" in one["failure"]
    assert one["reward_components"] == {"python": -1.0, "regex": 1.0} and "rewards" not in one
    assert conversation["reward"] == 2.0 and conversation["failure"] is None  # the last assistant turn is scored


@pytest.mark.parametrize("text, message", [
    ("rewards:\n  - {kind: nope}\n", "rewards[0].kind: must be one of"),
    ("rewards: []\n", "rewards: must list at least one reward"),
    ("rewards:\n  - {kind: format, pattern: x}\n", "rewards[0].pattern: does not apply to kind 'format'"),
    ("- {kind: format}\n", "the top level must be a mapping"),
])
def test_a_bad_rewards_file_is_one_line_naming_file_and_key(tmp_path, capsys, text, message):
    records = write_jsonl(tmp_path / "in.jsonl", [{"prompt": "Q", "response": "A"}])
    spec = rewards_file(tmp_path, text)
    assert main(["score", "--rewards", spec, "--input", records, "--out", str(tmp_path / "o.jsonl")]) == 2
    err = one_error_line(capsys)
    assert f"--rewards {spec}: " in err and message in err, err
    assert not (tmp_path / "o.jsonl").exists()


def test_reward_model_options_with_rewards_are_an_error_not_ignored(tmp_path, capsys):
    records = write_jsonl(tmp_path / "in.jsonl", [{"prompt": "Q", "response": "A"}])
    spec = rewards_file(tmp_path, "rewards:\n  - {kind: format, format: upper}\n")
    argv = ["score", "--rewards", spec, "--input", records, "--out", str(tmp_path / "o.jsonl"), "--dtype", "bf16"]
    assert main(argv) == 2
    assert "--dtype: only apply with --model" in one_error_line(capsys)


def test_exactly_one_of_model_and_rewards(tmp_path, capsys):
    records = write_jsonl(tmp_path / "in.jsonl", [{"prompt": "Q", "response": "A"}])
    for extra in ([], ["--model", "m", "--rewards", "r.yaml"]):
        with pytest.raises(SystemExit) as exit_:
            main(["score", "--input", records, "--out", str(tmp_path / "o.jsonl"), *extra])
        assert exit_.value.code == 2
        assert "--model" in capsys.readouterr().err
