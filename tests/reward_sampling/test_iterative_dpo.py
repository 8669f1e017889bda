"""Iterative DPO on a tiny model with a reward that prefers a known letter: every pair is the best against the
worst usable sample of its prompt (checked against samples.jsonl), ties give none and are counted, each
round trains against the model it started from, rounds are logged, a rerun skips them, and bad config is
one line before any load."""
from __future__ import annotations

import pytest

from alignkit.cli import main
from alignkit.config import load_config
from alignkit.reward_sampling.iterative_dpo import IterativeDPOConfig, run_iterative_dpo
from tests.helpers.paths import CONFIGS
from tests.reward_sampling.rounds_helpers import FAILURE_REWARD, read_jsonl, round_args, usable

TRAIN = {"pref.train.max_steps": 2, "pref.train.batch_size": 2, "pref.train.lr": 1e-3,
         "pref.train.precision": "fp32", "pref.train.progress": "false", "pref.train.shuffle": "false"}


def dpo_args(model_dir, tmp_path, out, **extra):
    return round_args(model_dir, tmp_path, out, **{**TRAIN, "keep_truncated": "true", "prompts_per_round": 4,
                                                   "pref.reference_cache": str(tmp_path / "refcache"), **extra})


def first_step(out, k: int) -> dict:
    return next(r for r in read_jsonl(out / f"round_{k}" / "pref" / "metrics.jsonl") if "loss" in r)


def test_every_pair_is_best_against_worst_with_ties_counted_and_rounds_logged(tmp_path, model_dir, capsys):
    out = tmp_path / "dpo"
    assert main(["iterative-dpo", *dpo_args(model_dir, tmp_path, out)]) == 0
    printed = capsys.readouterr().out
    records = read_jsonl(out / "rounds.jsonl")
    assert [r["round"] for r in records] == [0, 1, 2]
    total_pairs = 0
    for k in (1, 2):
        samples = {r["source"]: r for r in read_jsonl(out / f"round_{k}" / "samples.jsonl")}
        pairs = read_jsonl(out / f"round_{k}" / "pairs.jsonl")
        expected, tied = set(), 0
        for source, record in samples.items():
            ok = usable(record, keep_truncated=True)
            rewards = {i: record["rewards"][i] for i in ok}
            if len(ok) >= 2 and len(set(rewards.values())) == 1:
                tied += 1
            expected |= {(source, i, j) for i in ok for j in ok if rewards[i] > rewards[j]
                         and rewards[i] == max(rewards.values()) and rewards[j] == min(rewards.values())}
        assert {(p["source"], p["chosen_sample"], p["rejected_sample"]) for p in pairs} == expected
        assert len(pairs) == len(expected)
        for p in pairs:
            record = samples[p["source"]]
            assert p["prompt"] == record["messages"]
            assert p["chosen"] == [{"role": "assistant", "content": record["responses"][p["chosen_sample"]]}]
            assert p["rejected"] == [{"role": "assistant", "content": record["responses"][p["rejected_sample"]]}]
            assert p["score_chosen"] == record["rewards"][p["chosen_sample"]]
            assert p["score_rejected"] == record["rewards"][p["rejected_sample"]]
            assert FAILURE_REWARD > p["score_chosen"] > p["score_rejected"]
        r = records[k]
        assert r["pairs"] == len(pairs) and r["prompts_tied"] == tied and r["prompts"] == 4
        assert f"round {k}/2: {len(pairs)} pairs from {r['prompts_paired']}/4 prompts ({tied} tied" in printed
        total_pairs += len(pairs)
        if pairs:
            assert r["trained"] and r["train_steps"] == 2 and r["model"] == str(out / f"round_{k}" / "pref" / "final")
    assert total_pairs > 0
    # the reference is the model the round starts from: at its first step the policy equals it
    for k in (1, 2):
        if records[k]["trained"]:
            assert first_step(out, k)["chosen_reward"] == pytest.approx(0.0, abs=1e-5)

    capsys.readouterr()
    assert main(["iterative-dpo", *dpo_args(model_dir, tmp_path, out)]) == 0
    printed = capsys.readouterr().out
    assert printed.count("finished before") == 3 and "loading" not in printed


def test_the_initial_reference_stays_the_starting_model(tmp_path, model_dir):
    out = tmp_path / "dpo"
    report = run_iterative_dpo(load_config(IterativeDPOConfig, None, dpo_args(
        model_dir, tmp_path, out, reference="initial", **{"pref.loss": "dpo", "sampling.seed": 4})))
    assert report["records"][1]["trained"] and report["records"][2]["trained"]
    # round 2 starts from round 1's model, so against the starting model its first step is already off zero
    assert abs(first_step(out, 2)["chosen_reward"]) > 1e-4


@pytest.mark.parametrize("override,key", [
    ("sampling.n=1", "sampling.n"),
    ("pair_rule=best", "pair_rule"),
    ("pair_threshold=0.5", "pair_threshold"),
    ("reference=latest", "reference"),
    ("pref.loss=kto", "pref.loss"),
    ("pref.beta=0", "pref.beta"),
    ("pref.loss=slic", "pref"),
    ("pref.train.output_dir=elsewhere", "pref.train.output_dir"),
    ("prompts=[]", "prompts"),
])
def test_a_bad_value_is_one_line_naming_the_key_before_anything_loads(tmp_path, model_dir, capsys, override, key):
    out = tmp_path / "dpo"
    assert main(["iterative-dpo", *dpo_args(model_dir, tmp_path, out), override]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and key in err, err
    assert not out.exists()


def test_the_demo_config_loads():
    cfg = load_config(IterativeDPOConfig, str(CONFIGS / "iterative_dpo.yaml"))
    assert cfg.model.name == "runs/demo/sft/final" and cfg.sampling.max_tokens == 48 and cfg.rounds == 2
    assert cfg.pair_rule == "best_vs_worst" and cfg.reference == "previous" and cfg.pref.loss == "dpo"
