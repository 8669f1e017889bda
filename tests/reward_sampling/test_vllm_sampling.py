"""sampling.backend=vllm for the methods that sample with a reward, against the ChatFakeVLLM stand-in: one engine
per run, started from the model's weights; a method that trains what it samples from gives the engine the
trained weights before it samples again (expert iteration's rounds, online DPO's steps, RSO's held-out answers
after training), and at no other time; samples come from the engine; bad settings stop before any model loads."""
from __future__ import annotations

import json
import os
import sys

import pytest
import torch

from alignkit.cli import main
from alignkit.config import ConfigError, load_config
from alignkit.models.loading import load_model
from alignkit.models.tiny import tiny_model, tiny_tokenizer
from alignkit.reward_sampling.candidates import SamplingConfig
from alignkit.reward_sampling.online_dpo import OnlineDPOConfig, run_online_dpo
from alignkit.reward_sampling.online_pairs import OnlinePairSource
from alignkit.rewards.verifiable import FunctionReward
from alignkit.rl.vllm_rollout import policy_weights
from alignkit.training.preference import collate_examples
from tests.generation import vllm_chat_fake
from tests.helpers.files import read_jsonl, write_jsonl
from tests.helpers.rl_runs import write_prompts
from tests.reward_sampling.rounds_helpers import round_args
from tests.reward_sampling.test_online_dpo import PROMPTS, count_e
from tests.reward_sampling.test_online_dpo import run_args as online_args
from tests.reward_sampling.test_rso import run_args as rso_args

VLLM = {"sampling.backend": "vllm"}
LENGTH = "tests.helpers.rl_rewards:completion_length"


@pytest.fixture
def chat_vllm(monkeypatch):
    return vllm_chat_fake.install(monkeypatch)


def weights_of(model) -> dict:
    return {name: tensor.detach().clone() for name, tensor in policy_weights(model)}


def saved_weights(folder) -> dict:
    return weights_of(load_model(str(folder))[0])


def same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[name], b[name]) for name in a)


def distinct_in_order(weight_sets: list[dict]) -> list[dict]:
    """The weight sets with consecutive repeats folded: one entry per version the engine sampled with."""
    out = []
    for weights in weight_sets:
        if not out or not same(out[-1], weights):
            out.append(weights)
    return out


def engine_texts(engine, call) -> dict[str, list[str]]:
    """For one chat call of the stand-in: the last user message of each conversation -> the texts sampled."""
    _, conversations, fields, template = call
    tok = engine.tokenizer()
    out = {}
    for conversation in conversations:
        text = tok.apply_chat_template(conversation, chat_template=template, tokenize=False,
                                       add_generation_prompt=True)
        samples = engine._sampled(tok(text, add_special_tokens=False)["input_ids"], fields).outputs
        out[conversation[-1]["content"]] = [s.text for s in samples]
    return out


def test_expert_iteration_samples_each_round_with_the_weights_the_round_before_trained(tmp_path, model_dir,
                                                                                        chat_vllm):
    out = tmp_path / "ei"
    train = {"sft.max_steps": 2, "sft.batch_size": 2, "sft.lr": 1e-2, "sft.precision": "fp32",
             "sft.progress": "false", "selection.keep_truncated": "true"}
    assert main(["expert-iteration", *round_args(model_dir, tmp_path, out, **train, **VLLM)]) == 0
    (engine,) = chat_vllm.engines
    records = json.loads((out / "report.json").read_text())["records"]
    assert all(r["trained"] for r in records[1:])
    models = [saved_weights(r["model"]) for r in records]  # round k ends with records[k]["model"]
    assert not same(models[1], models[2])  # training changed the weights, so the checks below can fail
    # round 0 held-out; then per round: sampling (the previous round's model), held-out (this round's)
    assert [e[0] for e in engine.events if e[0] != "load_weights"] == \
        ["chat", "chat", "reset_prefix_cache", "chat", "chat", "reset_prefix_cache", "chat"]
    expected = [models[0], models[0], models[1], models[1], models[2]]
    assert len(engine.generated_with) == len(expected)
    for k, (weights, model) in enumerate(zip(engine.generated_with, expected)):
        assert same(weights, model), k
    # each round's samples are the engine's
    for k, call in ((1, engine.calls[1]), (2, engine.calls[3])):
        sampled = engine_texts(engine, call)
        for record in read_jsonl(out / f"round_{k}" / "samples.jsonl"):
            assert record["responses"] == sampled[record["messages"][-1]["content"]]
    assert not os.path.exists(engine.options["model"])  # the run removed the engine's folder


def snapshots(model):
    kept = {0: weights_of(model)}

    def on_step(step, record):
        kept[step] = weights_of(model)
    return kept, on_step


def test_online_dpo_samples_every_step_with_the_policys_weights_of_that_step(tmp_path, model_dir, chat_vllm):
    prompts = write_prompts(tmp_path / "prompts.jsonl")
    heldout = write_prompts(tmp_path / "heldout.jsonl")
    cfg = load_config(OnlineDPOConfig, None, online_args(model_dir, prompts, tmp_path / "run",
                                                         heldout=f"[{heldout}]", **VLLM))
    model, _ = load_model(model_dir)
    kept, on_step = snapshots(model)
    result = run_online_dpo(cfg, model=model, on_step=on_step)
    assert result.steps == 3
    (engine,) = chat_vllm.engines
    assert same(engine.start_weights, kept[0])
    # held-out before and step 1 with the starting weights, steps 2 and 3 after one and two updates, held-out
    # after with the final weights: one push before every sampling call that follows an update
    versions = distinct_in_order(engine.generated_with)
    assert len(versions) == 4 and all(same(v, kept[t]) for t, v in enumerate(versions))
    assert [e[0] for e in engine.events].count("reset_prefix_cache") == 3
    assert not os.path.exists(engine.options["model"])


def test_an_online_pair_source_given_a_checkpoint_pushes_the_weights_it_brings(chat_vllm):
    tok = tiny_tokenizer("chatml")
    model = tiny_model(tok)
    sampling = SamplingConfig(n=3, max_tokens=6, seed=3, backend="vllm")
    source = OnlinePairSource(PROMPTS, tok, FunctionReward("python", function=count_e), sampling, collate_examples,
                              prompts_per_step=3)
    source.next_step(0, model)
    source.next_step(0, model)  # the same step: the engine has these weights
    (engine,) = chat_vllm.engines
    assert "reset_prefix_cache" not in [e[0] for e in engine.events]
    state = source.state_dict()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.01)
    source.load_state_dict(state)  # the checkpoint's weights came with its state
    source.next_step(0, model)
    assert [e[0] for e in engine.events].count("reset_prefix_cache") == 1
    assert same(engine.generated_with[-1], weights_of(model))
    source.close()
    assert not os.path.exists(engine.options["model"])


def test_best_of_n_samples_with_the_engine_and_a_rerun_replays_them_from_the_cache(tmp_path, model_dir, chat_vllm,
                                                                                 capsys):
    prompts = write_jsonl(tmp_path / "prompts.jsonl",
                          [{"messages": [{"role": "user", "content": q}]} for q in ("say hello", "name a colour")])

    def run(out):
        return main(["best-of-n", f"model.name={model_dir}", f"prompts=[{prompts}]", "sampling.n=4",
                     "sampling.max_tokens=6", "sampling.backend=vllm", f"sampling.cache={tmp_path / 'cache.sqlite'}",
                     f'rewards=[{{kind: python, function: "{LENGTH}"}}]', f"output_dir={out}", "progress=false"])

    assert run(tmp_path / "first") == 0
    (engine,) = chat_vllm.engines
    assert same(engine.start_weights, saved_weights(model_dir))
    sampled = engine_texts(engine, engine.calls[0])
    for record in read_jsonl(tmp_path / "first" / "samples.jsonl"):
        assert record["responses"] == sampled[record["messages"][-1]["content"]]
    assert run(tmp_path / "second") == 0
    report = json.loads((tmp_path / "second" / "report.json").read_text())
    assert report["cache"] == {"hits": 2, "misses": 0}
    assert len(chat_vllm.engines[1].calls) == 0  # the second engine sampled nothing
    assert read_jsonl(tmp_path / "second" / "best.jsonl") == read_jsonl(tmp_path / "first" / "best.jsonl")


def test_rso_answers_the_heldout_prompts_after_training_with_the_trained_weights(tmp_path, model_dir, chat_vllm):
    prompts = write_prompts(tmp_path / "prompts.jsonl")
    heldout = write_prompts(tmp_path / "heldout.jsonl")
    out = tmp_path / "rso"
    assert main(["rso", *rso_args(model_dir, prompts, out, heldout=f"[{heldout}]", **VLLM)]) == 0
    (engine,) = chat_vllm.engines
    start, trained = saved_weights(model_dir), saved_weights(out / "train" / "final")
    assert not same(start, trained)
    assert len(engine.generated_with) == 3  # candidates, held-out before, held-out after
    assert same(engine.generated_with[0], start) and same(engine.generated_with[1], start)
    assert same(engine.generated_with[2], trained)
    sampled = engine_texts(engine, engine.calls[0])
    for record in read_jsonl(out / "candidates.jsonl"):
        assert record["responses"] == sampled[record["messages"][-1]["content"]]


@pytest.mark.parametrize("override,key", [
    ("sampling.backend=sglang", "sampling.backend"),
    ("sampling.gpu_memory_utilization=0", "sampling.gpu_memory_utilization"),
    ("sampling.gpu_memory_utilization=1.5", "sampling.gpu_memory_utilization"),
    ("sampling.max_model_len=8", "sampling.max_model_len"),
    ("sampling.max_model_len=-1", "sampling.max_model_len"),
])
def test_a_bad_sampling_backend_setting_is_one_line_naming_it(override, key):
    with pytest.raises(ConfigError) as error:
        load_config(OnlineDPOConfig, None, ["prompts=[p.jsonl]", "rewards=[{kind: format}]", "sampling.max_tokens=8",
                                            override])
    assert len(str(error.value).splitlines()) == 1 and str(error.value).startswith(key), error.value


def test_vllm_missing_is_one_line_before_anything_loads(tmp_path, model_dir, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "vllm", None)  # `import vllm` fails even where it is installed
    out = tmp_path / "ei"
    assert main(["expert-iteration", *round_args(model_dir, tmp_path, out, **VLLM)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "sampling.backend" in err and "vLLM" in err, err
    assert not out.exists()
