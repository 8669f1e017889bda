"""`alignkit data contrast` (RLCD): the positive variant answers chosen, the negative rejected, the pair keeps the
original prompt, every failed pair is counted, and a crash and rerun give an uninterrupted run's outputs."""
import json
import os

import pytest

from alignkit.config import ConfigError, load_config
from alignkit.construction.contrast import (OUTPUTS, REASONS, ContrastConfig, Direction, load_directions,
                                            pair_failure, pick_direction, run_contrast, with_direction)
from alignkit.construction.generator import GeneratorConfig, resource
from alignkit.data.errors import DataError
from alignkit.data.preference import load_pairs
from alignkit.generation.backend import Completion
from tests.helpers.construction import ConversationBackend, RuleBackend, standin_server
from tests.helpers.files import output_bytes, write_jsonl
from tests.helpers.crash import Crash
from tests.helpers.paths import CONFIGS

DIRECTIONS, _ = load_directions(resource("contrast.yaml"))


def side_of(text: str) -> tuple[str, Direction]:
    """Which direction text was added to a prompt, and on which side."""
    found = [("positive", d) for d in DIRECTIONS if d.positive in text]
    found += [("negative", d) for d in DIRECTIONS if d.negative in text]
    assert len(found) == 1, text
    return found[0]


def by_side(text, index, seed):
    """A RuleBackend rule: a good or a bad answer, by the direction appended to the user's turn."""
    side, direction = side_of(text)
    question = text.split("\n\n")[0]
    return f"{'Good' if side == 'positive' else 'Bad'} {direction.name} answer to: {question}"


def config(tmp_path, name="run", **changes):
    return ContrastConfig(output_dir=str(tmp_path / name), progress=False,
                          generator=GeneratorConfig(batch_size=2, seed=changes.pop("seed", 0)), **changes)


def read_outputs(folder):
    return {name: [json.loads(line) for line in open(os.path.join(folder, name), encoding="utf-8")]
            for name in OUTPUTS}


# ----------------------------------------------------------------------------- the rules

def test_the_direction_is_appended_to_the_last_user_turn_or_put_in_a_system_turn():
    conversation = [{"role": "user", "content": "Hi."}, {"role": "assistant", "content": "Hello."},
                    {"role": "user", "content": "Tell me a fact."}]
    assert with_direction(conversation, "(Be brief.)", "user") == [
        *conversation[:2], {"role": "user", "content": "Tell me a fact.\n\n(Be brief.)"}]
    assert with_direction(conversation, "(Be brief.)", "system") == [
        {"role": "system", "content": "(Be brief.)"}, *conversation]
    with_system = [{"role": "system", "content": "You are a tutor."}, *conversation]
    assert with_direction(with_system, "(Be brief.)", "system")[0] == {
        "role": "system", "content": "You are a tutor.\n\n(Be brief.)"}
    assert conversation[2]["content"] == "Tell me a fact." and with_system[0]["content"] == "You are a tutor."


def test_directions_are_drawn_per_prompt_and_seed_or_fixed():
    drawn = [pick_direction(DIRECTIONS, "", 0, f"prompt{i}") for i in range(100)]
    assert drawn == [pick_direction(DIRECTIONS, "", 0, f"prompt{i}") for i in range(100)]
    assert set(drawn) == set(DIRECTIONS)
    assert drawn != [pick_direction(DIRECTIONS, "", 1, f"prompt{i}") for i in range(100)]
    assert {pick_direction(DIRECTIONS, "candid", 0, f"prompt{i}").name for i in range(20)} == {"candid"}


@pytest.mark.parametrize("chosen, rejected, expected", [
    (Completion("", finish_reason="error"), Completion(""), "chosen error"),
    (Completion("Fine."), Completion("", finish_reason="error"), "rejected error"),
    (Completion(" "), Completion("Fine."), "chosen empty"),
    (Completion("Fine."), Completion("\n"), "rejected empty"),
    (Completion("Fine, and", finish_reason="length"), Completion("Bad."), "chosen cut off"),
    (Completion("Fine."), Completion("Bad and", finish_reason="length"), "rejected cut off"),
    (Completion("Same  words."), Completion("Same words.\n"), "chosen equals rejected"),
    (Completion("Fine."), Completion("Bad."), None),
])
def test_pair_failures(chosen, rejected, expected):
    assert pair_failure(chosen, rejected, drop_cut_off=True) == expected


def test_a_bad_directions_file_or_name_is_one_line(tmp_path):
    path = tmp_path / "d.yaml"
    path.write_text("directions:\n  - {name: a, positive: p}\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"d\.yaml: directions\[0\]\.negative: must be a non-empty string"):
        load_directions(str(path))
    prompts = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "Hi"}])
    with pytest.raises(ConfigError, match="^direction: must be one of harmless, concise-correct"):
        run_contrast(config(tmp_path, prompts=prompts, direction="kind"), backend=RuleBackend(by_side))
    with pytest.raises(ConfigError, match="^placement: must be one of user, system"):
        load_config(ContrastConfig, None, [f"output_dir={tmp_path}", "prompts=p.jsonl", "placement=middle"])
    with pytest.raises(ConfigError, match="^prompts: must be a prompts file"):
        load_config(ContrastConfig, None, [f"output_dir={tmp_path}"])


# ----------------------------------------------------------------------------- the job

def test_chosen_comes_from_the_positive_variant_and_the_pair_keeps_the_original_prompt(tmp_path):
    records = [{"prompt": f"Question {i}?", "topic": f"t{i}"} for i in range(6)]
    records.append({"messages": [{"role": "system", "content": "Be exact."}, {"role": "user", "content": "Why?"}]})
    backend = RuleBackend(by_side)
    cfg = config(tmp_path, prompts=write_jsonl(tmp_path / "p.jsonl", records))
    result = run_contrast(cfg, backend=backend)
    out = read_outputs(cfg.output_dir)

    pairs = out["pairs.jsonl"]
    assert [pair["prompt"][-1]["content"] for pair in pairs] == [f"Question {i}?" for i in range(6)] + ["Why?"]
    assert pairs[-1]["prompt"] == records[-1]["messages"]  # no direction text in the pair's prompt
    for pair in pairs:
        question, name = pair["prompt"][-1]["content"], pair["direction"]
        assert name == pick_direction(DIRECTIONS, "", 0, pair["id"]).name
        assert pair["chosen"] == [{"role": "assistant", "content": f"Good {name} answer to: {question}"}]
        assert pair["rejected"] == [{"role": "assistant", "content": f"Bad {name} answer to: {question}"}]
    assert pairs[0]["record"] == {"topic": "t0"}
    # Both variants were asked, each with its direction text appended to the user's turn.
    assert len(backend.prompts) == 14
    assert sorted(side_of(text)[0] for text in backend.prompts) == ["negative"] * 7 + ["positive"] * 7
    assert result.counts.to_dict() == {"prompts": {"seen": 7, "kept": 7, "dropped": {"duplicate": 0}},
                                       "pairs": {"seen": 7, "kept": 7, "dropped": {r: 0 for r in REASONS}}}
    summary = json.loads(open(os.path.join(cfg.output_dir, "summary.json")).read())
    assert sum(summary["pairs_per_direction"].values()) == 7


def test_every_failed_pair_is_dropped_and_counted(tmp_path):
    behaviours = ["fine", "chosen error", "rejected error", "chosen empty", "rejected cut off", "identical", "fine2"]
    prompts = write_jsonl(tmp_path / "p.jsonl", [{"prompt": b} for b in behaviours] + [{"prompt": "fine"}])

    def reply(conversation):
        text = conversation[-1]["content"]
        behaviour, (side, _) = text.split("\n\n")[0], side_of(text)
        if behaviour == "identical":
            return "The same answer."
        if behaviour == f"{'chosen' if side == 'positive' else 'rejected'} error":
            return Completion("", finish_reason="error", error="503")
        if behaviour == "chosen empty" and side == "positive":
            return ""
        if behaviour == "rejected cut off" and side == "negative":
            return Completion("A rambling", finish_reason="length")
        return f"{side} answer"

    cfg = config(tmp_path, prompts=prompts, direction="concise-correct")
    result = run_contrast(cfg, backend=ConversationBackend(reply))
    out = read_outputs(cfg.output_dir)
    assert result.counts.to_dict() == {
        "prompts": {"seen": 8, "kept": 7, "dropped": {"duplicate": 1}},
        "pairs": {"seen": 7, "kept": 2, "dropped": {"chosen error": 1, "chosen empty": 1, "chosen cut off": 0,
                                                   "rejected error": 1, "rejected empty": 0, "rejected cut off": 1,
                                                   "chosen equals rejected": 1}}}
    assert [pair["prompt"][0]["content"] for pair in out["pairs.jsonl"]] == ["fine", "fine2"]
    assert {pair["direction"] for pair in out["pairs.jsonl"]} == {"concise-correct"}
    dropped = {row["prompt"][0]["content"]: row for row in out["dropped.jsonl"]}
    assert dropped["chosen error"]["errors"] == {"chosen": "503"}
    assert dropped["rejected cut off"]["rejected_text"] == "A rambling"
    assert result.written == {"pairs.jsonl": 2, "dropped.jsonl": 5}


def test_a_cut_off_side_is_kept_when_drop_cut_off_is_false(tmp_path):
    def reply(conversation):
        side = side_of(conversation[-1]["content"])[0]
        return Completion(f"{side} answer that goes on", finish_reason="length")

    cfg = config(tmp_path, prompts=write_jsonl(tmp_path / "p.jsonl", [{"prompt": "Go on."}]), drop_cut_off=False)
    assert run_contrast(cfg, backend=ConversationBackend(reply)).written["pairs.jsonl"] == 1


def test_system_placement_puts_the_direction_in_the_system_turn_only(tmp_path):
    backend = ConversationBackend(lambda conversation: f"{side_of(conversation[0]['content'])[0]} answer")
    records = [{"messages": [{"role": "system", "content": "Be exact."}, {"role": "user", "content": "Why?"}]},
               {"prompt": "How?"}]
    cfg = config(tmp_path, prompts=write_jsonl(tmp_path / "p.jsonl", records), placement="system")
    run_contrast(cfg, backend=backend)
    assert [c[0]["role"] for c in backend.conversations] == ["system"] * 4
    assert [c[-1]["content"] for c in backend.conversations] == ["Why?", "Why?", "How?", "How?"]
    assert backend.conversations[0][0]["content"].startswith("Be exact.\n\n(")
    pairs = read_outputs(cfg.output_dir)["pairs.jsonl"]
    assert [pair["prompt"] for pair in pairs] == [records[0]["messages"], [{"role": "user", "content": "How?"}]]
    assert pairs[0]["chosen"][0]["content"] == "positive answer"


def test_a_crash_mid_job_and_a_rerun_give_the_bytes_of_an_uninterrupted_run(tmp_path):
    prompts = write_jsonl(tmp_path / "p.jsonl", [{"prompt": f"Question {i}?"} for i in range(7)])

    def reply(conversation):
        text = conversation[-1]["content"]
        return by_side(text, 0, 0) if "Question 3?" not in text else ""  # one pair dropped, in the second chunk

    for name in ("straight", "again"):
        run_contrast(config(tmp_path, name, prompts=prompts), backend=ConversationBackend(reply))
    assert output_bytes(tmp_path / "straight", OUTPUTS) == output_bytes(tmp_path / "again", OUTPUTS)

    killed = config(tmp_path, "killed", prompts=prompts)
    with pytest.raises(Crash):
        run_contrast(killed, backend=ConversationBackend(reply, crash_after=4))  # 2 prompts a chunk, 2 calls each: after 2 chunks
    assert len(open(os.path.join(killed.output_dir, "journal.jsonl")).read().splitlines()) == 1 + 4
    rerun = ConversationBackend(reply)
    run_contrast(killed, backend=rerun)
    assert rerun.calls == 3 and len(rerun.conversations) == 2 * 3  # only the 3 prompts not journaled
    assert output_bytes(killed.output_dir, OUTPUTS) == output_bytes(tmp_path / "straight", OUTPUTS)
    run_contrast(config(tmp_path, "other-seed", prompts=prompts, seed=3), backend=ConversationBackend(reply))
    directions = {name: [p["direction"] for p in read_outputs(tmp_path / name)["pairs.jsonl"]]
                  for name in ("straight", "other-seed")}
    assert directions["straight"] != directions["other-seed"]


def test_the_cli_runs_the_shipped_config_against_an_openai_compatible_server(tmp_path, monkeypatch, capsys):
    from alignkit.cli import main

    monkeypatch.setenv("OPENAI_API_KEY", "x")
    out = tmp_path / "contrast"
    with standin_server(by_side) as (url, log):
        code = main(["data", "contrast", "--config", str(CONFIGS / "data" / "contrast.yaml"), f"output_dir={out}",
                     f"prompts={CONFIGS / 'data' / 'prompts.jsonl'}", "limit=6", "progress=false",
                     f"generator.model=openai:standin@{url}"])
    assert code == 0
    assert "wrote 6 rows to pairs.jsonl" in capsys.readouterr().out
    assert len(log.prompts) == 12
    pairs, _ = load_pairs([str(out / "pairs.jsonl")])
    assert len(pairs) == 6
    assert all(pair.chosen[0]["content"].startswith("Good ") and pair.rejected[0]["content"].startswith("Bad ")
               for pair in pairs)
    assert all("\n\n(" not in pair.prompt[-1]["content"] for pair in pairs)
