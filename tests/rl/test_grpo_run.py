"""GRPO / RLOO / REINFORCE on the one loop: the objective's loss is policy_loss on the same numbers, the CLI
runs and writes its files, bad config fails fast, a learnable reward is learnt, and a crash resumes exactly."""
import json
import os

import pytest
import torch

from alignkit.cli import main
from alignkit.config import load_config
from alignkit.models.tiny import tiny_model, tiny_tokenizer
from alignkit.rl.logprobs import completion_logprobs
from alignkit.rl.losses import policy_loss
from alignkit.rl.objective import PolicyGradientObjective, PolicyLossConfig
from alignkit.rl.run import RLConfig, run_rl
from tests.helpers.crash import Crash, crash_at
from tests.helpers.rl_runs import hand_batch, learning_cfg, read_jsonl, run_args, write_prompts


def grads(model):
    return [p.grad.clone() for p in model.parameters() if p.grad is not None]


@pytest.mark.parametrize("aggregation,level,kl_coef", [("token", "token", 0.0), ("sequence", "token", 0.1),
                                                       ("dr_grpo", "sequence", 0.05)])
def test_objective_loss_and_gradient_equal_policy_loss_on_the_same_numbers(aggregation, level, kl_coef):
    tok = tiny_tokenizer("chatml")
    model = tiny_model(tok)
    batch = hand_batch(tok, model)
    if aggregation != "token":
        batch["num_units"] = len(batch["completion_lens"])
    cfg = PolicyLossConfig(aggregation=aggregation, level=level, kl_coef=kl_coef, eps_low=0.1, eps_high=0.3)
    objective = PolicyGradientObjective(cfg, temperature=0.7, max_completion_len=8)
    loss, metrics = objective.loss(model, batch)
    loss.backward()
    got = grads(model)
    model.zero_grad(set_to_none=True)

    expected = policy_loss(completion_logprobs(model, batch, 0.7), batch["old_logprobs"], batch["advantages"],
                           batch["seq_ids"], 4, aggregation=aggregation, level=level, eps_low=0.1, eps_high=0.3,
                           max_completion_len=8, ref_logp=batch["ref_logprobs"] if kl_coef else None,
                           kl_coef=kl_coef)
    expected.loss.backward()
    assert expected.units == batch["num_units"]
    assert float(loss.detach()) == pytest.approx(float(expected.loss.detach()), rel=1e-6)
    for a, b in zip(got, grads(model), strict=True):
        assert torch.allclose(a, b, atol=1e-7)
    assert metrics.keys() == expected.metrics.keys() | {"entropy"}  # every algorithm logs the entropy
    assert ("kl" in metrics) == bool(kl_coef)
    for key, value in expected.metrics.items():
        assert metrics[key] == pytest.approx(float(value), rel=1e-6)
    assert 0 < metrics["clip_frac"] < batch["num_units"]  # some units clipped, not all


def test_on_policy_gradient_is_the_reinforce_gradient():
    """With old = current log-probs (the first update of a rollout) the clipped loss's gradient is that of
    -sum A log p over tokens: an independent check of the whole path, not the same call twice."""
    tok = tiny_tokenizer("chatml")
    model = tiny_model(tok)
    batch = hand_batch(tok, model)
    with torch.no_grad():
        batch["old_logprobs"] = completion_logprobs(model, batch, 0.7)
    loss, _ = PolicyGradientObjective(PolicyLossConfig(), temperature=0.7).loss(model, batch)
    loss.backward()
    got = grads(model)
    model.zero_grad(set_to_none=True)
    adv = batch["advantages"][batch["seq_ids"]]
    (-(adv * completion_logprobs(model, batch, 0.7)).sum()).backward()
    for a, b in zip(got, grads(model), strict=True):
        assert torch.allclose(a, b, atol=1e-6)


def test_units_that_disagree_with_the_aggregation_are_refused():
    tok = tiny_tokenizer("chatml")
    model = tiny_model(tok)
    batch = hand_batch(tok, model)  # counts tokens
    with pytest.raises(ValueError, match="rollout.units"):
        PolicyGradientObjective(PolicyLossConfig(aggregation="sequence")).loss(model, batch)


def test_grpo_command_runs_and_writes_its_files(tmp_path, model_dir, capsys):
    prompts = write_prompts(tmp_path / "prompts.jsonl")
    out = tmp_path / "run"
    assert main(["grpo", *run_args(model_dir, prompts, out)]) == 0
    assert "saved to" in capsys.readouterr().out
    metrics = [r for r in read_jsonl(out / "metrics.jsonl") if "loss" in r]
    assert [r["step"] for r in metrics] == [1, 2, 3]
    for r in metrics:
        for key in ("reward_mean", "reward_std", "completion_len_mean", "truncated_rate", "gen_tokens_per_s",
                    "clip_frac", "reward_failures", "entropy", "update_tokens_per_s"):
            assert key in r, key
        # the update's speed leaves the sampling out, so it is above the step's overall speed
        assert r["update_tokens_per_s"] > r["tokens_per_s"] > 0
    assert len({r["reward_mean"] for r in metrics}) > 1  # a fresh rollout each step
    # every completion here runs to max_tokens: lengths are constant, so no reward-length correlation exists
    assert not any("reward_length_corr" in r for r in metrics)
    samples = read_jsonl(out / "samples.jsonl")
    assert [s["step"] for s in samples] == [1, 1, 2, 2, 3, 3]
    assert all(s["reward"] == float(len(s["completion"])) and "<|im_start|>user" in s["prompt"] for s in samples)
    assert os.path.isfile(out / "final" / "config.json")
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 3 and summary["final"]["reward_mean"] == metrics[-1]["reward_mean"]
    with open(out / "config.yaml") as f:
        assert "algo: grpo" in f.read()


@pytest.mark.parametrize("argv,key", [
    (["grpo", "rollout.group_size=0"], "rollout.group_size"),
    (["grpo", "eps_low=1.5"], "eps_low"),
    (["rloo", "scale=none"], "scale"),
    (["grpo", "kl_target=0.1"], "kl_target"),
    (["grpo", "rollout.units=sequences"], "rollout.units"),
    (["reinforce", "train.grad_accum=4"], "train.grad_accum"),
    (["rl", "algo=a2c"], "algo"),
    (["grpo", "algo=rloo"], "algo"),
    (["grpo", "rewards=[{kind: python, function: 'tests.helpers.rl_rewards:missing'}]"], "rewards[0].function"),
])
def test_a_bad_value_is_one_line_naming_the_key_before_the_model_loads(tmp_path, model_dir, capsys, argv, key):
    prompts = write_prompts(tmp_path / "prompts.jsonl")
    out = tmp_path / "run"
    base = [a for a in run_args(model_dir, prompts, out)
            if a.split("=", 1)[0] not in {x.split("=", 1)[0] for x in argv[1:]}]
    assert main([argv[0], *base, *argv[1:]]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and key in err, err
    assert not out.exists()  # nothing was prepared, let alone loaded


def test_grpo_raises_a_learnable_reward(tmp_path, model_dir):
    prompts = write_prompts(tmp_path / "prompts.jsonl")
    result = run_rl(learning_cfg(model_dir, prompts, tmp_path / "run", 24))
    rewards = [r["reward_mean"] for r in result.history]
    start, end = sum(rewards[:4]) / 4, sum(rewards[-4:]) / 4
    assert end > start + 0.25, rewards
    assert end > 0.8, rewards


def test_a_crashed_run_resumes_with_the_same_rewards_and_losses(tmp_path, model_dir):
    prompts = write_prompts(tmp_path / "prompts.jsonl")
    extra = {"train.save_every": 3, "rollout.ppo_epochs": 2, "rollout.max_tokens": 4, "kl_coef": 0.05,
             "kl_target": 0.01, "kl_horizon": 50, "samples_per_step": 2}
    full = run_rl(learning_cfg(model_dir, prompts, tmp_path / "full", 6, **extra))
    out = tmp_path / "resumed"
    with pytest.raises(Crash):
        run_rl(learning_cfg(model_dir, prompts, out, 6, **extra), on_step=crash_at(5))
    resumed = run_rl(learning_cfg(model_dir, prompts, out, 6, **extra))
    # the checkpoint after step 3 lies mid-buffer (two steps per rollout); step 5's samples were written twice
    assert [r["step"] for r in resumed.history] == [4, 5, 6]
    for r in resumed.history:
        expected = full.history[r["step"] - 1]
        for key in ("loss", "reward_mean", "reward_std", "kl", "kl_coef", "clip_frac"):
            assert r[key] == pytest.approx(expected[key], rel=1e-5, abs=1e-7), (key, r["step"])
    assert len({r["kl_coef"] for r in full.history}) > 1  # the adaptive coefficient moved and was restored
    steps = [s["step"] for s in read_jsonl(out / "samples.jsonl")]
    assert steps == [s["step"] for s in read_jsonl(tmp_path / "full" / "samples.jsonl")]


def group_by(samples):
    groups = {}
    for s in samples:
        groups.setdefault(s["group"], []).append(s)
    return list(groups.values())


@pytest.mark.parametrize("command", ["grpo", "rloo", "reinforce"])
def test_each_preset_computes_its_own_advantages(tmp_path, model_dir, command):
    prompts = write_prompts(tmp_path / "prompts.jsonl")
    out = tmp_path / "run"
    assert main([command, *run_args(model_dir, prompts, out, **{"train.max_steps": 1, "samples_per_step": 6})]) == 0
    samples = read_jsonl(out / "samples.jsonl")
    assert len(samples) == 6
    rewards = [s["reward"] for s in samples]
    assert len(set(rewards)) > 2
    for group in group_by(samples):
        r = torch.tensor([s["reward"] for s in group])
        if command == "grpo":
            expected = (r - r.mean()) / (r.std() + 1e-4)
        elif command == "rloo":
            expected = r - (r.sum() - r) / (len(r) - 1)
        else:
            expected = r - sum(rewards) / len(rewards)
        assert [s["advantage"] for s in group] == pytest.approx(expected.tolist(), abs=1e-5)


@pytest.mark.parametrize("lora", [True, False])
def test_kl_against_the_starting_policy_in_bf16(tmp_path, model_dir, lora):
    """The reference is the LoRA policy with its adapter off, or a frozen bf16 copy of the starting weights."""
    prompts = write_prompts(tmp_path / "prompts.jsonl")
    out = tmp_path / "run"
    argv = run_args(model_dir, prompts, out, **{"model.lora.enabled": str(lora).lower(), "model.lora.r": 4,
                                                 "kl_coef": 0.1, "train.lr": 5e-2, "train.precision": "bf16"})
    assert main(["rl", "algo=rloo", *argv]) == 0
    metrics = [r for r in read_jsonl(out / "metrics.jsonl") if "loss" in r]
    assert metrics[0]["kl"] == pytest.approx(0.0, abs=1e-6)  # the policy starts as the reference
    assert metrics[-1]["kl"] > 0 and metrics[-1]["kl_coef"] == 0.1
    assert os.path.isdir(out / "final" / "adapter") == lora


def test_the_demo_config_loads_and_its_prompts_carry_their_format(monkeypatch):
    from alignkit.rewards.formats import FORMATS
    from alignkit.data.prompts import read_prompt_records

    monkeypatch.chdir(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
    cfg = load_config(RLConfig, "configs/grpo.yaml")
    assert cfg.algo == "grpo" and cfg.rewards[0].kind == "format" and not cfg.rewards[0].format
    prompts = read_prompt_records(cfg.prompts)
    assert prompts and all(p.metadata["format"] in FORMATS for p in prompts)
    assert all(p.messages[-1]["role"] == "user" for p in prompts)  # the demo answer is left out of the prompt


def test_length_correlation_is_pearson_r_and_absent_when_undefined():
    from alignkit.rl.rollout import length_correlation

    rewards = torch.tensor([1.0, 3.0, 2.0, 5.0], dtype=torch.float64)
    lengths = torch.tensor([10.0, 12.0, 30.0, 31.0], dtype=torch.float64)
    dr, dl = rewards - rewards.mean(), lengths - lengths.mean()
    expected = float((dr * dl).sum() / (dr.square().sum() * dl.square().sum()).sqrt())
    assert length_correlation(rewards, lengths)["reward_length_corr"] == pytest.approx(expected)
    assert length_correlation(rewards, torch.full((4,), 7.0, dtype=torch.float64)) == {}
    assert length_correlation(torch.ones(4, dtype=torch.float64), lengths) == {}
    assert length_correlation(rewards[:1], lengths[:1]) == {}
