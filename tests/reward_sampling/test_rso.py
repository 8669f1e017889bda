"""RSO: the rejection sampling is the paper's Algorithm 1 (uniform as beta grows, the best first as it shrinks,
a pass accepts by pi* ∝ exp(r / beta) over a uniform proposal), the pairings follow their definitions with the
higher reward chosen and ties dropped, and the command writes the candidates it accepted, pairs labelled by
the reward and acceptance rates that match them, then trains with DPO or SLiC; bad config is a one-line error
before any model loads."""
from __future__ import annotations

import json
import math
import random
import sqlite3
from collections import Counter
from itertools import combinations

import pytest
import yaml

from alignkit.cli import main
from alignkit.config import load_config
from alignkit.reward_sampling.rso import RSOConfig, make_pairs, prompt_rng, rejection_pass, rso_accept, run_rso
from alignkit.data.prompts import read_prompt_records
from tests.helpers.files import write_jsonl
from tests.helpers.paths import CONFIGS
from tests.helpers.rl_runs import read_jsonl, write_prompts

HERE = "tests.reward_sampling.test_rso:"


def count_e(prompt, completion, metadata):
    """The test reward: it prefers a known token, scoring how many times "e" occurs in the completion."""
    return float(completion.count("e"))


def total_variation(counts: Counter, target: list[float]) -> float:
    total = sum(counts.values())
    return 0.5 * sum(abs(counts[i] / total - p) for i, p in enumerate(target))


def chi_square_uniform(counts: Counter, k: int) -> float:
    expected = sum(counts.values()) / k
    return sum((counts[i] - expected) ** 2 / expected for i in range(k))


# ---------------------------------------------------------------- rejection sampling (pure)

def test_a_large_beta_accepts_uniformly_and_a_moderate_one_does_not():
    rewards = [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]
    rng = random.Random(0)
    flat = Counter(rso_accept(rewards, 1e12, 1, rng)[0] for _ in range(6000))
    assert chi_square_uniform(flat, 6) < 20.5  # the 0.1% critical value with 5 degrees of freedom
    tilted = Counter(rso_accept(rewards, 1.0, 1, rng)[0] for _ in range(6000))
    assert chi_square_uniform(tilted, 6) > 1000  # the same test tells a reward-tilted draw apart


def test_a_small_beta_accepts_the_best_then_the_next_best():
    rewards = [0.3, 2.0, -1.0, 1.5, 0.9]
    for seed in range(30):
        assert rso_accept(rewards, 1e-6, 1, random.Random(seed)) == [1]
        # Each pass recomputes M over what is left, so pass j accepts the j-th best (top-k-over-n).
        assert rso_accept(rewards, 1e-6, 3, random.Random(seed)) == [1, 3, 4]


def test_one_pass_accepts_each_candidate_with_its_chance_so_the_accepted_follow_pi_star():
    rewards, beta, trials = [0.0, 0.5, 1.0, 2.0], 0.8, 20000
    rng = random.Random(1)
    counts = Counter(i for _ in range(trials) for i in rejection_pass(rewards, range(4), beta, rng))
    chances = [math.exp((r - max(rewards)) / beta) for r in rewards]
    for i, chance in enumerate(chances):
        assert abs(counts[i] / trials - chance) <= 4 * math.sqrt(chance * (1 - chance) / trials)
    pi_star = [math.exp(r / beta) / sum(math.exp(x / beta) for x in rewards) for r in rewards]
    assert total_variation(counts, pi_star) < 0.01
    assert total_variation(counts, [0.25] * 4) > 0.2  # far from the proposal: the bound above has teeth


def test_the_first_accepted_from_a_large_uniform_pool_follows_pi_star():
    """The SFT candidates as a uniform proposal over four reward levels, fifty candidates each: the first
    sample accepted is a draw from pi* (up to the pool's finite size)."""
    levels, beta = [0.0, 1.0, 2.0, 3.0], 1.0
    pool = [r for r in levels for _ in range(50)]
    rng = random.Random(2)
    counts = Counter(levels.index(pool[rso_accept(pool, beta, 1, rng)[0]]) for _ in range(3000))
    pi_star = [math.exp(r / beta) / sum(math.exp(x / beta) for x in levels) for r in levels]
    assert total_variation(counts, pi_star) < 0.03
    assert total_variation(counts, [0.25] * 4) > 0.2


def test_sampling_stops_at_num_samples_or_when_every_candidate_is_accepted():
    rewards = [1.0, 0.0, 3.0, 2.0, 2.0]
    for seed in range(20):
        got = rso_accept(rewards, 0.5, 3, random.Random(seed))
        assert len(got) == len(set(got)) == 3
        assert got == rso_accept(rewards, 0.5, 3, random.Random(seed))  # seeded
        every = rso_accept(rewards, 0.5, 10, random.Random(seed))
        assert sorted(every) == [0, 1, 2, 3, 4]  # the candidates ran out: all of them, once each
    assert rso_accept([], 0.5, 2, random.Random(0)) == []


@pytest.mark.parametrize("rewards,beta,num_samples,message", [
    ([1.0, 2.0], 0.0, 1, "beta"), ([1.0, 2.0], -1.0, 1, "beta"), ([1.0, 2.0], math.nan, 1, "beta"),
    ([1.0, 2.0], 0.5, 0, "num_samples"), ([1.0, math.nan], 0.5, 1, "rewards[1]"),
    ([math.inf, 2.0], 0.5, 1, "rewards[0]"),
])
def test_bad_input_is_refused_rather_than_sampled(rewards, beta, num_samples, message):
    with pytest.raises(ValueError, match=message.replace("[", r"\[")):
        rso_accept(rewards, beta, num_samples, random.Random(0))


# ---------------------------------------------------------------- pairing (pure)

REWARDS = [5.0, 1.0, 3.0, 3.0, 0.0, 2.0, 4.0]
ORDER = [4, 2, 3, 0, 6, 1, 5]  # acceptance order


def test_first_round_pairs_neighbours_in_acceptance_order_and_leaves_the_odd_one_out():
    assert make_pairs(ORDER, REWARDS, "first_round") == ([(2, 4), (0, 3), (6, 1)], 0)
    assert make_pairs([2, 3, 1, 4], REWARDS, "first_round") == ([(1, 4)], 1)  # 2 and 3 tie


def test_tournament_winners_play_on_for_k_minus_one_games():
    # round 1: 4v2 -> 2, 3v0 -> 0, 6v1 -> 6, 5 has a bye; round 2: 2v0 -> 0, 6v5 -> 6; final: 0v6 -> 0
    assert make_pairs(ORDER, REWARDS, "tournament") == ([(2, 4), (0, 3), (6, 1), (0, 2), (6, 5), (0, 6)], 0)
    # 2 and 3 tie (no pair; the earlier-accepted 2 advances), 1 beats 4, then 2 beats 1: 3 games, 1 tie
    assert make_pairs([2, 3, 1, 4], REWARDS, "tournament") == ([(1, 4), (2, 1)], 1)


def test_all_pairs_are_every_two_with_different_rewards_chosen_higher():
    rng = random.Random(3)
    for _ in range(20):
        rewards = [float(rng.randint(0, 3)) for _ in range(8)]
        order = rng.sample(range(8), 6)
        pairs, ties = make_pairs(order, rewards, "all_pairs")
        assert sorted(pairs) == sorted((a, b) for a in order for b in order if rewards[a] > rewards[b])
        assert ties == sum(rewards[a] == rewards[b] for a, b in combinations(order, 2))


# ---------------------------------------------------------------- the command on a tiny model

def run_args(model_dir, prompts, out, **extra):
    args = {"model.name": model_dir, "prompts": f"[{prompts}]", "max_prompts": 4,
            "rewards": f'[{{kind: python, function: "{HERE}count_e"}}]',
            "sampling.n": 6, "sampling.max_tokens": 8, "sampling.seed": 3, "num_accept": 4, "beta_rso": 1.0,
            "seed": 7, "pairing": "first_round", "output_dir": str(out),
            "pref.reference_cache": str(out.parent / "refcache"), "pref.max_length": 64,
            "pref.train.max_steps": 2, "pref.train.batch_size": 2, "pref.train.precision": "fp32",
            "pref.train.lr": 1e-3, "pref.train.progress": "false"}
    args.update(extra)
    return [f"{k}={v}" for k, v in args.items()]


def test_the_command_trains_dpo_on_the_pairs_it_accepted_labelled_by_the_reward(tmp_path, model_dir, capsys):
    prompts = write_prompts(tmp_path / "prompts.jsonl")
    out = tmp_path / "run"
    assert main(["rso", *run_args(model_dir, prompts, out)]) == 0
    stdout = capsys.readouterr().out
    records = read_jsonl(out / "candidates.jsonl")
    assert len(records) == 4 and all(len(r["responses"]) == 6 for r in records)
    expected, ties, rates, accepted, eligible = [], 0, [], 0, 0
    for index, r in enumerate(records):
        assert r["rewards"] == [count_e(None, text, None) for text in r["responses"]]
        ok = [i for i, text in enumerate(r["responses"]) if text.strip()]
        picked = rso_accept([r["rewards"][i] for i in ok], 1.0, 4, prompt_rng(7, index))
        assert r["accepted"] == [ok[k] for k in picked]
        accepted, eligible = accepted + len(picked), eligible + len(ok)
        rates.append(len(picked) / len(ok))
        for a, b in zip(r["accepted"][0::2], r["accepted"][1::2]):  # first_round, worked out here
            (ra, ta), (rb, tb) = (r["rewards"][a], r["responses"][a]), (r["rewards"][b], r["responses"][b])
            if ra == rb or ta == tb:
                ties += 1
            else:
                expected.append((r["messages"], *((ta, tb) if ra > rb else (tb, ta))))
    pairs = read_jsonl(out / "pairs.jsonl")
    assert [(p["prompt"], p["chosen"][0]["content"], p["rejected"][0]["content"]) for p in pairs] == expected
    for p in pairs:
        assert p["chosen_reward"] == count_e(None, p["chosen"][0]["content"], None)
        assert p["rejected_reward"] == count_e(None, p["rejected"][0]["content"], None) < p["chosen_reward"]
    report = json.loads((out / "report.json").read_text())
    assert report["acceptance_rate"] == pytest.approx(accepted / eligible)
    assert report["acceptance_rate_prompt_mean"] == pytest.approx(sum(rates) / len(rates))
    assert report["pairs"] == len(pairs) > 0 and report["ties_dropped"] == ties
    assert report["candidates"] == 24 and report["blank"] == 24 - eligible
    assert report["train"]["steps"] == 2 and (out / "train" / "final" / "config.json").exists()
    assert json.loads((out / "train" / "data_report.json").read_text())["train_examples"] == len(pairs)
    assert "accepted" in stdout and "saved to" in stdout
    # A finished run is not redone by accident: one line, before anything is sampled.
    assert main(["rso", *run_args(model_dir, prompts, out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "if_exists" in err, err


def test_slic_trains_on_all_pairs_and_the_heldout_prompts_are_measured_before_and_after(tmp_path, model_dir):
    """Also: with sampling.cache the candidates go through the SQLite cache a rerun replays."""
    prompts = write_prompts(tmp_path / "prompts.jsonl")
    heldout = write_jsonl(tmp_path / "heldout.jsonl", [{"messages": [{"role": "user", "content": q}]}
                                                       for q in ("say a word", "name a number")])
    out = tmp_path / "run"
    cfg = load_config(RSOConfig, None, run_args(model_dir, prompts, out, **{
        "pref.loss": "slic", "pref.slic_delta": 1.0, "pref.slic_reg_weight": 0.0, "pairing": "all_pairs",
        "heldout": f"[{heldout}]", "sampling.cache": str(tmp_path / "cache.sqlite")}))
    report = run_rso(cfg)
    with sqlite3.connect(tmp_path / "cache.sqlite") as db:
        assert db.execute("SELECT count(*) FROM completions").fetchone()[0] >= 4  # one entry per prompt
    assert yaml.safe_load((out / "train" / "config.yaml").read_text())["loss"] == "slic"
    assert report["train"]["steps"] == 2 and math.isfinite(report["train"]["final"]["loss"])
    games = sum(len(r["accepted"]) * (len(r["accepted"]) - 1) // 2 for r in read_jsonl(out / "candidates.jsonl"))
    assert report["pairs"] + report["ties_dropped"] == games > 0
    for when in ("before", "after"):
        assert report["heldout"][when]["prompts"] == 2 and math.isfinite(report["heldout"][when]["reward_mean"])


@pytest.mark.parametrize("override,key", [
    ("num_accept=1", "num_accept"),
    ("num_accept=7", "num_accept"),  # more than sampling.n
    ("sampling.n=1", "sampling.n"),
    ("beta_rso=0", "beta_rso"),
    ("pairing=random", "pairing"),
    ("pref.loss=kto", "pref.loss"),
    ("pref.loss=slic", "slic_delta"),
    ("pref.beta=-1", "pref.beta"),
    ("pref.train.output_dir=elsewhere", "pref.train.output_dir"),
    ("prompts=[]", "prompts"),
    (f"rewards=[{{kind: python, function: '{HERE}missing'}}]", "rewards[0].function"),
])
def test_a_bad_value_is_one_line_naming_the_key_before_the_model_loads(tmp_path, model_dir, capsys, override, key):
    prompts = write_prompts(tmp_path / "prompts.jsonl")
    out = tmp_path / "run"
    name = override.split("=", 1)[0]
    args = [a for a in run_args(model_dir, prompts, out) if a.split("=", 1)[0] != name]
    assert main(["rso", *args, override]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and key in err, err
    assert not out.exists()  # nothing was prepared, let alone loaded


def test_the_demo_config_loads_and_its_prompts_carry_their_format(monkeypatch):
    monkeypatch.chdir(CONFIGS.parent)
    # The demo's reward model is trained by configs/rm.yaml; its folder need not exist for this check.
    monkeypatch.setattr("alignkit.models.reward.is_reward_checkpoint", lambda path: True)
    cfg = load_config(RSOConfig, str(CONFIGS / "rso.yaml"))
    assert cfg.model.name == "runs/demo/sft/final" and cfg.sampling.max_tokens == 48
    assert [(r.kind, r.path) for r in cfg.rewards] == [("rm", "runs/rm/final"), ("format", "")]
    assert cfg.pref.loss == "dpo" and cfg.num_accept <= cfg.sampling.n
    for specs in (cfg.prompts, cfg.heldout):
        prompts = read_prompt_records(specs)
        assert prompts and all(p.metadata["format"] and p.messages[-1]["role"] == "user" for p in prompts)
