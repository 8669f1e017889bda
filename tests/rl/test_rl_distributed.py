"""Online RL under torchrun (train.parallel ddp and fsdp): each process samples its own share of every step's
prompts, and the run equals one process sampling them all. Sampling seeds do not depend on the rank (each
sample's derives from the step and its prompt's tokens), so two processes draw exactly the samples one
process draws for the same prompts: rewards, advantages (batch-level ones included), losses and gradient
norms are then compared with one process end to end, not only on fixed samples."""
import math
import os

import pytest
import torch

from alignkit.cli import main
from alignkit.config import ConfigError, load_config
from alignkit.rl import rollout as rollout_module
from alignkit.rl.reward_fn import merge_metrics
from alignkit.rl.rollout import RolloutConfig, RolloutSource
from alignkit.rl.run import RLConfig
from alignkit.models.tiny import tiny_model, tiny_tokenizer
from tests.helpers.rl_runs import read_jsonl, run_args, write_prompts
from tests.training.test_distributed import assert_clean_exit, needs_torchrun, torchrun

STEP_KEYS = ("reward_mean", "reward_std", "completion_len_mean", "truncated_rate", "samples", "units")


def records(run) -> list[dict]:
    return [r for r in read_jsonl(run / "metrics.jsonl") if "loss" in r]


def assert_like_one_process(parallel: list[dict], single: list[dict], *, rel: float = 1e-5) -> None:
    assert [r["step"] for r in parallel] == [r["step"] for r in single]
    for a, b in zip(parallel, single, strict=True):
        for key in STEP_KEYS:  # the same samples: statistics over them are the same numbers
            assert a[key] == b[key], (key, a["step"])
        assert ("reward_length_corr" in a) == ("reward_length_corr" in b)
        for key in ("loss", "kl", "kl_coef", "clip_frac", "entropy"):
            if key in b:
                assert a[key] == pytest.approx(b[key], rel=rel, abs=1e-7), (key, a["step"])
        assert a["grad_norm"] == pytest.approx(b["grad_norm"], rel=10 * rel), a["step"]


def assert_statistics_of_the_samples(run, expected_per_step: int, epochs: int = 1) -> list[dict]:
    """samples.jsonl holds every sample of every rank; the logged statistics are those of all of them, and
    the two ranks answered different prompts."""
    samples = read_jsonl(run / "samples.jsonl")
    logged = {r["step"]: r for r in records(run)}
    assert {s["step"] for s in samples} == set(list(logged)[::epochs])  # the steps that sampled
    for step, record in logged.items():
        rows = [s for s in samples if s["step"] == step]
        if not rows:
            continue
        assert len(rows) == expected_per_step and {s["rank"] for s in rows} == {0, 1}
        rewards = torch.tensor([s["reward"] for s in rows], dtype=torch.float64)
        lengths = torch.tensor([s["completion_tokens"] for s in rows], dtype=torch.float64)
        assert record["reward_mean"] == pytest.approx(float(rewards.mean()), rel=1e-12)
        assert record["reward_std"] == pytest.approx(float(rewards.std(unbiased=False)), rel=1e-12)
        assert record["completion_len_mean"] == pytest.approx(float(lengths.mean()), rel=1e-12)
        prompts = [{s["prompt"] for s in rows if s["rank"] == rank} for rank in (0, 1)]
        assert prompts[0] and prompts[1] and not prompts[0] & prompts[1]
        groups = [{s["group"] for s in rows if s["rank"] == rank} for rank in (0, 1)]
        assert not groups[0] & groups[1]  # a group never spans processes
    return samples


def sample_keys(samples: list[dict]) -> list[tuple]:
    return sorted((s["step"], s["group"], s["completion"], s["reward"]) for s in samples)


@needs_torchrun
def test_grpo_under_ddp_samples_and_trains_as_one_process(tmp_path, model_dir):
    prompts = write_prompts(tmp_path / "prompts.jsonl")
    # scale=batch divides by the std of the whole rollout's rewards: only right if computed over both ranks
    common = {"rollout.prompts_per_step": 4, "rollout.group_size": 2, "scale": "batch", "samples_per_step": 8}
    proc = torchrun("-m", "alignkit", "grpo", *run_args(model_dir, prompts, tmp_path / "ddp", **common))
    assert_clean_exit(proc)
    assert proc.stdout.count("saved to") == 1, proc.stdout
    assert main(["grpo", *run_args(model_dir, prompts, tmp_path / "single", **common)]) == 0

    parallel, single = records(tmp_path / "ddp"), records(tmp_path / "single")
    assert_like_one_process(parallel, single)
    samples = assert_statistics_of_the_samples(tmp_path / "ddp", 8)
    single_samples = read_jsonl(tmp_path / "single" / "samples.jsonl")
    assert sample_keys(samples) == sample_keys(single_samples)
    advantages = {(s["step"], s["group"], s["completion"]): s["advantage"] for s in single_samples}
    for s in samples:  # batch-normalised advantages: the whole rollout's std on each rank
        assert s["advantage"] == pytest.approx(advantages[(s["step"], s["group"], s["completion"])], rel=1e-6)
    assert os.path.isfile(tmp_path / "ddp" / "final" / "config.json")
    from transformers import AutoModelForCausalLM
    AutoModelForCausalLM.from_pretrained(str(tmp_path / "ddp" / "final"))  # final/ loads


@needs_torchrun
def test_reinforce_under_fsdp_equals_one_process_and_resumes_exactly(tmp_path, model_dir):
    prompts = write_prompts(tmp_path / "prompts.jsonl")
    # Two epochs per rollout (old log-probs recomputed, in the layout the loss then agrees on), the KL in the
    # reward with an adaptive coefficient (the rollout's KL over both ranks), REINFORCE's batch-mean baseline.
    common = {"rollout.prompts_per_step": 4, "rollout.group_size": 2, "rollout.ppo_epochs": 2,
              "kl_coef": 0.05, "kl_in": "reward", "kl_target": 0.01, "kl_horizon": 50, "train.max_steps": 4,
              "train.save_every": 2, "train.save_total_limit": 0, "samples_per_step": 8}
    fsdp = ("train.parallel=fsdp",)
    proc = torchrun("-m", "alignkit", "reinforce", *run_args(model_dir, prompts, tmp_path / "fsdp", **common), *fsdp)
    assert_clean_exit(proc)
    assert main(["reinforce", *run_args(model_dir, prompts, tmp_path / "single", **common)]) == 0
    parallel, single = records(tmp_path / "fsdp"), records(tmp_path / "single")
    assert_like_one_process(parallel, single)
    assert len({r["kl_coef"] for r in parallel}) > 1  # the adaptive coefficient moved, alike in both
    assert_statistics_of_the_samples(tmp_path / "fsdp", 8, epochs=2)

    # Resumed from the checkpoint after step 2 (a fresh rollout follows): steps 3 and 4 as in the run that went on.
    checkpoint = tmp_path / "fsdp" / "checkpoints" / "step-0000002"
    proc = torchrun("-m", "alignkit", "reinforce", *run_args(model_dir, prompts, tmp_path / "resumed", **common),
                    *fsdp, f"train.resume={checkpoint}")
    assert_clean_exit(proc)
    assert_like_one_process(records(tmp_path / "resumed"), parallel[2:], rel=1e-6)
    assert os.path.isfile(tmp_path / "fsdp" / "final" / "model.safetensors")


# ---- without a launcher

@pytest.mark.parametrize("override,key", [("rollout.prompts_per_step=3", "rollout.prompts_per_step"),
                                          ("reward_shaping.normalize=batch", "reward_shaping.normalize")])
def test_settings_one_process_only_are_refused_under_a_launcher(monkeypatch, tmp_path, override, key):
    monkeypatch.setenv("WORLD_SIZE", "2")
    args = [a for a in run_args("m", "p.jsonl", tmp_path / "run") if not a.startswith(override.split("=")[0])]
    with pytest.raises(ConfigError) as e:
        load_config(RLConfig, None, [*args, override])
    assert key in str(e.value) and len(str(e.value).splitlines()) == 1
    monkeypatch.setenv("WORLD_SIZE", "1")
    load_config(RLConfig, None, [*args, override])  # fine in one process


def test_processes_that_differ_on_shared_prompts_all_take_one_forward(monkeypatch):
    """Under FSDP every forward is collective: where one process would run a micro-batch with shared prompts
    (two forwards) and another packed (one), both run one."""
    tok = tiny_tokenizer("chatml")
    model = tiny_model(tok)
    source = RolloutSource([[{"role": "user", "content": "hi"}]], tok, lambda s: [0.0] * len(s),
                           RolloutConfig(prompts_per_step=1, group_size=4, max_tokens=3, grad_accum=2))
    source.next_step(0, model)  # fills the buffer
    source.used = 0
    batches = [source._micro_batch(chunk) for chunk in source.layout(0)[0]]
    local = [rollout_module.choose_layout(model, b, rollout_module.target_positions(b["targets"])) for b in batches]
    assert local == ["shared_prompt", "shared_prompt"]  # four samples of one prompt: shared is cheapest
    source.world = 2
    for other, expected in ((["packed", "shared_prompt"], ["packed", "shared_prompt"]),
                            (["shared_prompt", "shared_prompt"], ["shared_prompt", "shared_prompt"])):
        monkeypatch.setattr(rollout_module, "all_gather_objects", lambda mine, other=other: [mine, other])
        assert source._agreed_layouts(model, batches) == expected


def test_reward_metrics_merge_counts_and_weighted_means():
    parts = [(3, {"reward_failures": 1.0, "reward/fmt": 0.5, "reward_cut": 2.0}, {"reward_failures", "reward_cut"}),
             (1, {"reward_failures": 0.0, "reward/fmt": 1.0, "reward_cut": 1.0}, {"reward_failures", "reward_cut"})]
    merged = merge_metrics(parts)
    assert merged == {"reward_failures": 1.0, "reward/fmt": pytest.approx(0.625), "reward_cut": 3.0}
    assert math.isnan(merge_metrics([(0, {"reward": math.nan}, set())])["reward"])
