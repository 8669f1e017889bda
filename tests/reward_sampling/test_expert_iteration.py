"""Expert iteration on a tiny model with a reward that prefers a known letter: each round keeps exactly the
samples its rule defines (checked against samples.jsonl), trains on them, and is logged; a rerun skips
finished rounds; a round that keeps nothing is a logged skip; bad config is one line before any load."""
from __future__ import annotations

import os

import pytest
import yaml

from alignkit.cli import main
from alignkit.config import ConfigError, load_config
from alignkit.reward_sampling.expert_iteration import ExpertIterationConfig, run_expert_iteration
from tests.helpers.paths import CONFIGS
from tests.reward_sampling.rounds_helpers import FAILURE_REWARD, read_jsonl, round_args, usable

TRAIN = {"sft.max_steps": 2, "sft.batch_size": 2, "sft.lr": 1e-3, "sft.precision": "fp32", "sft.progress": "false"}


def ei_args(model_dir, tmp_path, out, **extra):
    return round_args(model_dir, tmp_path, out, **{**TRAIN, "selection.keep_truncated": "true", **extra})


def ei_config(model_dir, tmp_path, out, **extra) -> ExpertIterationConfig:
    return load_config(ExpertIterationConfig, None, ei_args(model_dir, tmp_path, out, **extra))


def test_best_keeps_exactly_the_highest_reward_sample_of_each_prompt_and_rounds_are_logged(tmp_path, model_dir,
                                                                                             capsys):
    out = tmp_path / "ei"
    assert main(["expert-iteration", *ei_args(model_dir, tmp_path, out)]) == 0
    printed = capsys.readouterr().out
    failures = 0
    for k in (1, 2):
        samples = {r["source"]: r for r in read_jsonl(out / f"round_{k}" / "samples.jsonl")}
        selected = read_jsonl(out / f"round_{k}" / "selected.jsonl")
        expected = {}
        for source, record in samples.items():
            failures += sum(f is not None for f in record["failures"])
            ok = usable(record, keep_truncated=True)
            if ok:
                rewards = [record["rewards"][i] for i in ok]
                expected[source] = ok[rewards.index(max(rewards))]  # the first of the highest
        assert {row["source"]: row["sample"] for row in selected} == expected and len(selected) == len(expected)
        for row in selected:
            record = samples[row["source"]]
            assert row["messages"][-1] == {"role": "assistant", "content": record["responses"][row["sample"]]}
            assert row["messages"][:-1] == record["messages"]
            assert row["reward"] == record["rewards"][row["sample"]] < FAILURE_REWARD
        assert f"round {k}/2: kept {len(selected)}/12 samples" in printed
    assert failures > 0  # failures scored 100 were there to be wrongly picked

    records = read_jsonl(out / "rounds.jsonl")
    assert [r["round"] for r in records] == [0, 1, 2]
    for r in records:
        assert r["heldout"]["prompts"] == 2 and "python" in r["heldout"]["components"]
        assert r["seconds"]["total"] > 0
    for r in records[1:]:
        assert r["trained"] and r["train_steps"] == 2 and r["kept_share"] == r["kept"] / r["samples"]
        assert r["model"] == str(out / f"round_{r['round']}" / "sft" / "final")
        assert os.path.isfile(os.path.join(r["model"], "config.json"))
    # from_previous: round 2 starts from round 1's model and learns only its own samples
    with open(out / "round_2" / "sft" / "config.yaml") as f:
        sft = yaml.safe_load(f)
    assert sft["model"]["name"] == records[1]["model"]
    assert [d["path"] for d in sft["data"]["train"]] == [str(out / "round_2" / "selected.jsonl")]


def test_a_rerun_skips_finished_rounds_and_more_rounds_continue_from_the_last(tmp_path, model_dir, capsys):
    out = tmp_path / "ei"
    run_expert_iteration(ei_config(model_dir, tmp_path, out, rounds=1))
    first = (out / "round_1" / "round.json").read_text()
    capsys.readouterr()
    report = run_expert_iteration(ei_config(model_dir, tmp_path, out, rounds=2))
    printed = capsys.readouterr().out
    assert "round 0/2: finished before" in printed and "round 1/2: finished before" in printed
    assert f"loading {out / 'round_1' / 'sft' / 'final'}" in printed  # round 2 starts from round 1's model
    assert (out / "round_1" / "round.json").read_text() == first
    assert [r["round"] for r in report["records"]] == [0, 1, 2]

    run_expert_iteration(ei_config(model_dir, tmp_path, out, rounds=2))
    printed = capsys.readouterr().out
    assert printed.count("finished before") == 3 and "loading" not in printed  # nothing redone, nothing loaded

    with pytest.raises(ConfigError, match=r"holds rounds of another config \(sft.lr"):
        run_expert_iteration(ei_config(model_dir, tmp_path, out, **{"sft.lr": 1e-4}))


def test_a_round_stopped_after_its_training_reuses_the_trained_model(tmp_path, model_dir, capsys):
    out = tmp_path / "ei"
    before = run_expert_iteration(ei_config(model_dir, tmp_path, out, rounds=1))["records"][1]
    (out / "round_1" / "round.json").unlink()  # as if killed between training and the held-out answers
    capsys.readouterr()
    after = run_expert_iteration(ei_config(model_dir, tmp_path, out, rounds=1))["records"][1]
    assert f"training finished before ({out / 'round_1' / 'sft' / 'final'}), loading it" in capsys.readouterr().out
    for key in ("kept", "kept_reward_mean", "train_steps", "model", "heldout"):
        assert after[key] == before[key], key


def test_a_round_that_keeps_nothing_is_a_logged_skip(tmp_path, model_dir, capsys):
    out = tmp_path / "ei"
    report = run_expert_iteration(ei_config(model_dir, tmp_path, out, **{"selection.min_reward": 1e9}))
    assert "kept no sample" in capsys.readouterr().out
    for r in report["records"][1:]:
        assert r["kept"] == 0 and not r["trained"] and r["model"] == report["records"][0]["model"]
        assert r["heldout"]["unchanged"] and r["heldout"]["reward_mean"] == report["start"]["reward_mean"]
        assert r["dropped"]["below_min_reward"] > 0
        assert not (out / f"round_{r['round']}" / "sft").exists()


def test_from_the_starting_model_each_round_learns_everything_kept_so_far(tmp_path, model_dir):
    out = tmp_path / "ei"
    report = run_expert_iteration(ei_config(model_dir, tmp_path, out, from_previous="false",
                                            **{"selection.rule": "top_k", "selection.k": 2}))
    with open(out / "round_2" / "sft" / "config.yaml") as f:
        sft = yaml.safe_load(f)
    assert sft["model"]["name"] == model_dir
    assert [d["path"] for d in sft["data"]["train"]] == [str(out / f"round_{k}" / "selected.jsonl") for k in (1, 2)]
    kept = [r["kept"] for r in report["records"][1:]]
    assert report["records"][2]["train_examples"] == sum(kept) and all(0 < n <= 6 for n in kept)
    assert report["records"][2]["model"] == str(out / "round_2" / "sft" / "final")


@pytest.mark.parametrize("override,key", [
    ("selection.rule=worst", "selection.rule"),
    ("selection.k=2", "selection.k"),
    ("selection.threshold=0.5", "selection.threshold"),
    ("sft.output_dir=elsewhere", "sft.output_dir"),
    ("sft.lr=0", "sft.lr"),
    ("rounds=0", "rounds"),
    ("heldout=[]", "heldout"),
    ("sampling.n=0", "sampling.n"),
    ("model.lora.enabled=true", "model.lora.enabled"),
    ("if_exists=extend", "if_exists"),
])
def test_a_bad_value_is_one_line_naming_the_key_before_anything_loads(tmp_path, model_dir, capsys, override, key):
    out = tmp_path / "ei"
    assert main(["expert-iteration", *ei_args(model_dir, tmp_path, out), override]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and key in err, err
    assert not out.exists()


def test_the_demo_config_loads():
    cfg = load_config(ExpertIterationConfig, str(CONFIGS / "expert_iteration.yaml"))
    assert cfg.model.name == "runs/demo/sft/final" and cfg.sampling.max_tokens == 48
    assert [r.kind for r in cfg.rewards] == ["format"] and cfg.heldout[0].path.endswith("heldout.jsonl")
