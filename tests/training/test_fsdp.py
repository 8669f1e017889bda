"""Fully sharded data parallelism (train.parallel=fsdp, torch's FSDP2): two processes under torchrun with half
the batch each train as one process with the whole batch (losses, gradient norms, evaluation, the final model),
resume exactly from their checkpoints (in any process count), and leave a normal Hugging Face final/."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from alignkit.cli import main
from alignkit.config import ConfigError
from alignkit.models.lora import LoraConfig, apply_lora
from alignkit.models.reward import RewardModel
from alignkit.models.tiny import tiny_model, tiny_tokenizer
from alignkit.training import fsdp
from alignkit.training.sft import SFTConfig
from tests.helpers.files import write_jsonl
from tests.helpers.paths import ROOT
from tests.training import fsdp_worker
from tests.training.test_distributed import (assert_clean_exit, free_port, metrics, needs_torchrun, pair_rows,
                                             run_config, sft_rows, torchrun)

FSDP = ("train.parallel=fsdp",)


def assert_same_steps(got: list[dict], expected: list[dict], *, rel: float = 1e-5) -> None:
    """Training records step by step: the same units, losses and gradient norms (the norm of the whole model
    computed over shards); evaluation records the same losses."""
    assert [r["step"] for r in got] == [r["step"] for r in expected]
    for a, b in zip(got, expected, strict=True):
        assert a.keys() == b.keys()
        if "loss" in a:
            assert a["units"] == b["units"]
            assert a["loss"] == pytest.approx(b["loss"], rel=rel)
            assert a["grad_norm"] == pytest.approx(b["grad_norm"], rel=10 * rel)
        else:
            assert a["eval_loss"] == pytest.approx(b["eval_loss"], rel=rel)


def assert_same_final_model(parallel: Path, single: Path) -> None:
    """final/ is a complete Hugging Face folder (not a shard) that loads and computes what one process's does."""
    a, b = (load_file(str(run / "final" / "model.safetensors")) for run in (parallel, single))
    assert a.keys() == b.keys()
    for name in a:  # Adam magnifies float rounding in near-zero gradients; a wrong update moves weights ~lr
        assert a[name].shape == b[name].shape, name
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=5e-5, msg=name)
    ids = torch.tensor([[3, 17, 42, 99, 5, 250, 7]])
    with torch.no_grad():
        logits = [AutoModelForCausalLM.from_pretrained(str(run / "final")).eval()(ids).logits for run in (parallel, single)]
    torch.testing.assert_close(logits[0], logits[1], rtol=0, atol=1e-4)


@needs_torchrun
def test_sft_under_fsdp_equals_one_process_and_resumes_exactly(tmp_path, model_dir):
    data = write_jsonl(tmp_path / "train.jsonl", sft_rows(17))
    # 12 training examples (micro-batches of 2 per process, 2 per step: reduced once per step) and 5 held out,
    # which two processes cannot split evenly.
    common = ("train.max_steps=4", "train.grad_accum=2", "data.eval_fraction=0.3", "train.eval_every=2",
              "train.save_every=2", "train.save_total_limit=0")
    proc = torchrun("-m", "alignkit", "sft", "--config", run_config(tmp_path, "fsdp", model_dir, data, 2), *FSDP, *common)
    assert_clean_exit(proc)
    assert proc.stdout.count("saved to") == 1, proc.stdout
    assert main(["sft", "--config", run_config(tmp_path, "single", model_dir, data, 4), *common]) == 0
    fsdp_run, single_run = tmp_path / "fsdp", tmp_path / "single"
    assert_same_steps(metrics(fsdp_run), metrics(single_run))
    assert_same_final_model(fsdp_run, single_run)

    # The checkpoint holds whole tensors, in the files and names one process writes.
    checkpoint = fsdp_run / "checkpoints" / "step-0000002"
    single_checkpoint = single_run / "checkpoints" / "step-0000002"
    assert sorted(p.name for p in checkpoint.iterdir()) == sorted(p.name for p in single_checkpoint.iterdir())
    weights, single_weights = (load_file(str(c / "trainable.safetensors")) for c in (checkpoint, single_checkpoint))
    assert {k: v.shape for k, v in weights.items()} == {k: v.shape for k, v in single_weights.items()}
    optimizer = torch.load(checkpoint / "optimizer.pt", weights_only=False)
    single_optimizer = torch.load(single_checkpoint / "optimizer.pt", weights_only=False)
    assert optimizer["param_groups"] == single_optimizer["param_groups"]
    for index, state in single_optimizer["state"].items():
        for key, value in state.items():
            torch.testing.assert_close(optimizer["state"][index][key], value, rtol=1e-4, atol=1e-6)

    # Stopped at step 2 and resumed from that checkpoint: steps 3 and 4 as in the run that went on, under
    # FSDP, and in one process from the FSDP checkpoint.
    resume = (f"train.resume={checkpoint}",)
    proc = torchrun("-m", "alignkit", "sft", "--config", run_config(tmp_path, "resumed", model_dir, data, 2), *FSDP,
                    *common, *resume)
    assert_clean_exit(proc)
    assert_same_steps(metrics(tmp_path / "resumed"), metrics(fsdp_run)[-3:], rel=1e-6)  # steps 3, 4, eval at 4
    assert main(["sft", "--config", run_config(tmp_path, "resumed_single", model_dir, data, 4), *common, *resume]) == 0
    assert_same_steps(metrics(tmp_path / "resumed_single"), metrics(single_run)[-3:])


@needs_torchrun
def test_dpo_under_fsdp_equals_one_process(tmp_path, model_dir):
    data = write_jsonl(tmp_path / "pairs.jsonl", pair_rows())
    proc = torchrun("-m", "alignkit", "dpo", "--config", run_config(tmp_path, "fsdp", model_dir, data, 2), *FSDP,
                    f"reference_cache={tmp_path / 'refcache'}")
    assert_clean_exit(proc)
    assert proc.stdout.count("saved to") == 1, proc.stdout
    assert main(["dpo", "--config", run_config(tmp_path, "single", model_dir, data, 4),
                 f"reference_cache={tmp_path / 'refcache-single'}"]) == 0
    assert_same_steps(metrics(tmp_path / "fsdp"), metrics(tmp_path / "single"))
    assert_same_final_model(tmp_path / "fsdp", tmp_path / "single")


ACCELERATE = shutil.which("accelerate", path=os.path.dirname(sys.executable))


@needs_torchrun
@pytest.mark.skipif(ACCELERATE is None, reason="needs accelerate's launcher")
def test_reward_model_under_accelerate_launch_with_fsdp_equals_one_process(tmp_path, model_dir):
    """`accelerate launch` (it sets the same environment torchrun does) runs a reward model with FSDP2. Its
    `--multi_gpu` is what starts one process per rank, on CPUs too: with `--cpu` (or neither) and
    `--num_processes 2` it starts a single process."""
    data = write_jsonl(tmp_path / "pairs.jsonl", pair_rows())
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
           "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run([ACCELERATE, "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
                           "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port",
                           str(free_port()), "-m", "alignkit", "rm", "--config",
                           run_config(tmp_path, "fsdp", model_dir, data, 2), *FSDP],
                          capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)
    assert_clean_exit(proc)
    assert proc.stdout.count("saved to") == 1, proc.stdout
    assert main(["rm", "--config", run_config(tmp_path, "single", model_dir, data, 4)]) == 0
    assert_same_steps(metrics(tmp_path / "fsdp"), metrics(tmp_path / "single"))


@pytest.fixture(scope="module")
def worker_results(tmp_path_factory):
    """fsdp_worker.py's runs under torchrun with two processes, once for the tests below."""
    out = tmp_path_factory.mktemp("fsdp_worker")
    proc = torchrun(str(ROOT / "tests" / "training" / "fsdp_worker.py"), str(out))
    assert_clean_exit(proc)
    return [json.loads((out / f"result-{rank}.json").read_text()) for rank in (0, 1)]


@needs_torchrun
def test_fsdp_ends_its_process_group_threads(worker_results):
    assert all(r["gloo_threads"]["before_teardown"] for r in worker_results)  # the check below can see them
    assert [r["gloo_threads"]["after_teardown"] for r in worker_results] == [[], []]


@needs_torchrun
@pytest.mark.parametrize("run", ["lora_live_dpo", "checkpointed_chunked_sft"])
def test_api_runs_under_fsdp_equal_one_process(worker_results, tmp_path, run):
    """LoRA (the base frozen and sharded, the adapter trained; the policy with its adapter off as the live
    reference; an eval set split unevenly), and activation checkpointing with the chunked output layer."""
    single = getattr(fsdp_worker, run)(str(tmp_path), 4)
    for rank in worker_results:  # every process logs the all-reduced numbers and gets the whole model back
        got = rank[run]
        assert_same_steps(got["history"] + got["eval"], single["history"] + single["eval"])
        assert got["trainable"] == pytest.approx(single["trainable"], rel=1e-5)
        assert got["frozen"] == pytest.approx(single["frozen"], rel=1e-12)


@needs_torchrun
def test_bf16_under_fsdp_tracks_one_process_with_master_weights(worker_results, tmp_path):
    # bf16 compute over fp32 shards (FSDP's mixed precision) against bf16 weights with fp32 masters: bf16
    # rounding apart, the same training.
    single = fsdp_worker.bf16_sft(str(tmp_path), 4)
    got = worker_results[0]["bf16_sft"]
    for a, b in zip(got["history"], single["history"], strict=True):
        assert a["units"] == b["units"]
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-4)
        assert a["grad_norm"] == pytest.approx(b["grad_norm"], rel=2e-3)
    assert got["trainable"] == pytest.approx(single["trainable"], rel=1e-3)


@needs_torchrun
def test_a_source_that_samples_with_the_policy_runs_under_fsdp(worker_results):
    # Each rank samples a different number of tokens (so of forwards) with the sharded policy, and trains on
    # them; its first samples are those of the unsharded model.
    tok = tiny_tokenizer()
    model = tiny_model(tok)
    for rank, result in enumerate(worker_results):
        sampled = result["sampling"]["sampled"]
        assert result["sampling"]["steps"] == 2 and len(sampled) == 2
        prompts = fsdp_worker.PROMPTS[3 * rank:3 * rank + 3]
        assert sampled[0] == fsdp_worker.sample(model, tok, prompts, 3 + 4 * rank)
        assert all(len(ids) == 3 + 4 * rank for ids in sampled[1])
        # Outside the loop, a sharded model samples (under inference mode) gathering a block per forward, and
        # then trains: its gathered weights were not made inference tensors by the first sampling.
        assert result["layer_by_layer_sampling"]["sampled"] == fsdp_worker.sample(model, tok, fsdp_worker.PROMPTS[:2], 5)
        assert result["layer_by_layer_sampling"]["loss"] > 0


# ---- without a launcher

def test_evaluation_runs_as_many_forwards_on_every_process(monkeypatch, tmp_path):
    """Under FSDP every forward is collective: a process whose share of the held-out examples is shorter runs
    its first batch again, and leaves it out of the numbers."""
    from alignkit.training import loop

    tok = tiny_tokenizer()
    examples = fsdp_worker.make_examples(tok, 5)
    objective = fsdp_worker.SFTObjective()
    calls, counted = {}, {}
    for rank in (0, 1):
        monkeypatch.setattr(loop, "rank_world", lambda rank=rank: (rank, 2))
        monkeypatch.setattr(loop, "all_sum", lambda x: x)
        seen = []
        monkeypatch.setattr(objective, "collate", lambda batch, seen=seen: (seen.append(len(batch)),
                                                                           fsdp_worker.SFTObjective().collate(batch))[1])
        result = loop.evaluate(tiny_model(tok), objective, examples, fsdp_worker.cfg(tmp_path, batch_size=2))
        calls[rank], counted[rank] = seen, result
    assert calls == {0: [2, 1], 1: [2, 2]}  # examples 0-1 and 4 / 2-3 and 0-1 again
    monkeypatch.setattr(loop, "rank_world", lambda: (0, 1))
    single = loop.evaluate(tiny_model(tok), objective.__class__(), examples[2:4], fsdp_worker.cfg(tmp_path, batch_size=2))
    assert counted[1]["eval_loss"] == pytest.approx(single["eval_loss"], rel=1e-6)  # the repeat is not counted


def test_the_transformer_blocks_are_found_inside_any_wrapper():
    tok = tiny_tokenizer()
    model = tiny_model(tok, layers=3)
    layers = list(model.model.layers)
    assert fsdp.transformer_blocks(model) == layers
    assert fsdp.transformer_blocks(apply_lora(model, LoraConfig(enabled=True))) == layers
    reward = RewardModel.from_causal_lm(tiny_model(tok, layers=2), tok)
    assert [type(b).__name__ for b in fsdp.transformer_blocks(reward)] == ["LlamaDecoderLayer"] * 2

    class Plain(torch.nn.Module):  # no transformers model inside: the largest list of alike modules
        def __init__(self):
            super().__init__()
            self.blocks = torch.nn.ModuleList(torch.nn.Linear(8, 8) for _ in range(3))
            self.heads = torch.nn.ModuleList(torch.nn.Linear(8, 1) for _ in range(2))

    plain = Plain()
    assert fsdp.transformer_blocks(plain) == list(plain.blocks)
    plain.heads[0].weight = plain.blocks[0].weight  # tied to a weight outside it: left to the root's unit
    assert fsdp.transformer_blocks(plain) == list(plain.blocks)[1:]


def test_a_4bit_base_under_fsdp_is_refused_before_anything_loads(monkeypatch):
    cfg = SFTConfig()
    cfg.train.parallel = "fsdp"
    cfg.model.quantization, cfg.model.lora.enabled = "4bit", True
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ConfigError, match=r"^train.parallel=fsdp .*model.quantization=4bit.*train.parallel=ddp"):
        fsdp.check_supported(cfg)
    cfg.train.parallel = "ddp"
    fsdp.check_supported(cfg)
    monkeypatch.setenv("WORLD_SIZE", "1")  # one process: train.parallel does not apply
    cfg.train.parallel = "fsdp"
    fsdp.check_supported(cfg)
