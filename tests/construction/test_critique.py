"""`alignkit data critique`: principles drawn per round, the critique and revision conversations, rounds that
chain, every failure counted (never repaired), and outputs equal after a crash and a rerun."""
import json
import os

import pytest

from alignkit.config import ConfigError, load_config
from alignkit.construction.critique import (OUTPUTS, CritiqueConfig, Principle, critique_conversation,
                                            echoes_request, load_constitution, pick_principle, revision_failure,
                                            run_critique)
from alignkit.construction.generator import GeneratorConfig, resource
from alignkit.data.errors import DataError, RecordError
from alignkit.data.formats import load_conversations
from alignkit.data.preference import load_pairs
from alignkit.generation.backend import Completion
from tests.helpers.construction import ConversationBackend, standin_server
from tests.helpers.crash import Crash
from tests.helpers.paths import CONFIGS
from tests.helpers.files import output_bytes, write_jsonl

CONSTITUTION = load_constitution(resource("principles.yaml"))
REVISED = " (revised)"


def principle_in(request: str) -> Principle:
    found = [p for p in CONSTITUTION.principles if p.critique in request or p.revision in request]
    assert len(found) == 1, request
    return found[0]


def reviser(conversation):
    """Critique: names the principle and the response it read. Revision: the response it revises, marked; a
    behaviour named in the user's prompt makes one kind of failure happen."""
    behaviour = conversation[0]["content"]
    if "Critique request:" in conversation[-1]["content"]:
        response = conversation[-2]["content"]
        round_number = response.count(REVISED) + 1
        if behaviour == "critique error" or (behaviour == "late critique error" and round_number == 2):
            return Completion("", finish_reason="error", error="server said no")
        if behaviour == "critique empty":
            return "   "
        return f"[{principle_in(conversation[-1]['content']).name}] problems in: {response}"
    response, critique = conversation[-4]["content"], conversation[-2]["content"]
    assert critique.endswith(f"problems in: {response}")  # the revision call shows this round's critique
    round_number = response.count(REVISED) + 1
    if behaviour == "revision error":
        return Completion("", finish_reason="error", error="timeout")
    if behaviour == "revision empty":
        return ""
    if behaviour == "revision cut off":
        return Completion(response + " and so on and", finish_reason="length")
    if behaviour == "revision unchanged" or (behaviour == "late unchanged" and round_number == 2):
        return " " + response.replace(" ", "  ") + "\n"  # whitespace aside, the same text
    if behaviour == "revert" and round_number == 2:
        return response[:-len(REVISED)]  # back to the original
    if behaviour == "revision echo":
        return "Revision request: here is the better reply."
    if behaviour == "revision copies critique":
        return critique
    return response + REVISED


def config(tmp_path, name="run", **changes):
    cfg = CritiqueConfig(output_dir=str(tmp_path / name), progress=False,
                         generator=GeneratorConfig(batch_size=3, seed=changes.pop("seed", 0)), **changes)
    return cfg


def read_outputs(folder):
    return {name: [json.loads(line) for line in open(os.path.join(folder, name), encoding="utf-8")]
            for name in OUTPUTS}


# ----------------------------------------------------------------------------- the rules

def test_principles_are_drawn_per_unit_round_and_seed_and_reach_every_principle():
    principles = CONSTITUTION.principles
    draws = [pick_principle(principles, 0, f"unit{i}", 1) for i in range(200)]
    assert draws == [pick_principle(principles, 0, f"unit{i}", 1) for i in range(200)]
    assert set(draws) == set(principles)
    assert draws != [pick_principle(principles, 0, f"unit{i}", 2) for i in range(200)]
    assert draws != [pick_principle(principles, 1, f"unit{i}", 1) for i in range(200)]


def test_critique_conversation_puts_the_response_in_the_assistant_turn():
    prompt = [{"role": "system", "content": "Be kind."}, {"role": "user", "content": "Hi?"}]
    assert critique_conversation(prompt, "Hello.", "Critique it.") == [
        *prompt, {"role": "assistant", "content": "Hello."}, {"role": "user", "content": "Critique it."}]


@pytest.mark.parametrize("completion, expected", [
    (Completion("", finish_reason="error", error="x"), "revision error"),
    (Completion(" \n"), "revision empty"),
    (Completion("A longer answer that stops", finish_reason="length"), "revision cut off"),
    (Completion("The  first\nanswer. "), "revision unchanged"),
    (Completion("An answer, later revised."), "revision unchanged"),
    (Completion("Here you go.\nrevision request: fix it"), "revision echoes the request"),
    (Completion("Sure. Rewrite it shorter please. Done."), "revision echoes the request"),
    (Completion("the critique says it is too long"), "revision echoes the request"),
    (Completion("A better answer."), None),
])
def test_revision_failures(completion, expected):
    principle = Principle("brevity", "Find what is too long.", "Rewrite it shorter please.")
    versions = ["The first answer.", "An answer, later revised."]
    assert revision_failure(completion, versions, "The critique says it is too long", principle,
                            ["Revision request:"], drop_cut_off=True) == expected


def test_a_cut_off_revision_is_kept_when_drop_cut_off_is_false():
    principle = Principle("p", "Look for errors.", "Fix the errors.")
    assert revision_failure(Completion("Cut sho", finish_reason="length"), ["x"], "crit", principle, [],
                            drop_cut_off=False) is None


def test_echo_markers_count_only_at_the_start_of_a_line():
    principle = Principle("p", "Look for errors.", "Fix the errors.")
    assert echoes_request("Critique: none", "c", principle, ["Critique:"])
    assert not echoes_request("My critique: none needed, here is the poem.", "c", principle, ["Critique:"])


ONE = "principles:\n  - {name: a, critique: c, revision: r}\n"
TEMPLATES = "critique_template: x\nrevision_template: y\n"


@pytest.mark.parametrize("text, message", [
    ("principles: []\n", "principles: must be a non-empty list"),
    (TEMPLATES + "principles:\n  - {name: a, critique: c}\n", "principles[0].revision: must be a non-empty string"),
    (TEMPLATES + "principles:\n  - {name: a, critique: c, revision: r, why: w}\n",
     "principles[0]: unknown key(s) ['why']"),
    (TEMPLATES + ONE + "  - {name: a, critique: c, revision: r}\n", "principles[1].name: 'a' is used twice"),
    ("critique_template: '{{ request '\nrevision_template: y\n" + ONE, "critique_template: template line 1: unexpected end of template"),
    ("critique_template: '{{ principle }}'\nrevision_template: y\n" + ONE,
     "critique_template: unknown template variable(s) ['principle']"),
    ("revision_template: y\n" + ONE, "critique_template: must be a non-empty string"),
    (TEMPLATES + "markers: [1]\n" + ONE, "markers: must be a list of non-empty strings"),
    ("- a\n", "the top level must be a mapping"),
    (TEMPLATES + ONE + "  bad: [\n", "not valid YAML"),
    (TEMPLATES + "marker: [x]\n" + ONE, "unknown key(s) ['marker']; expected critique_template"),
])
def test_a_bad_principles_file_is_one_line_naming_file_and_key(tmp_path, text, message):
    path = tmp_path / "mine.yaml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(DataError) as error:
        load_constitution(str(path))
    assert str(error.value).startswith(f"{path}: ") and message in str(error.value) and "\n" not in str(error.value)


def test_config_errors_name_the_key(tmp_path):
    base = ["output_dir=" + str(tmp_path)]
    with pytest.raises(ConfigError, match="^responses: must be set, or else prompts set"):
        load_config(CritiqueConfig, None, base)
    with pytest.raises(ConfigError, match="^responses: must be set, or else prompts set"):
        load_config(CritiqueConfig, None, base + ["responses=a.jsonl", "prompts=b.jsonl"])
    with pytest.raises(ConfigError, match="^rounds: must be a whole number in"):
        load_config(CritiqueConfig, None, base + ["prompts=b.jsonl", "rounds=0"])
    with pytest.raises(ConfigError, match="^generator.max_tokens"):
        load_config(CritiqueConfig, None, base + ["prompts=b.jsonl", "generator.max_tokens=0"])


def test_a_record_without_a_response_names_file_line_and_field(tmp_path):
    path = write_jsonl(tmp_path / "r.jsonl", [{"prompt": "a", "response": "b"}, {"prompt": "c", "response": 3}])
    backend = ConversationBackend(reviser)
    with pytest.raises(RecordError, match=r"r\.jsonl:2: response: must be a string, got a number$"):
        run_critique(config(tmp_path, responses=path), backend=backend)
    path = write_jsonl(tmp_path / "s.jsonl", [{"prompt": "a"}])
    with pytest.raises(RecordError, match=r"s\.jsonl:1: response: missing"):
        run_critique(config(tmp_path, responses=path), backend=backend)
    assert backend.calls == 0  # input is checked before any model call


# ----------------------------------------------------------------------------- the job

def test_rounds_chain_and_the_outputs_keep_critiques_principles_and_the_original(tmp_path):
    records = [{"messages": [{"role": "user", "content": "Write a poem."}], "response": "Roses.", "model": "m1"},
               {"prompt": "Add 2 and 2.", "response": "It is 5.", "label": "4"},
               # a conversation ending with an assistant turn: that turn is the response
               {"messages": [{"role": "system", "content": "Terse."}, {"role": "user", "content": "Hi"},
                             {"role": "assistant", "content": "Yo."}]}]
    backend = ConversationBackend(reviser)
    cfg = config(tmp_path, responses=write_jsonl(tmp_path / "in.jsonl", records), rounds=3)
    result = run_critique(cfg, backend=backend)
    out = read_outputs(cfg.output_dir)

    assert [row["messages"][-1]["content"] for row in out["sft.jsonl"]] == [
        "Roses. (revised) (revised) (revised)", "It is 5. (revised) (revised) (revised)",
        "Yo. (revised) (revised) (revised)"]
    first = out["sft.jsonl"][0]
    principles = [pick_principle(CONSTITUTION.principles, 0, first["id"], r).name for r in (1, 2, 3)]
    assert first["principles"] == principles
    assert first["critiques"] == [f"[{principles[0]}] problems in: Roses.",
                                  f"[{principles[1]}] problems in: Roses. (revised)",
                                  f"[{principles[2]}] problems in: Roses. (revised) (revised)"]
    assert first["original"] == "Roses." and first["stopped"] is None and first["record"] == {"model": "m1"}
    assert out["sft.jsonl"][1]["record"] == {"label": "4"}  # the record's own fields, nested
    assert out["sft.jsonl"][2]["messages"][:2] == records[2]["messages"][:2]
    assert [pair["rejected"][0]["content"] for pair in out["pairs.jsonl"]] == ["Roses.", "It is 5.", "Yo."]
    assert [pair["chosen"] for pair in out["pairs.jsonl"]] == [row["messages"][-1:] for row in out["sft.jsonl"]]
    assert out["dropped.jsonl"] == []

    # Round 2's critique call shows round 1's revision as the assistant's turn, and asks about its principle.
    rounds = [c for c in backend.conversations if c[0]["content"] == "Write a poem." and len(c) == 3]
    assert [c[1]["content"] for c in rounds] == ["Roses.", "Roses. (revised)", "Roses. (revised) (revised)"]
    assert [principle_in(c[2]["content"]).name for c in rounds] == principles
    assert backend.calls == 6  # each round: one batch of critiques, one of revisions
    assert result.counts.to_dict()["round 3"] == {"seen": 3, "kept": 3, "dropped": {
        reason: 0 for reason in ("critique error", "critique empty", "revision error", "revision empty",
                                 "revision cut off", "revision unchanged", "revision echoes the request")}}
    assert result.written == {"sft.jsonl": 3, "pairs.jsonl": 3, "dropped.jsonl": 0}


def test_every_failure_is_counted_and_a_late_one_keeps_the_last_good_revision(tmp_path):
    behaviours = ["ok", "critique error", "critique empty", "revision error", "revision empty", "revision cut off",
                  "revision unchanged", "revision echo", "revision copies critique", "late unchanged",
                  "late critique error", "revert"]
    records = [{"prompt": b, "response": f"Answer to {b}."} for b in behaviours]
    records += [{"prompt": "ok", "response": "Answer to ok."},  # a repeat
                {"prompt": "x", "response": " "},
                {"prompt": "y", "response": "", "finish_reason": "error"},
                {"prompt": "z", "response": "Cut", "finish_reason": "length"}]
    cfg = config(tmp_path, responses=write_jsonl(tmp_path / "in.jsonl", records), rounds=2)
    result = run_critique(cfg, backend=ConversationBackend(reviser))
    out = read_outputs(cfg.output_dir)

    steps = result.counts.to_dict()
    assert steps["responses"] == {"seen": 16, "kept": 12, "dropped": {
        "duplicate": 1, "response error": 1, "response empty": 1, "response cut off": 1}}
    assert steps["round 1"] == {"seen": 12, "kept": 4, "dropped": {
        "critique error": 1, "critique empty": 1, "revision error": 1, "revision empty": 1, "revision cut off": 1,
        "revision unchanged": 1, "revision echoes the request": 2}}
    assert steps["round 2"] == {"seen": 4, "kept": 1, "dropped": {
        "critique error": 1, "critique empty": 0, "revision error": 0, "revision empty": 0, "revision cut off": 0,
        "revision unchanged": 2, "revision echoes the request": 0}}

    kept = {row["messages"][0]["content"]: row for row in out["sft.jsonl"]}
    assert sorted(kept) == ["late critique error", "late unchanged", "ok", "revert"]
    assert kept["ok"]["messages"][-1]["content"] == "Answer to ok. (revised) (revised)"
    for late in ("late unchanged", "revert", "late critique error"):  # the round-1 revision, and why it stopped
        assert kept[late]["messages"][-1]["content"] == f"Answer to {late}. (revised)"
        assert len(kept[late]["critiques"]) == 1
    assert kept["revert"]["stopped"] == "round 2: revision unchanged"
    assert kept["late critique error"]["stopped"] == "round 2: critique error"

    dropped = out["dropped.jsonl"]
    assert len(dropped) == 4 + 8 + 3  # every drop in the counts is a row
    by_prompt = {(row["prompt"][-1]["content"], row["step"]): row for row in dropped}
    assert by_prompt[("revision error", "round 1")]["error"] == "timeout"
    assert by_prompt[("revision cut off", "round 1")]["revision"].endswith("and so on and")
    assert by_prompt[("late unchanged", "round 2")]["kept_earlier_revision"] is True
    assert by_prompt[("critique empty", "round 1")]["kept_earlier_revision"] is False
    assert by_prompt[("z", "responses")]["reason"] == "response cut off"
    assert result.written == {"sft.jsonl": 4, "pairs.jsonl": 4, "dropped.jsonl": 15}
    summary = json.loads(open(os.path.join(cfg.output_dir, "summary.json")).read())
    assert summary["rounds_completed"] == {"0": 8, "1": 3, "2": 1}


def test_sampled_responses_come_from_the_generator_and_their_failures_are_counted(tmp_path):
    prompts = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "Name a colour."}, {"prompt": "boom"},
                                                 {"prompt": "Name a colour."}, {"prompt": "silent"},
                                                 {"prompt": "Count to three."}])

    def reply(conversation):
        if len(conversation) == 1:  # the prompt alone: the response to revise
            text = conversation[0]["content"]
            if text == "boom":
                return Completion("", finish_reason="error", error="overloaded")
            return "" if text == "silent" else f"My answer to '{text}'"
        return reviser(conversation)

    cfg = config(tmp_path, prompts=prompts, rounds=1)
    result = run_critique(cfg, backend=ConversationBackend(reply))
    out = read_outputs(cfg.output_dir)
    steps = result.counts.to_dict()
    assert steps["prompts"] == {"seen": 5, "kept": 4, "dropped": {"duplicate": 1}}
    assert steps["sample"] == {"seen": 4, "kept": 2, "dropped": {
        "response error": 1, "response empty": 1, "response cut off": 0}}
    assert [row["original"] for row in out["sft.jsonl"]] == ["My answer to 'Name a colour.'",
                                                             "My answer to 'Count to three.'"]
    assert [row["messages"][-1]["content"] for row in out["sft.jsonl"]] == [
        "My answer to 'Name a colour.' (revised)", "My answer to 'Count to three.' (revised)"]
    assert [row["reason"] for row in out["dropped.jsonl"]] == ["response error", "response empty"]
    assert out["dropped.jsonl"][0]["error"] == "overloaded"


def test_the_same_config_gives_the_same_bytes_and_another_seed_other_principles(tmp_path):
    records = [{"prompt": f"Question {i}?", "response": f"Answer {i}."} for i in range(8)]
    path = write_jsonl(tmp_path / "in.jsonl", records)
    for name in ("a", "b"):
        run_critique(config(tmp_path, name, responses=path), backend=ConversationBackend(reviser))
    assert output_bytes(tmp_path / "a", OUTPUTS) == output_bytes(tmp_path / "b", OUTPUTS)
    run_critique(config(tmp_path, "c", responses=path, seed=1), backend=ConversationBackend(reviser))
    principles = {name: [row["principles"] for row in read_outputs(tmp_path / name)["sft.jsonl"]] for name in "ac"}
    assert principles["a"] != principles["c"]


def test_a_crash_mid_job_and_a_rerun_give_the_bytes_of_an_uninterrupted_run(tmp_path):
    behaviours = ["ok", "revision unchanged", "late unchanged", "critique error", "ok2", "revert", "ok3"]
    prompts = write_jsonl(tmp_path / "p.jsonl", [{"prompt": b} for b in behaviours])

    def reply(conversation):
        return f"First answer to {conversation[0]['content']}." if len(conversation) == 1 else reviser(conversation)

    straight = config(tmp_path, "straight", prompts=prompts)
    run_critique(straight, backend=ConversationBackend(reply))

    killed = config(tmp_path, "killed", prompts=prompts)
    # 3 sample calls (chunks of 3), then 4 per critique chunk: the crash comes inside the second chunk's rounds.
    with pytest.raises(Crash):
        run_critique(killed, backend=ConversationBackend(reply, crash_after=3 + 4 + 2))
    journaled = open(os.path.join(killed.output_dir, "journal.jsonl")).read().splitlines()
    assert len(journaled) == 1 + 7 + 3  # the header, every sample, the first critique chunk
    rerun = ConversationBackend(reply)
    run_critique(killed, backend=rerun)
    assert output_bytes(killed.output_dir, OUTPUTS) == output_bytes(straight.output_dir, OUTPUTS)
    # Nothing journaled was asked again, and the calls answered before the crash came from the cache: of the
    # unit in flight, only round 2 (an errored call is never cached, so the critique error is asked again).
    assert not any(len(c) == 1 for c in rerun.conversations)
    assert all(c[0]["content"] not in behaviours[:3] for c in rerun.conversations)
    in_flight = [c for c in rerun.conversations if c[0]["content"] == "ok2"]
    assert in_flight and all(REVISED in c[1]["content"] for c in in_flight)


def test_the_cli_runs_the_shipped_config_against_an_openai_compatible_server(tmp_path, monkeypatch, capsys):
    from alignkit.cli import main

    monkeypatch.setenv("OPENAI_API_KEY", "x")

    def rule(text, index, seed):
        if text.startswith("Critique request:"):
            return "It could say more about why."
        if text.startswith("Revision request:"):
            return "A fuller answer, with the reasons spelled out."
        return f"A short answer ({len(text)} characters asked)."

    out = tmp_path / "critique"
    with standin_server(rule) as (url, log):
        code = main(["data", "critique", "--config", str(CONFIGS / "data" / "critique.yaml"), f"output_dir={out}",
                     f"prompts={CONFIGS / 'data' / 'prompts.jsonl'}", "limit=5", "rounds=2", "progress=false",
                     f"generator.model=openai:standin@{url}"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "wrote 5 rows to sft.jsonl" in printed and "round 2" in printed
    # 5 samples; round 1: 5 critiques and 5 revisions; round 2 revises into the same text, so fails unchanged.
    assert len(log.prompts) == 5 + 10 + 10
    conversations, _ = load_conversations([str(out / "sft.jsonl")])
    pairs, _ = load_pairs([str(out / "pairs.jsonl")])
    assert len(conversations) == len(pairs) == 5
    assert pairs[0].chosen == [{"role": "assistant", "content": "A fuller answer, with the reasons spelled out."}]
    assert pairs[0].prompt == conversations[0].messages[:-1]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"]["round 2"]["dropped"]["revision unchanged"] == 5
