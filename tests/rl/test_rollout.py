"""The rollout source: sampling from the current policy, rewards on the right sequences, old and reference
log-probs that match the sampler's, micro-batches in the RL contract, truncation policies, exact resume."""
import copy
import io
from collections import Counter

import pytest
import torch

from alignkit.data.packing import target_positions
from alignkit.models.lora import LoraConfig, apply_lora
from alignkit.models.tiny import tiny_model, tiny_tokenizer
from alignkit.rl.advantages import grpo_advantages
from alignkit.rewards.interface import Sample as RewardSample
from alignkit.rl.logprobs import completion_logprobs, loss_temperature
from alignkit.rl.rollout import RolloutConfig, RolloutSource
from alignkit.training.loop import train
from tests.helpers.crash import Crash, crash_at
from tests.helpers.training import WORDS, cfg

# Prompts of different lengths, so sequences of one batch are padded (generation) and packed (training).
PROMPTS = [[{"role": "user", "content": " ".join(WORDS[:n])}] for n in (1, 6, 2, 11, 3, 8)]


def letter_reward(samples):
    """Depends on the completion text only, and differs between most completions."""
    return [text.count("e") + 0.01 * len(text) for text in (s.completion for s in samples)]


def decode(tok, ids):
    return tok.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)


def make_source(tok, reward=letter_reward, reference=None, **kw):
    base = {"prompts_per_step": 4, "group_size": 2, "max_tokens": 8, "temperature": 1.0, "seed": 3, "grad_accum": 2}
    base.update(kw)
    return RolloutSource(PROMPTS, tok, reward, RolloutConfig(**base), reference=reference)


def sequences(batch):
    """Per sequence of a micro-batch: (prompt+completion input ids, completion ids from the targets)."""
    keep = target_positions(batch["targets"])
    completion = batch["targets"][0, keep]
    out, start = [], 0
    for s, length in enumerate(batch["seq_lens"]):
        ids = batch["input_ids"][0, start:start + length].tolist()
        out.append((ids, completion[batch["seq_ids"] == s].tolist()))
        start += length
    return out


def assert_same_batches(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x.keys() == y.keys()
        for key in x:
            if torch.is_tensor(x[key]):
                assert torch.equal(x[key], y[key]), key
            else:
                assert x[key] == y[key], key


@pytest.mark.parametrize("temperature", [0.0, 0.7])
def test_recomputed_old_logprobs_equal_the_samplers(temperature):
    tok = tiny_tokenizer("chatml")
    # two passes over the buffer: the second needs the old policy's log-probs, so they are recomputed
    source = make_source(tok, temperature=temperature, stop=("o",), ppo_epochs=2)
    batches = source.next_step(0, tiny_model(tok))
    lengths = {len(s.prompt_ids) for s in source.buffer}
    assert len(lengths) > 1
    if temperature > 0:  # a random model decoded greedily repeats itself to max_tokens
        assert len({len(s.completion_ids) for s in source.buffer}) > 1
    for sample in source.buffer:
        assert sample.old_logprobs.dtype == torch.float32
        assert sample.old_logprobs.shape == (len(sample.completion_ids),)
        assert torch.allclose(sample.old_logprobs, torch.tensor(sample.gen_logprobs), atol=1e-4)
    assert source.last_stats["sampler_logprob_gap"] < 1e-4
    # what the micro-batches carry are those numbers, token for token, on the right sequence
    sampler = {(s.group, tuple(s.prompt_ids + s.completion_ids)): s.gen_logprobs for s in source.buffer}
    served = 0
    for batch in batches:
        for s, (ids, _) in enumerate(sequences(batch)):
            expected = torch.tensor(sampler[(int(batch["group_ids"][s]), tuple(ids))])
            assert torch.allclose(batch["old_logprobs"][batch["seq_ids"] == s], expected, atol=1e-4)
            served += 1
    assert served == len(source.buffer)


def test_the_first_update_sees_a_ratio_of_exactly_one_in_bf16():
    """Old log-probs come from the same packed forward, in the same micro-batches and dtype, as the loss's
    first one, so on-policy updates compare a number with itself."""
    tok = tiny_tokenizer("chatml")
    model = tiny_model(tok).to(torch.bfloat16)
    batches = make_source(tok, stop=("o",), temperature=0.8, ppo_epochs=2).next_step(0, model)
    model.train()
    for batch in batches:
        assert torch.equal(completion_logprobs(model, batch, 0.8).detach(), batch["old_logprobs"])


def test_one_update_per_rollout_skips_the_recompute_and_trains_as_if_it_had_run():
    """With one optimizer step per rollout the policy that sampled is the one that updates: the batches carry
    the sampler's log-probs instead of recomputed ones, and the loss and gradients are those the recomputed
    old log-probs give (ratio 1); the objective logs the sampler check in their place."""
    from alignkit.rl.objective import PolicyGradientObjective, PolicyLossConfig

    tok = tiny_tokenizer("chatml")
    model = tiny_model(tok)
    source = make_source(tok, stop=("o",), temperature=0.7)
    assert not source.recomputes_old_logprobs
    batches = source.next_step(0, model)
    assert all("old_logprobs" not in b and "gen_logprobs" in b for b in batches)
    model.train()
    objective = PolicyGradientObjective(PolicyLossConfig(), temperature=0.7)
    results = []
    for with_old in (False, True):
        model.zero_grad()
        total = 0.0
        for batch in batches:
            if with_old:
                with torch.no_grad():
                    batch = {**batch, "old_logprobs": completion_logprobs(model, batch, 0.7)}
            loss, metrics = objective.loss(model, batch)
            loss.backward()
            total += float(loss)
            assert metrics["ratio"] == pytest.approx(batch["num_units"], rel=1e-6)  # summed ratio of 1 per unit
        results.append((total, [p.grad.clone() for p in model.parameters() if p.grad is not None]))
    assert results[0][0] == pytest.approx(results[1][0], rel=1e-6)
    for a, b in zip(results[0][1], results[1][1]):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)
    record = {}
    objective.after_step(record)
    assert record["sampler_logprob_gap"] < 1e-4  # the sampler and the update agree on every token
    assert "sampler_logprob_gap" not in source.last_stats


def test_each_reward_belongs_to_its_own_sequence():
    tok = tiny_tokenizer("chatml")
    source = make_source(tok, stop=("o",), prompts_per_step=6, group_size=3, grad_accum=3)
    model = tiny_model(tok)
    batches = source.next_step(0, model)
    seen = 0
    for batch in batches:
        for s, (ids, completion) in enumerate(sequences(batch)):
            text = decode(tok, completion)
            cut = text.find("o")
            text = text[:cut] if cut >= 0 else text
            assert batch["rewards"][s].item() == pytest.approx(letter_reward([RewardSample([], text)])[0], abs=1e-5)
            assert batch["completion_lens"][s] == len(completion)
            assert ids[len(ids) - len(completion):] == completion
            seen += 1
    assert seen == 18
    assert len({round(r, 4) for b in batches for r in b["rewards"].tolist()}) > 3  # rewards really differ


def test_completions_end_with_their_stop_or_are_marked_truncated():
    tok = tiny_tokenizer("chatml")
    source = make_source(tok, stop=("o",), prompts_per_step=6, group_size=3)
    source.next_step(0, tiny_model(tok))
    for s in source.buffer:
        ended = s.completion_ids[-1] == tok.eos_token_id or "o" in decode(tok, s.completion_ids)
        assert s.truncated == (not ended)
        if s.truncated:
            assert len(s.completion_ids) == 8
        assert "o" not in s.text
    assert any(s.truncated for s in source.buffer) and not all(s.truncated for s in source.buffer)


def test_micro_batches_follow_the_contract_and_cover_the_buffer_each_epoch():
    tok = tiny_tokenizer("chatml")
    source = make_source(tok, stop=("o",), ppo_epochs=3, mini_batches=2, grad_accum=2)
    model = tiny_model(tok)
    steps = [source.next_step(step, model) for step in range(6)]
    buffer = Counter((s.group, tuple(s.prompt_ids + s.completion_ids)) for s in source.buffer)
    advantages = grpo_advantages(torch.tensor([s.reward for s in source.buffer]),
                                             torch.tensor([s.group for s in source.buffer]))
    assert [s.advantage for s in source.buffer] == pytest.approx(advantages.tolist())
    for epoch in range(3):
        served = Counter()
        for batches in steps[2 * epoch:2 * epoch + 2]:
            assert 1 <= len(batches) <= 2
            for batch in batches:
                keep = target_positions(batch["targets"])
                n, s_count = keep.numel(), len(batch["seq_lens"])
                assert batch["old_logprobs"].shape == batch["seq_ids"].shape == (n,)
                assert batch["num_units"] == n == int(batch["completion_lens"].sum())
                assert batch["seq_ids"].tolist() == sorted(batch["seq_ids"].tolist())
                for key in ("advantages", "rewards", "group_ids", "completion_lens", "truncated"):
                    assert batch[key].shape == (s_count,), key
                # the target of position t is input token t+1: completion tokens exactly
                assert torch.equal(batch["targets"][0, keep], batch["input_ids"][0, keep + 1])
                for s, (ids, completion) in enumerate(sequences(batch)):
                    served[(int(batch["group_ids"][s]), tuple(ids))] += 1
                    assert len(completion) == batch["completion_lens"][s]
        assert served == buffer  # every sample exactly once per pass
    assert source.rollouts == 1
    # same prompt, same group id
    by_group = {}
    for s in source.buffer:
        assert by_group.setdefault(s.group, s.prompt_ids) == s.prompt_ids
    source.next_step(6, model)
    assert source.rollouts == 2 and source.last_stats["rollout_step"] == 6


def test_sequence_units_count_sequences():
    tok = tiny_tokenizer("chatml")
    batches = make_source(tok, units="sequences").next_step(0, tiny_model(tok))
    assert [b["num_units"] for b in batches] == [len(b["seq_lens"]) for b in batches]


def test_truncation_policies():
    tok = tiny_tokenizer("chatml")
    model = tiny_model(tok)
    runs = {}
    for policy in ("keep", "penalty", "mask"):
        source = make_source(tok, stop=("o",), max_tokens=6, prompts_per_step=6, group_size=3, grad_accum=3,
                             truncated=policy, truncation_reward=-5.0)
        batches = source.next_step(0, model)
        runs[policy] = (source, [(b, s) for b in batches for s in range(len(b["seq_lens"]))])
    keep, penalty, mask = (runs[p][1] for p in ("keep", "penalty", "mask"))
    truncated = [s.truncated for s in runs["keep"][0].buffer]
    assert any(truncated) and not all(truncated)
    # the same samples under every policy (sampling is seeded by the run's seed and the step)
    assert [s.completion_ids for s in runs["mask"][0].buffer] == [s.completion_ids for s in runs["keep"][0].buffer]
    assert len(keep) == len(penalty) == len(truncated)
    for b, s in keep:
        if b["truncated"][s]:
            assert b["completion_lens"][s] == 6
    assert any(b["truncated"][s] for b, s in keep)
    assert all(b["rewards"][s] == -5.0 for b, s in penalty if b["truncated"][s])
    for kept, penalised in zip(runs["keep"][0].buffer, runs["penalty"][0].buffer):
        assert penalised.reward == (-5.0 if kept.truncated else kept.reward)
    # mask: truncated samples never reach a loss, the others keep the advantages they had under keep
    assert len(mask) == truncated.count(False) and not any(b["truncated"][s] for b, s in mask)
    keep_adv = {id_: s.advantage for id_, s in enumerate(runs["keep"][0].buffer)}
    for i, sample in enumerate(runs["mask"][0].buffer):
        assert sample.trained == (not sample.truncated)
        assert sample.advantage == pytest.approx(keep_adv[i])
    assert runs["mask"][0].last_stats["truncated_rate"] == pytest.approx(sum(truncated) / len(truncated))


def test_mask_samples_more_prompts_when_everything_is_truncated():
    tok = tiny_tokenizer("chatml")
    # one token each: only a first-token EOS would end a completion, and 8 steps need 8 such samples
    source = make_source(tok, max_tokens=1, truncated="mask", max_resamples=1, mini_batches=8, grad_accum=1)
    with pytest.raises(RuntimeError, match="truncated=mask"):
        source.next_step(0, tiny_model(tok))
    assert source.stream.position == 8  # two rollouts' prompts were tried


def test_reference_logprobs_from_a_frozen_model_and_from_the_adapter_off():
    tok = tiny_tokenizer("chatml")
    model = tiny_model(tok)
    # ppo_epochs=2: the old log-probs are recomputed, to compare with the reference's
    same = make_source(tok, temperature=0.0, reference=copy.deepcopy(model), ppo_epochs=2)
    batch = same.next_step(0, model)[0]
    assert torch.equal(batch["ref_logprobs"], batch["old_logprobs"])

    base = copy.deepcopy(model)
    policy = apply_lora(model, LoraConfig(enabled=True, r=4, alpha=8))
    with torch.no_grad():
        for name, param in policy.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.5)
    source = make_source(tok, temperature=0.0, reference="adapter", ppo_epochs=2)
    batch = source.next_step(0, policy)[0]
    with torch.no_grad():
        base_lp = completion_logprobs(base.eval(), batch, loss_temperature(0.0))
    assert torch.allclose(batch["ref_logprobs"], base_lp, atol=1e-5)
    assert not torch.allclose(batch["ref_logprobs"], batch["old_logprobs"], atol=1e-3)
    with pytest.raises(ValueError, match="peft"):
        make_source(tok, reference="adapter").next_step(0, tiny_model(tok))


def roundtrip(state):
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=False)


def test_a_restored_source_gives_the_same_next_micro_batches():
    tok = tiny_tokenizer("chatml")
    model = tiny_model(tok)
    first = make_source(tok, stop=("o",), ppo_epochs=2, mini_batches=2)
    for step in range(2):
        first.next_step(step, model)
    state = roundtrip(first.state_dict())
    expected = [first.next_step(step, model) for step in range(2, 6)]

    second = make_source(tok, stop=("o",), ppo_epochs=2, mini_batches=2)
    second.load_state_dict(state)
    # Inside the saved buffer another policy changes nothing: the samples come from the state.
    other = tiny_model(tok, seed=9)
    assert_same_batches(second.next_step(2, other), expected[0])
    assert_same_batches(second.next_step(3, other), expected[1])
    # The next rollout samples the same prompts with the same seed.
    assert_same_batches(second.next_step(4, model), expected[2])
    assert_same_batches(second.next_step(5, model), expected[3])
    assert second.last_stats.keys() == first.last_stats.keys()


class Reinforce:
    """loss = -(advantage x log p(token)) summed over completion tokens."""

    def __init__(self, temperature):
        self.temperature = loss_temperature(temperature)

    def collate(self, examples):
        raise AssertionError("a source's micro-batches are already collated")

    def loss(self, model, batch):
        logprobs = completion_logprobs(model, batch, self.temperature)
        advantages = batch["advantages"].to(logprobs.device)[batch["seq_ids"].to(logprobs.device)]
        return -(advantages * logprobs).sum(), {"reward": float(batch["rewards"].sum())}


def test_train_with_rollouts_resumes_exactly_after_a_crash(tmp_path):
    tok = tiny_tokenizer("chatml")
    source = lambda: make_source(tok, stop=("o",), max_tokens=6, prompts_per_step=2,
                                 temperature=0.9, ppo_epochs=2, grad_accum=2)
    run_cfg = lambda path: cfg(path, max_steps=8, save_every=3, lr=1e-2)
    full_source = source()
    full = train(tiny_model(tok), Reinforce(0.9), source=full_source, cfg=run_cfg(tmp_path / "full"))
    assert full_source.rollouts == 4 and full_source.epoch() == pytest.approx(8 / len(PROMPTS))

    run_dir = tmp_path / "resumed"
    with pytest.raises(Crash):
        train(tiny_model(tok), Reinforce(0.9), source=source(), cfg=run_cfg(run_dir), on_step=crash_at(5))
    # the checkpoint after step 3 lies in the middle of a buffer the policy sampled after step 2
    resumed = train(tiny_model(tok), Reinforce(0.9), source=source(), cfg=run_cfg(run_dir))
    assert [r["step"] for r in resumed.history] == [4, 5, 6, 7, 8]
    for r in resumed.history:
        expected = full.history[r["step"] - 1]
        assert r["loss"] == pytest.approx(expected["loss"], rel=1e-6, abs=1e-7), r["step"]
        assert r["units"] == expected["units"] and r["epoch"] == expected["epoch"]
    assert len({round(r["loss"], 6) for r in full.history}) > 2
