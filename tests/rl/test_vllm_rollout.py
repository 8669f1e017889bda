"""rollout.backend=vllm against the FakeVLLM stand-in: the engine starts from the policy's weights at the
first rollout, gets the trained weights (LoRA merged, an ActorCritic's policy alone) before each rollout
that follows an optimizer step and at no other, samples from the prompt ids the training batch holds, and
a resumed run starts it from the restored weights. Bad settings stop before any model loads."""
import copy
import os
import sys

import pytest
import torch

from alignkit.cli import main
from alignkit.data.chat import tokenize_prompt
from alignkit.generation.local import _row_seed
from alignkit.models.lora import LoraConfig, apply_lora
from alignkit.models.tiny import tiny_model, tiny_tokenizer
from alignkit.rl.buffer_advantages import GAEConfig
from alignkit.rl.rollout import RolloutConfig, RolloutSource, derived_seed
from alignkit.rl.run import run_rl
from alignkit.rl.value_head import ActorCritic
from alignkit.rl.vllm_rollout import policy_weights
from tests.helpers.crash import Crash, crash_at
from tests.helpers.generation import FakeVLLM
from tests.helpers.rl_runs import learning_cfg, run_args, write_prompts
from tests.helpers.training import WORDS

ENV = "VLLM_ENABLE_V1_MULTIPROCESSING"
PROMPTS = [[{"role": "user", "content": " ".join(WORDS[:n])}] for n in (1, 6, 2, 11, 3, 8)]


@pytest.fixture
def fake_vllm(monkeypatch):
    """The fake vllm module installed, no engine built yet, VLLM_ENABLE_V1_MULTIPROCESSING as the session had
    it afterwards (the sampler sets it when unset)."""
    monkeypatch.setitem(sys.modules, "vllm", FakeVLLM)
    monkeypatch.setattr(FakeVLLM, "engines", [])
    monkeypatch.delenv(ENV, raising=False)
    return FakeVLLM


def reward(samples):
    return [len(s.completion) + 0.5 * s.completion.count("e") for s in samples]


def make_source(tok, template_prompts=PROMPTS, **kw):
    extra = {k: kw.pop(k) for k in ("gae",) if k in kw}
    base = {"prompts_per_step": 3, "group_size": 2, "max_tokens": 6, "temperature": 1.0, "seed": 3,
            "backend": "vllm"}
    base.update(kw)
    return RolloutSource(template_prompts, tok, reward, RolloutConfig(**base), **extra)


def first_rollout(tok, model, **kw):
    """A vllm source that has rolled out once at step 0, and its engine."""
    source = make_source(tok, **kw)
    source.next_step(0, model)
    (engine,) = FakeVLLM.engines
    return source, engine


def kinds(engine):
    return [event[0] for event in engine.events]


def weights_of(model):
    return {name: tensor.clone() for name, tensor in policy_weights(model)}


def assert_same(a: dict, b: dict):
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name


def nudge(params, scale=0.01, seed=0):
    """What an optimizer step does to the weights, in place."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in params:
            p.add_(torch.randn(p.shape, generator=g) * scale)


def test_the_engine_starts_from_the_policy_and_gets_its_weights_after_each_step_only(fake_vllm):
    tok = tiny_tokenizer("chatml")
    model = tiny_model(tok)
    source, engine = first_rollout(tok, model)
    folder = engine.options["model"]
    assert engine.options["tokenizer"] == folder and engine.options["dtype"] == "float32"
    assert engine.options["logprobs_mode"] == "processed_logprobs" and os.environ[ENV] == "0"
    assert_same(engine.start_weights, dict(model.named_parameters()))
    assert kinds(engine) == ["generate"]  # nothing pushed before the first rollout

    source.next_step(0, model)  # another rollout at the same step: no optimizer step, no push
    assert kinds(engine) == ["generate", "generate"]

    nudge(model.parameters())
    source.next_step(1, model)
    names = [name for name, _ in model.named_parameters()]
    pushed = kinds(engine)[2:]
    assert pushed == ["load_weights"] * len(names) + ["reset_prefix_cache", "generate"]
    assert [name for name, _ in engine.loaded] == names  # one tensor at a time, each weight once
    assert_same(dict(engine.loaded), dict(model.named_parameters()))
    assert_same(engine.generated_with[-1], dict(model.named_parameters()))
    assert source.last_stats["weight_pushes"] == 1
    assert len(fake_vllm.engines) == 1  # the one engine, updated in place

    source.close()
    assert not os.path.exists(folder)


def test_loading_a_checkpoint_into_a_live_source_pushes_the_weights_it_brings(fake_vllm):
    tok = tiny_tokenizer("chatml")
    model = tiny_model(tok)
    source, engine = first_rollout(tok, model)
    state = source.state_dict()
    nudge(model.parameters())  # the checkpoint's weights, loaded with the source's state
    source.load_state_dict(state)
    source.next_step(0, model)  # the same step: only the loaded state says the weights changed
    assert kinds(engine).count("load_weights") == len(list(model.parameters()))
    assert_same(engine.generated_with[-1], dict(model.named_parameters()))


def test_bf16_weights_start_a_bf16_engine(fake_vllm):
    tok = tiny_tokenizer("chatml")
    model = tiny_model(tok).to(torch.bfloat16)
    make_source(tok).next_step(0, model)
    assert fake_vllm.engines[0].options["dtype"] == "bfloat16"
    assert_same(fake_vllm.engines[0].start_weights, dict(model.named_parameters()))


def lora_policy(tok):
    model = apply_lora(tiny_model(tok), LoraConfig(enabled=True, r=4, alpha=8))
    nudge([p for n, p in model.named_parameters() if "lora_B" in n], scale=0.5, seed=1)  # B starts at zero
    return model


def merged(model):
    """What peft's merge gives, on a copy."""
    return dict(copy.deepcopy(model).merge_and_unload().named_parameters())


def test_a_lora_policy_reaches_the_engine_merged_under_plain_names_and_stays_as_it_trains(fake_vllm):
    tok = tiny_tokenizer("chatml")
    model = lora_policy(tok)
    plain = [name for name, _ in tiny_model(tok).named_parameters()]
    source, engine = first_rollout(tok, model)
    assert sorted(engine.start_weights) == sorted(plain)
    assert_same(engine.start_weights, merged(model))
    assert any(not torch.equal(engine.start_weights[n], p) for n, p in tiny_model(tok).named_parameters())

    nudge([p for n, p in model.named_parameters() if "lora_" in n], scale=0.3, seed=2)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    ids = torch.tensor([[3, 40, 41, 42, 43]])
    with torch.no_grad():
        before = model(ids).logits
    source.next_step(1, model)
    assert [name for name, _ in engine.loaded] == plain
    assert_same(dict(engine.loaded), merged(model))
    # the training model is as it was: adapter unmerged and still in use
    assert_same(model.state_dict(), state)
    assert not any(getattr(m, "merged", False) for m in model.modules())
    with torch.no_grad():
        assert torch.equal(model(ids).logits, before)
        with model.disable_adapter():
            assert not torch.allclose(model(ids).logits, before)


def test_an_actor_critic_pushes_its_policy_alone(fake_vllm):
    tok = tiny_tokenizer("chatml")
    model = ActorCritic(tiny_model(tok))
    source, engine = first_rollout(tok, model, gae=GAEConfig())
    assert_same(engine.start_weights, dict(model.policy.named_parameters()))
    nudge(model.parameters())  # policy and value head alike
    source.next_step(1, model)
    assert_same(dict(engine.loaded), dict(model.policy.named_parameters()))


@pytest.mark.parametrize("template", ["chatml", "llama3"])  # llama3: the tokenizer adds a BOS, the template too
def test_vllm_samples_from_the_prompt_ids_the_training_batch_holds(fake_vllm, template):
    tok = tiny_tokenizer(template)
    source = make_source(tok, prompts_per_step=6)
    batches = source.next_step(0, tiny_model(tok))
    (engine,) = fake_vllm.engines
    (_, requests), = [e for e in engine.events if e[0] == "generate"]
    seed = derived_seed(3, 0, 0)
    expected = {}
    for prompt in source.prompts:
        ids = tokenize_prompt(tok, prompt.messages)
        assert ids.count(tok.bos_token_id) <= 1
        expected[tuple(ids)] = [_row_seed(seed, ids, j) for j in range(2)]
    sent = {}
    for ids, fields in requests:
        assert fields["n"] == 1 and fields["max_tokens"] == 6
        sent.setdefault(tuple(ids), []).append(fields["seed"])
    assert sent == expected
    # every sample trains on the ids vLLM sampled from, followed by what it sampled
    outputs = {(tuple(ids), f["seed"]): engine._sampled(ids, f).outputs[0].token_ids for ids, f in requests}
    by_prompt = {}
    for s in source.buffer:
        by_prompt.setdefault(tuple(s.prompt_ids), []).append(s.completion_ids)
    assert by_prompt == {ids: [outputs[(ids, seed)] for seed in seeds] for ids, seeds in expected.items()}
    served = set()
    for batch in batches:
        start = 0
        for length in batch["seq_lens"]:
            served.add(tuple(batch["input_ids"][0, start:start + length].tolist()))
            start += length
    assert served == {tuple(s.prompt_ids + s.completion_ids) for s in source.buffer}
    # a rerun on a fresh engine samples the same tokens
    again = make_source(tok, prompts_per_step=6)
    again.next_step(0, tiny_model(tok))
    assert [(s.prompt_ids, s.completion_ids) for s in again.buffer] == \
        [(s.prompt_ids, s.completion_ids) for s in source.buffer]


def test_an_engine_out_of_process_stops_the_first_rollout_with_the_setting_to_change(fake_vllm, monkeypatch):
    monkeypatch.setenv(ENV, "1")
    tok = tiny_tokenizer("chatml")
    source = make_source(tok)
    with pytest.raises(ValueError, match=f"{ENV}=0"):
        source.next_step(0, tiny_model(tok))
    (engine,) = fake_vllm.engines
    assert not os.path.exists(engine.options["model"])  # its folder is gone
    assert engine.events == []


@pytest.mark.parametrize("key,value", [("rollout.backend", "sglang"), ("rollout.gpu_memory_utilization", 0),
                                       ("rollout.gpu_memory_utilization", 1.5), ("rollout.max_model_len", 6),
                                       ("rollout.max_model_len", -1)])
def test_a_bad_vllm_setting_is_one_line_naming_it_before_the_model_loads(tmp_path, model_dir, capsys, key, value):
    prompts = write_prompts(tmp_path / "prompts.jsonl")
    out = tmp_path / "run"
    assert main(["grpo", *run_args(model_dir, prompts, out), "rollout.backend=vllm", f"{key}={value}"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and key in err, err
    assert not out.exists()


def test_vllm_missing_is_one_line_before_the_model_loads(tmp_path, model_dir, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "vllm", None)  # `import vllm` fails even where it is installed
    prompts = write_prompts(tmp_path / "prompts.jsonl")
    out = tmp_path / "run"
    assert main(["grpo", *run_args(model_dir, prompts, out), "rollout.backend=vllm"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "rollout.backend" in err and "vLLM" in err, err
    assert not out.exists()


def test_an_engine_out_of_process_is_one_line_from_the_command(tmp_path, model_dir, capsys, fake_vllm, monkeypatch):
    monkeypatch.setenv(ENV, "1")
    prompts = write_prompts(tmp_path / "prompts.jsonl")
    assert main(["grpo", *run_args(model_dir, prompts, tmp_path / "run"), "rollout.backend=vllm"]) == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]  # after the model's loading bar
    assert last.startswith("alignkit grpo: error: ") and f"{ENV}=0" in last, last


def snapshots(model):
    """on_step callback keeping the policy's weights after each step (what the next rollout samples with)."""
    kept = {0: weights_of(model)}

    def on_step(step, record):
        kept[step] = weights_of(model)
    return kept, on_step


def test_a_run_samples_each_rollout_with_the_weights_of_its_step_and_resumes_from_the_restored_ones(
        tmp_path, model_dir, fake_vllm):
    from alignkit.models.loading import load_model

    prompts = write_prompts(tmp_path / "prompts.jsonl")
    extra = {"train.save_every": 3, "rollout.ppo_epochs": 2, "rollout.max_tokens": 4, "rollout.backend": "vllm",
             "samples_per_step": 2}
    model, _ = load_model(model_dir)
    kept, on_step = snapshots(model)
    full = run_rl(learning_cfg(model_dir, prompts, tmp_path / "full", 6, **extra), model=model, on_step=on_step)
    (engine,) = fake_vllm.engines
    # rollouts at steps 0, 2, 4 (two optimizer steps each); pushes before the last two
    assert kinds(engine).count("reset_prefix_cache") == 2 and len(engine.generated_with) == 3
    for weights, step in zip(engine.generated_with, (0, 2, 4)):
        assert_same(weights, kept[step])
    assert not os.path.exists(engine.options["model"])  # the run removed the engine's folder

    out = tmp_path / "resumed"
    with pytest.raises(Crash):
        run_rl(learning_cfg(model_dir, prompts, out, 6, **extra), on_step=crash_at(5))
    model, _ = load_model(model_dir)
    kept, on_step = snapshots(model)
    resumed = run_rl(learning_cfg(model_dir, prompts, out, 6, **extra), model=model, on_step=on_step)
    assert [r["step"] for r in resumed.history] == [4, 5, 6]
    restarted = fake_vllm.engines[-1]
    assert len(fake_vllm.engines) == 3
    # step 4 trains on the checkpoint's buffer; the rollout at step 4 starts the engine from the weights then
    assert "load_weights" not in kinds(restarted) and len(restarted.generated_with) == 1
    assert_same(restarted.start_weights, kept[4])
    for name, tensor in restarted.start_weights.items():
        assert torch.allclose(tensor, engine.generated_with[2][name], atol=1e-6), name
    for r in resumed.history:
        assert r["reward_mean"] == pytest.approx(full.history[r["step"] - 1]["reward_mean"])
        assert r["loss"] == pytest.approx(full.history[r["step"] - 1]["loss"], rel=1e-5, abs=1e-7)
