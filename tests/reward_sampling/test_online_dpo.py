"""Online DPO: pairs by rule with the chosen always the higher reward (failures and ties never paired), the
micro-batches hold exactly those pairs with the frozen starting model's reference log-probs (DPO rewards 0
at step 1), each step samples from the policy after the updates before it, tied steps draw more prompts or
stop clearly, an interrupted run resumes exactly, the command writes its files, and bad config is one line."""
from __future__ import annotations

import copy
import json
import os

import pytest
import torch

from alignkit.cli import main
from alignkit.config import ConfigError, load_config
from alignkit.data.pref_examples import tokenize_response
from alignkit.generation.local import LocalBackend, generate_texts
from alignkit.models.tiny import tiny_model, tiny_tokenizer
from alignkit.reward_sampling.candidates import (
    PromptSamples,
    SamplingConfig,
    ScoredSample,
)
from alignkit.reward_sampling.online_dpo import (
    OnlineDPOConfig,
    OnlinePairwiseObjective,
    run_online_dpo,
)
from alignkit.reward_sampling.online_pairs import OnlinePairSource, prompt_pairs
from alignkit.rewards.verifiable import FunctionReward
from alignkit.data.prompts import PromptRecord, read_prompt_records
from alignkit.rl.rollout import derived_seed
from alignkit.training.loop import train
from alignkit.training.preference import PrefLossConfig, collate_examples
from alignkit.training.reference import (
    LiveReference,
    compute_precision,
    reference_mode,
    sequence_logps,
)
from tests.helpers.crash import Crash, crash_at
from tests.helpers.paths import CONFIGS
from tests.helpers.rl_runs import read_jsonl, write_prompts
from tests.helpers.training import WORDS
from tests.helpers.training import cfg as train_cfg

HERE = "tests.reward_sampling.test_online_dpo:"
PROMPTS = [PromptRecord([{"role": "user", "content": " ".join(WORDS[:n])}], {"source": f"words:{n}"})
           for n in (1, 6, 2, 9, 3, 5)]
SEED = 3


def count_e(prompt, completion, metadata):
    """Prefers a known letter: the more 'e's the better."""
    return float(completion.count("e"))


def length_unless_tie(prompt, completion, metadata):
    """1.0 for every sample of a prompt marked `tie`; else the completion's length (rarely tied)."""
    return 1.0 if metadata.get("tie") else float(len(completion))


def make_source(tok, function=count_e, prompts=PROMPTS, **kw):
    sampling = SamplingConfig(n=4, max_tokens=8, temperature=1.0, seed=SEED)
    options = {"prompts_per_step": 3, "grad_accum": 2, **kw}
    return OnlinePairSource(prompts, tok, FunctionReward("python", function=function), sampling, collate_examples,
                            **options)


def sequences(batch):
    """The input ids of each packed sequence of a micro-batch, in order."""
    ids = batch["input_ids"][0].tolist()
    out, start = [], 0
    for length in batch["seq_lens"]:
        out.append(ids[start:start + length])
        start += length
    return out


def sample(text, reward, failure=None):
    return ScoredSample(text, reward, failure)


def texts(pairs):
    return sorted((p.chosen.text, p.rejected.text) for p in pairs)


def test_pairs_follow_the_rule_with_the_higher_reward_chosen_and_never_a_failure():
    prompt = PromptRecord([{"role": "user", "content": "q"}])
    # "c" failed: its stand-in reward (the reward's failure_reward) is the highest, yet it is never paired.
    item = PromptSamples(prompt, [sample("a", 1), sample("b", 3), sample("c", 5, "no verdict"), sample("d", 0),
                                  sample("e", 3)])
    assert texts(prompt_pairs(item, "best_vs_worst")) == [("b", "d"), ("e", "d")]
    everything = prompt_pairs(item, "all_pairs")
    assert texts(everything) == [("a", "d"), ("b", "a"), ("b", "d"), ("e", "a"), ("e", "d")]
    assert all(p.chosen.reward > p.rejected.reward and p.margin == p.chosen.reward - p.rejected.reward
               for p in everything)
    assert all(p.pair.chosen[0]["content"] == p.chosen.text and p.pair.rejected[0]["content"] == p.rejected.text
               for p in everything)
    assert texts(prompt_pairs(item, "margin", 1.5)) == [("b", "a"), ("b", "d"), ("e", "a"), ("e", "d")]
    assert texts(prompt_pairs(item, "best_vs_rest")) == [("b", "a"), ("b", "d"), ("e", "a"), ("e", "d")]
    # Ties, the same text scored twice, and a single scored sample give no pair.
    assert prompt_pairs(PromptSamples(prompt, [sample("a", 1), sample("b", 1)]), "all_pairs") == []
    assert prompt_pairs(PromptSamples(prompt, [sample("x", 2), sample("x", 1)]), "all_pairs") == []
    assert prompt_pairs(PromptSamples(prompt, [sample("a", 0, "failed"), sample("b", 1)]), "all_pairs") == []


def test_the_micro_batches_hold_the_pairs_with_the_higher_reward_chosen():
    tok = tiny_tokenizer("chatml")
    model = tiny_model(tok)
    source = make_source(tok)
    seen = sampled = 0
    for step in range(3):
        micro = source.next_step(step, model)
        pairs = source.last_pairs
        assert pairs and len(micro) == min(2, len(pairs)) and all(b["num_units"] >= 1 for b in micro)
        assert sum(b["num_units"] for b in micro) == len(pairs) == source.last_stats["pairs"]
        expected = []
        for p in pairs:
            # the reward recomputed from the texts: the chosen has more 'e's
            assert count_e(None, p.chosen.text, {}) > count_e(None, p.rejected.text, {})
            item = next(i for i in source.last_samples if any(s is p.chosen for s in i.samples))
            rewards = [s.reward for s in item.samples]
            assert p.chosen.reward == max(rewards) and p.rejected.reward == min(rewards)  # best_vs_worst
            for text in (p.chosen.text, p.rejected.text):
                expected.append(tokenize_response(tok, p.prompt.messages, [{"role": "assistant", "content": text}])[0])
        assert [ids for b in micro for ids in sequences(b)] == expected
        margins = [p.margin for p in pairs]
        assert source.last_stats["pair_reward_margin"] == pytest.approx(sum(margins) / len(margins))
        seen += len(pairs)
        sampled += source.last_stats["prompts_sampled"]
    assert source.stream.position == sampled >= 9 and seen > 3


class Recording:
    """A source that keeps every step's micro-batches."""

    def __init__(self, source):
        self.source, self.steps = source, []

    def next_step(self, step, model):
        self.steps.append(self.source.next_step(step, model))
        return self.steps[-1]

    def __getattr__(self, name):
        return getattr(self.source, name)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_reference_logprobs_are_the_frozen_starting_models(tmp_path, precision):
    tok = tiny_tokenizer("chatml")
    model = tiny_model(tok)
    source = Recording(make_source(tok, reference=LiveReference(model, precision)))
    objective = OnlinePairwiseObjective(PrefLossConfig(loss="dpo", beta=0.5), lambda: source.last_stats)
    result = train(model, objective, source=source, cfg=train_cfg(tmp_path, max_steps=3, lr=5e-2, warmup_steps=0,
                                                                  precision=precision))
    first = result.history[0]
    assert first["chosen_reward"] == pytest.approx(0.0, abs=1e-6)  # the policy starts as the reference
    assert first["rejected_reward"] == pytest.approx(0.0, abs=1e-6)
    assert abs(result.history[-1]["reward_margin"]) > 1e-3  # the policy moved, the reference did not
    starting = tiny_model(tok)  # the same seed: the starting weights
    for micro in source.steps:
        for batch in micro:
            with reference_mode(starting), compute_precision(starting, precision):
                expected = sequence_logps(starting, batch)[0].float()
            assert torch.allclose(batch["reference"], expected, atol=1e-6, rtol=0)
    for key in ("reward_mean", "pair_reward_margin", "pairs", "tied_prompts", "gen_seconds", "accuracy"):
        assert key in result.history[-1], key


def test_each_step_samples_from_the_policy_after_the_updates_before_it(tmp_path):
    tok = tiny_tokenizer("chatml")
    model = tiny_model(tok)
    source = make_source(tok, reference=LiveReference(model), grad_accum=1)
    weights, drawn = [copy.deepcopy(model.state_dict())], []

    def on_step(step, record):
        weights.append(copy.deepcopy(model.state_dict()))
        drawn.append(source.last_samples[:3])  # the first draw of the step

    objective = OnlinePairwiseObjective(PrefLossConfig(loss="dpo", beta=0.5), lambda: source.last_stats)
    train(model, objective, source=source, cfg=train_cfg(tmp_path, max_steps=3, lr=5e-2, warmup_steps=0),
          on_step=on_step)
    changed = 0
    for t, items in enumerate(drawn):  # step t + 1 sampled from the weights after t updates
        params = source.sampling.params(seed=derived_seed(SEED, t, 0))
        messages = [item.prompt.messages for item in items]
        policy = tiny_model(tok)
        policy.load_state_dict(weights[t])
        again = generate_texts(LocalBackend(policy, tok, batch_size=16), messages, params, progress=False)
        got = [[s.text for s in item.samples] for item in items]
        assert [[c.text for c in outs] for outs in again] == got, t
        start = generate_texts(LocalBackend(tiny_model(tok), tok, batch_size=16), messages, params, progress=False)
        changed += [[c.text for c in outs] for outs in start] != got
    assert changed >= 1  # the updates changed the samples, so the check above could have failed


def test_tied_prompts_give_no_pair_and_more_prompts_are_drawn_then_a_clear_error():
    tok = tiny_tokenizer("chatml")
    model = tiny_model(tok)
    prompts = [PromptRecord(p.messages, {"tie": i < 2}) for i, p in enumerate(PROMPTS[:4])]
    source = make_source(tok, length_unless_tie, prompts, prompts_per_step=2, shuffle_prompts=False)
    source.next_step(0, model)
    stats = source.last_stats
    assert stats["resamples"] == 1 and stats["prompts_sampled"] == 4 and stats["tied_prompts"] == 2
    assert all(not p.prompt.metadata["tie"] for p in source.last_pairs) and source.last_pairs

    always_tied = make_source(tok, lambda prompt, completion, metadata: 1.0, max_resamples=2)
    with pytest.raises(ValueError, match="no preference pair in 3 draw"):
        always_tied.next_step(0, model)
    assert always_tied.stream.position == 3 * 3


def run_args(model_dir, prompts, out, **extra):
    args = {"model.name": model_dir, "prompts": f"[{prompts}]",
            "rewards": f'[{{kind: python, function: "{HERE}count_e"}}]',
            "sampling.n": 4, "sampling.max_tokens": 8, "sampling.seed": 5, "prompts_per_step": 3, "grad_accum": 2,
            "train.output_dir": str(out), "train.max_steps": 3, "train.precision": "fp32", "train.lr": 1e-2,
            "train.progress": "false", "train.seed": 1, "log_pairs": 2}
    args.update(extra)
    return [f"{k}={v}" for k, v in args.items()]


def test_a_crashed_run_resumes_with_the_same_pairs_and_losses(tmp_path, model_dir):
    prompts = write_prompts(tmp_path / "prompts.jsonl")
    config = lambda out: load_config(OnlineDPOConfig, None, run_args(model_dir, prompts, out, **{
        "train.max_steps": 5, "train.save_every": 2}))
    full = run_online_dpo(config(tmp_path / "full"))
    out = tmp_path / "resumed"
    with pytest.raises(Crash):
        run_online_dpo(config(out), on_step=crash_at(3))
    resumed = run_online_dpo(config(out))
    assert [r["step"] for r in resumed.history] == [3, 4, 5]
    for r in resumed.history:
        expected = full.history[r["step"] - 1]
        for key in ("loss", "reward_mean", "pairs", "pair_reward_margin", "accuracy", "reward_margin", "epoch"):
            assert r[key] == pytest.approx(expected[key], rel=1e-6, abs=1e-7), (key, r["step"])
    assert len({round(r["loss"], 6) for r in full.history}) > 2
    # step 3's pairs were logged before the crash, and once only after the resume
    assert read_jsonl(out / "pairs.jsonl") == read_jsonl(tmp_path / "full" / "pairs.jsonl")


def test_the_command_runs_and_writes_its_files(tmp_path, model_dir, capsys):
    prompts = write_prompts(tmp_path / "prompts.jsonl")
    heldout = write_prompts(tmp_path / "heldout.jsonl")
    out = tmp_path / "run"
    assert main(["online-dpo", *run_args(model_dir, prompts, out, heldout=f"[{heldout}]")]) == 0
    printed = capsys.readouterr().out
    assert "saved to" in printed and "held-out (8 prompts)" in printed
    metrics = [r for r in read_jsonl(out / "metrics.jsonl") if "loss" in r]
    assert [r["step"] for r in metrics] == [1, 2, 3]
    for r in metrics:
        for key in ("reward_mean", "reward/python", "pair_reward_margin", "pairs", "tied_prompts", "failed_samples",
                    "gen_seconds", "chosen_reward", "rejected_reward", "reward_margin", "accuracy"):
            assert key in r, key
        assert r["pairs"] == r["units"] >= 1 and r["pair_reward_margin"] > 0
    pairs = read_jsonl(out / "pairs.jsonl")
    steps = [p["step"] for p in pairs]
    assert steps == sorted(steps) and set(steps) == {1, 2, 3} and all(steps.count(s) <= 2 for s in steps)
    assert all(p["chosen_reward"] == count_e(None, p["chosen"], {}) > count_e(None, p["rejected"], {}) == p[
        "rejected_reward"] for p in pairs)
    report = json.loads((out / "heldout.json").read_text())
    assert report["before"]["prompts"] == report["after"]["prompts"] == 8
    assert set(report["before"]["components"]) == {"python"}
    assert os.path.isfile(out / "final" / "config.json")
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 3 and summary["final"]["pairs"] == metrics[-1]["pairs"]


@pytest.mark.parametrize("override,key", [
    ("sampling.n=1", "sampling.n"),
    ("loss=rrhf", "loss"),
    ("loss=slic", "slic_delta"),
    ("reference=precomputed", "reference"),
    ("reference_cache=/tmp/refs", "reference_cache"),
    ("sampling.cache=samples.sqlite", "sampling.cache"),
    ("train.grad_accum=2", "train.grad_accum"),
    ("grad_accum=0", "grad_accum"),
    ("prompts_per_step=0", "prompts_per_step"),
    ("pair_rule=best", "pair_rule"),
    ("pair_threshold=0.5", "pair_threshold"),
    ("rewards=[]", "rewards"),
    (f"rewards=[{{kind: python, function: '{HERE}missing'}}]", "rewards[0].function"),
])
def test_a_bad_value_is_a_one_line_error_naming_the_key(tmp_path, override, key):
    args = [a for a in run_args("tiny", "prompts.jsonl", tmp_path / "run") if not a.startswith("prompts=")]
    with pytest.raises(ConfigError) as error:
        load_config(OnlineDPOConfig, None, [*args, "prompts=[prompts.jsonl]", override])
    assert len(str(error.value).splitlines()) == 1 and key in str(error.value), error.value


def test_the_command_stops_on_bad_config_before_preparing_anything(tmp_path, model_dir, capsys):
    prompts = write_prompts(tmp_path / "prompts.jsonl")
    out = tmp_path / "run"
    assert main(["online-dpo", *run_args(model_dir, prompts, out), "sampling.n=1"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "sampling.n" in err, err
    assert not out.exists()  # nothing was prepared, let alone loaded


def test_the_demo_config_loads_and_ranks_the_demo_prompts_by_their_format(monkeypatch):
    monkeypatch.chdir(CONFIGS.parent)
    cfg = load_config(OnlineDPOConfig, str(CONFIGS / "online_dpo.yaml"))
    assert cfg.loss == "dpo" and cfg.rewards[0].kind == "format" and cfg.sampling.n == 4
    assert cfg.sampling.max_tokens == 48 and cfg.model.name == "runs/demo/sft/final"
    for specs in (cfg.prompts, cfg.heldout):
        prompts = read_prompt_records(specs)
        assert prompts and all(p.metadata["format"] and p.messages[-1]["role"] == "user" for p in prompts)
