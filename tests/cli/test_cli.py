"""The command line on bad input: a one-line error naming file, line and field, exit code 2,
and no output that looks complete."""
import json

import pytest
import yaml

from alignkit.cli import main
from tests.helpers.files import write_jsonl

GOOD = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello there"}]}


def run_sft(tmp_path, model_dir, data, *extra):
    out = tmp_path / "run"
    cfg = {"model": {"name": model_dir}, "data": {"train": [data], "max_length": 64},
           "train": {"output_dir": str(out), "max_steps": 2, "batch_size": 2, "precision": "fp32", "progress": False}}
    (tmp_path / "sft.yaml").write_text(yaml.safe_dump(cfg))
    code = main(["sft", "--config", str(tmp_path / "sft.yaml"), *extra])
    return code, out


@pytest.mark.parametrize("rows, expected", [
    ([], "no records"),
    ([GOOD, "{not json"], ":2:"),
    ([GOOD, {"messages": [{"content": "hi"}, {"role": "assistant", "content": "x"}]}], "messages[0].role"),
    ([GOOD, {"messages": [{"role": "user", "content": "only a question"}]}], "assistant"),
])
def test_sft_bad_data_fails_clearly_and_leaves_no_final_model(tmp_path, model_dir, capsys, rows, expected):
    data = write_jsonl(tmp_path / "train.jsonl", rows)
    code, out = run_sft(tmp_path, model_dir, data)
    err = capsys.readouterr().err
    assert code == 2
    assert expected in err and "train.jsonl" in err
    assert err.strip().splitlines()[-1].startswith("alignkit sft: error: ")
    assert not (out / "final").exists()


def test_skip_bad_counts_and_reports(tmp_path, model_dir, capsys):
    data = write_jsonl(tmp_path / "train.jsonl", [GOOD, "{oops", GOOD, {"messages": [{"role": "user", "content": "q"}]}])
    code, out = run_sft(tmp_path, model_dir, data, "data.skip_bad=true")
    assert code == 0
    printed = capsys.readouterr().out
    assert "skipped 2" in printed and "train.jsonl:2" in printed and "train.jsonl:4" in printed
    report = json.loads((out / "data_report.json").read_text())
    assert report["records"]["skipped"] == 2 and report["records"]["kept"] == 2
    assert (out / "final" / "config.json").exists()


@pytest.mark.parametrize("policy, truncated, dropped", [("truncate", 1, 0), ("drop", 0, 1)])
def test_overlong_policy_is_applied_and_counted(tmp_path, model_dir, policy, truncated, dropped):
    long = {"messages": [{"role": "user", "content": "tell me"}, {"role": "assistant", "content": "word " * 200}]}
    data = write_jsonl(tmp_path / "train.jsonl", [GOOD, GOOD, long])
    code, out = run_sft(tmp_path, model_dir, data, f"data.overlong={policy}")
    assert code == 0
    length = json.loads((out / "data_report.json").read_text())["length"]
    assert (length["truncated"], length["dropped"]) == (truncated, dropped)


def test_missing_model_path(tmp_path, capsys):
    data = write_jsonl(tmp_path / "train.jsonl", [GOOD])
    code, out = run_sft(tmp_path, "./no/such/model", data)
    assert code == 2
    assert "does not exist" in capsys.readouterr().err
    assert not (out / "final").exists()


def test_unknown_config_key_and_bad_override(tmp_path, model_dir, capsys):
    data = write_jsonl(tmp_path / "train.jsonl", [GOOD])
    code, _ = run_sft(tmp_path, model_dir, data, "train.learning_rate=1")
    assert code == 2 and "learning_rate" in capsys.readouterr().err
    code, _ = run_sft(tmp_path, model_dir, data, "train.lr=fast")
    assert code == 2 and "train.lr" in capsys.readouterr().err


def test_generate_writes_responses(tmp_path, model_dir):
    prompts = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "hello"}, GOOD])
    out = tmp_path / "out.jsonl"
    code = main(["generate", "--model", model_dir, "--prompts", prompts, "--out", str(out), "--max-tokens", "5"])
    assert code == 0
    rows = [json.loads(l) for l in out.read_text().splitlines()]
    assert len(rows) == 2 and all(isinstance(r["response"], str) for r in rows)
    assert rows[1]["messages"] == GOOD["messages"][:1], "the reference answer is not part of the prompt"
    # Tables of win rates name models by this field: it is what the user called the model, not a cache id.
    assert {r["model"] for r in rows} == {model_dir}


def test_generate_bad_prompts_leave_no_output(tmp_path, model_dir, capsys):
    prompts = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "hello"}, "[1, 2"])
    out = tmp_path / "out.jsonl"
    code = main(["generate", "--model", model_dir, "--prompts", prompts, "--out", str(out), "--max-tokens", "5"])
    assert code == 2 and "p.jsonl:2" in capsys.readouterr().err
    assert not out.exists() and not list(tmp_path.glob(".tmp-*"))


def test_chat_repl_keeps_history():
    from alignkit.generation.backend import Completion, SamplingParams
    from alignkit.generation.chat_repl import chat_loop

    seen = []

    class Echo:
        model_id = "echo"

        def chat(self, conversations, params):
            seen.append([dict(m) for m in conversations[0]])
            return [[Completion(text=f"reply {len(seen)}")]]

    inputs = iter(["hello", "again", "/reset", "fresh"])

    def read(_):
        try:
            return next(inputs)
        except StopIteration:
            raise EOFError

    out = []
    chat_loop(Echo(), SamplingParams(), read=read, write=out.append)
    assert [len(s) for s in seen] == [1, 3, 1]
    assert seen[1][1] == {"role": "assistant", "content": "reply 1"}
    assert "bot> reply 3" in out


def test_only_alignkit_checks_and_input_errors_are_user_errors():
    from alignkit.data.errors import RecordError
    from alignkit.errors import is_user_error
    from alignkit.training.preference_losses import dpo_loss

    def raised(fn):
        try:
            fn()
        except Exception as e:  # noqa: BLE001 - the point is to inspect whatever was raised
            return e
        raise AssertionError("expected an exception")

    import torch

    own_check = raised(lambda: dpo_loss(torch.zeros(1), torch.zeros(1), torch.zeros(1), torch.zeros(1), beta=-1.0))
    assert isinstance(own_check, ValueError) and is_user_error(own_check)
    assert is_user_error(RecordError("messages", "missing", path="data.jsonl", line=3))
    assert is_user_error(raised(lambda: open("/nonexistent/file")))
    library_value_error = raised(lambda: json.loads("{"))  # ValueError raised inside the json module
    assert isinstance(library_value_error, ValueError) and not is_user_error(library_value_error)
    assert not is_user_error(raised(lambda: [][1]))


def test_a_library_value_error_shows_its_traceback(monkeypatch):
    import alignkit.cli as cli

    def broken(args):
        json.loads("{")  # stands in for a ValueError deep inside a library: a bug, not bad input

    parser = cli.build_parser()
    monkeypatch.setattr(cli, "build_parser", lambda: parser)
    for action in parser._subparsers._group_actions[0].choices.values():
        action.set_defaults(func=broken)
    with pytest.raises(json.JSONDecodeError):
        main(["report", "--results", "x.json", "--out", "y"])
