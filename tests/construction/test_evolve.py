"""Evol-instruct on a scripted model: each elimination rule counted, survivors evolve further, resume, the CLI."""
import json
import re

import pytest

from alignkit.cli import main
from alignkit.config import ConfigError
from alignkit.construction.evolve import EvolveConfig, draw_method, run_evolve
from alignkit.data.errors import DataError, RecordError
from alignkit.generation.backend import Completion
from tests.helpers.construction import CompletionBackend
from tests.helpers.construction import standin_server
from tests.helpers.crash import Crash
from tests.helpers.files import write_jsonl
from tests.helpers.files import read_jsonl

OUTPUT_FILES = ("sft.jsonl", "evolved.jsonl", "dropped.jsonl")
GROWN = " Answer in exactly three numbered steps for a beginner."

# One instruction per way an evolution can fail, plus one that always succeeds (its key word drives the rule).
INSTRUCTIONS = {
    "grow": "Explain how to grow tomatoes on a balcony.",
    "same": "Describe the same old morning routine.",
    "copycat": "Summarise why copycat recipes are popular.",
    "blank": "Give a blank verse about autumn rain.",
    "broken": "Suggest fixes for a broken bicycle chain.",
    "apologise": "Write a note to apologise for missing a meeting.",
    "filler": "Fill this sentence with filler words.",
    "long": "Tell a long story about a lost key.",
}


def rewrite(instruction):
    """The scripted model's rewrite of one instruction (the rewriting prompts put it between <<< and >>>)."""
    if "same" in instruction:
        return instruction.upper()  # unchanged once normalised
    if "copycat" in instruction:
        return f"Rewritten task: {instruction} Add two examples from Italian cooking."
    if "blank" in instruction:
        return "  \n"
    if "broken" in instruction:
        return Completion("", finish_reason="error", error="HTTP 503")
    return instruction + GROWN


def answer(question):
    if "apologise" in question:
        return "Sorry, as an AI I cannot help with that."
    if "filler" in question:
        return "It is what it is, and so on."
    if "long" in question:
        return Completion("Once there was a key that", finish_reason="length")
    return f"Step one of: {question}"


def rule(text, sample, seed):
    found = re.search(r"<<<\n(.*)\n>>>", text, re.S)
    return rewrite(found.group(1)) if found else answer(text)


def job(tmp_path, name="out", **changes):
    data = write_jsonl(tmp_path / "instructions.jsonl", [{"instruction": text} for text in INSTRUCTIONS.values()])
    keys = dict(output_dir=str(tmp_path / name), instructions=data, rounds=2, progress=False)
    keys.update(changes)
    cfg = EvolveConfig(**keys)
    cfg.generator.batch_size = 3
    return cfg


def test_each_elimination_rule_is_counted_and_survivors_evolve_further(tmp_path):
    backend = CompletionBackend(rule)
    result = run_evolve(job(tmp_path), backend=backend)
    steps = result.counts.to_dict()
    # Eight instructions, two rounds; an eliminated one is tried again from its previous version.
    assert steps["rewrites"] == {"seen": 16, "kept": 8, "dropped": {
        "error": 2, "empty": 2, "cut off": 0, "unchanged": 2, "copied prompt": 2}}
    assert steps["answers"] == {"seen": 8, "kept": 2, "dropped": {
        "error": 0, "empty": 0, "cut off": 2, "refusal": 2, "no content": 2}}

    out = tmp_path / "out"
    sft = read_jsonl(out / "sft.jsonl")
    first, second = (row["messages"][0]["content"] for row in sft)
    assert first == INSTRUCTIONS["grow"] + GROWN and second == first + GROWN  # round 2 built on round 1
    assert sft[1]["evolution"]["parent"] == sft[0]["id"]
    assert sft[0]["evolution"]["parent"] == sft[0]["evolution"]["root"]
    assert [row["evolution"]["round"] for row in sft] == [1, 2]
    assert sft[1]["messages"][1]["content"] == f"Step one of: {second}"

    lineage = {row["instruction"]: row for row in read_jsonl(out / "evolved.jsonl")}
    assert lineage[INSTRUCTIONS["grow"]]["final"] == second
    assert [v["id"] for v in lineage[INSTRUCTIONS["grow"]]["evolutions"]] == [row["id"] for row in sft]
    same = lineage[INSTRUCTIONS["same"]]
    assert same["final"] == INSTRUCTIONS["same"] and not same["evolutions"]

    dropped = read_jsonl(out / "dropped.jsonl")
    assert len(dropped) == 14
    by_reason = {(row["reason"], row["round"]): row for row in dropped}
    # An eliminated instruction's previous version is what the next round rewrote.
    assert by_reason[("refusal", 2)]["instruction"] == INSTRUCTIONS["apologise"]
    assert by_reason[("refusal", 2)]["parent"] == by_reason[("refusal", 2)]["root"]
    assert by_reason[("copied prompt", 1)]["marker"] == "rewritten task"
    assert by_reason[("unchanged", 1)]["rouge_l"] == 1.0
    assert by_reason[("error", 1)]["rewrite_error"] == "HTTP 503"
    assert by_reason[("cut off", 1)]["step"] == "answers"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["by_round"] == [{"round": 1, "evolved": 1, "eliminated": 7},
                                   {"round": 2, "evolved": 1, "eliminated": 7}]
    # A failed rewrite is never answered: 16 rewrites and 8 answers were asked.
    assert len(backend.prompts) == 16 + 8


def test_methods_are_drawn_per_instruction_and_round_from_the_configured_list(tmp_path):
    backend = CompletionBackend(rule)
    run_evolve(job(tmp_path, rounds=1, methods=["breadth", "deepen"]), backend=backend)
    rewrites = [p for p in backend.prompts if "<<<" in p]
    assert all("brand-new task" in p or "goes deeper" in p for p in rewrites)
    assert {"brand-new task" in p for p in rewrites} == {True, False}  # both were drawn
    methods = ["a", "b", "c"]
    assert draw_method(methods, 0, "x", 1) == draw_method(methods, 0, "x", 1)
    assert len({draw_method(methods, 0, f"id{i}", 1) for i in range(30)}) == 3


def test_cut_off_answers_are_kept_when_asked(tmp_path):
    result = run_evolve(job(tmp_path, keep_cut_off=True), backend=CompletionBackend(rule))
    assert result.counts.to_dict()["answers"]["kept"] == 4


def outputs(folder):
    summary = json.loads((folder / "summary.json").read_text())
    summary.pop("output_dir")
    return [(folder / name).read_bytes() for name in OUTPUT_FILES], summary


def test_two_runs_are_equal_and_a_rerun_makes_no_calls(tmp_path):
    run_evolve(job(tmp_path, "a"), backend=CompletionBackend(rule))
    run_evolve(job(tmp_path, "b"), backend=CompletionBackend(rule))
    assert outputs(tmp_path / "a") == outputs(tmp_path / "b")
    silent = CompletionBackend(rule, crash_at=1)
    run_evolve(job(tmp_path, "a"), backend=silent)
    assert silent.calls == 0 and outputs(tmp_path / "a") == outputs(tmp_path / "b")


# Chat calls: each round is 3 chunks (3 + 3 + 2 instructions), each a rewrite call then an answer call.
@pytest.mark.parametrize("crash_at", [2, 5, 9])  # round 1 (an answer call), round 1 (a rewrite), round 2
def test_a_crashed_job_resumes_to_the_same_outputs(tmp_path, crash_at):
    run_evolve(job(tmp_path, "straight"), backend=CompletionBackend(rule))
    with pytest.raises(Crash):
        run_evolve(job(tmp_path, "crashed"), backend=CompletionBackend(rule, crash_at=crash_at))
    assert not (tmp_path / "crashed" / "sft.jsonl").exists()
    run_evolve(job(tmp_path, "crashed"), backend=CompletionBackend(rule))
    assert outputs(tmp_path / "crashed") == outputs(tmp_path / "straight")


def test_bad_inputs_fail_in_one_line(tmp_path):
    cfg = job(tmp_path, methods=["shuffle"])
    with pytest.raises(ConfigError, match=r"methods: \['shuffle'\] not in .*evolve.yaml"):
        run_evolve(cfg, backend=CompletionBackend(rule))
    prompts = tmp_path / "evolve.yaml"
    prompts.write_text("copy_markers: []\nmethods:\n  plain: 'Rewrite: {{ task }}'\n")
    with pytest.raises(DataError, match=r"evolve.yaml: methods.plain: unknown template variable"):
        run_evolve(job(tmp_path, prompts=str(prompts)), backend=CompletionBackend(rule))
    cfg = job(tmp_path)
    write_jsonl(cfg.instructions, [{"instruction": "Name a river."},
                                   {"messages": [{"role": "system", "content": "x"}]}])
    with pytest.raises(RecordError, match=r"instructions.jsonl:2: messages: no user turn"):
        run_evolve(cfg, backend=CompletionBackend(rule))


def test_the_cli_runs_the_shipped_config_over_http(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("OPENAI_API_KEY", "x")
    out = tmp_path / "cli"

    def http_rule(text, sample, seed):
        reply = rule(text, sample, seed)
        return reply if isinstance(reply, str) else "Sorry."

    with standin_server(http_rule) as (url, log):
        code = main(["data", "evolve", "--config", "configs/data/evolve.yaml", f"output_dir={out}",
                     f"instructions={job(tmp_path).instructions}", f"generator.model=openai:standin@{url}",
                     "rounds=1", "max_instructions=3", "progress=false"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "rewrites" in printed and "wrote 1 rows to sft.jsonl" in printed
    assert read_jsonl(out / "sft.jsonl")[0]["messages"][0]["content"] == INSTRUCTIONS["grow"] + GROWN
    assert len(log.prompts) == 3 + 1  # three rewrites (two unchanged or copied), one answer
