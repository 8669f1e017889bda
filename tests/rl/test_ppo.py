"""PPO on the one loop: the value head reads the right positions, the rollout's token rewards, GAE and KL in
the reward follow their formulas (and TRL's PPO on padded tensors) whatever the packing, the value loss and
entropy are what their formulas say, explained variance combines a step's micro-batches exactly, a tiny run
learns and saves policy and value head, a crash resumes exactly (bf16 too), and the CLI and its config work.

TRL 1.16 no longer ships PPO (no trl.trainer.ppo_trainer, nothing under trl.experimental), so the TRL
comparisons below transcribe the expressions of its last PPOTrainer (trl/trainer/ppo_trainer.py, TRL 0.2x)."""
import io
import os

import pytest
import torch
from safetensors.torch import load_file

from alignkit.cli import main
from alignkit.config import load_config
from alignkit.data.packing import target_positions
from alignkit.models.reward import RewardModel, score_sequences
from alignkit.models.tiny import tiny_model, tiny_tokenizer
from alignkit.rl.advantages import gae, rloo_advantages
from alignkit.rl.buffer import Sample, micro_batch, seq_ids_of
from alignkit.rl.kl import AdaptiveKLController, FixedKLController
from alignkit.rl.logprobs import completion_outputs, tempered_token_logprobs
from alignkit.rl.losses import aggregate, explained_variance, policy_loss
from alignkit.rl.objective import PolicyGradientObjective, PolicyLossConfig
from alignkit.rl.buffer_advantages import GAEConfig, RewardKL
from alignkit.rl.rollout import RolloutConfig, RolloutSource
from alignkit.rl.run import RLConfig, run_rl
from alignkit.rl.value_head import VALUE_HEAD, ActorCritic, load_critic, transformer_of, unwrap_policy
from alignkit.training.forward import packed_logits
from tests.helpers.crash import Crash, crash_at
from tests.helpers.rl_packed import padded
from tests.helpers.rl_runs import hand_batch, read_jsonl, run_args, write_prompts
from tests.helpers.training import WORDS

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# Prompts of different lengths: sequences are padded for generation and packed for training.
PROMPTS = [[{"role": "user", "content": " ".join(WORDS[:n])}] for n in (2, 9, 1, 5, 12, 3)]


def vowel_reward(samples):
    """Differs between most completions, from the text only."""
    return [sum(text.count(v) for v in "aeiu") + 0.01 * len(text) for text in (s.completion for s in samples)]


def random_head(ac, seed=0):
    """Values that differ from token to token (the head starts at zero)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        ac.value_head.weight.copy_(torch.randn(ac.value_head.weight.shape, generator=g))
        ac.value_head.bias.fill_(0.3)
    return ac


def samples_of(tok, shapes, seed=0):
    """Samples of random tokens with the given (prompt length, completion length)."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for i, (p, c) in enumerate(shapes):
        ids = torch.randint(10, len(tok), (p + c,), generator=g).tolist()
        out.append(Sample(ids[:p], ids[p:], "", group=i, truncated=False, reward=float(i)))
    return out


def ppo_source(tok, *, reference=None, reward_kl=None, gamma=0.9, lam=0.8, whiten=True, **kw):
    base = {"prompts_per_step": 4, "group_size": 2, "max_tokens": 8, "temperature": 1.0, "seed": 3,
            "grad_accum": 2, "stop": ("o",)}
    base.update(kw)
    return RolloutSource(PROMPTS, tok, vowel_reward, RolloutConfig(**base), reference=reference,
                         gae=GAEConfig(gamma, lam, whiten), reward_kl=reward_kl)


def by_sequence(batch):
    """Per sequence of a micro-batch: its prompt+completion ids and the slice of its completion tokens."""
    out, start = [], 0
    for s, length in enumerate(batch["seq_lens"]):
        out.append((tuple(batch["input_ids"][0, start:start + length].tolist()), batch["seq_ids"] == s))
        start += length
    return out


# ----------------------------------------------------------------------------------------- the value head

@pytest.mark.parametrize("separate_critic", [False, True])
def test_values_are_read_where_each_completion_token_is_predicted(separate_critic):
    tok = tiny_tokenizer("chatml")
    policy = tiny_model(tok)
    critic = tiny_model(tok, seed=4) if separate_critic else None
    ac = random_head(ActorCritic(policy, critic))
    samples = samples_of(tok, [(5, 3), (9, 6), (2, 1), (7, 4)])
    batch = micro_batch(samples)
    with torch.no_grad():
        logits, tokens, values = completion_outputs(ac, batch, values=True)
        plain = packed_logits(policy, batch, target_positions(batch["targets"]))
    assert torch.equal(logits, plain)  # the policy's own logits, untouched by the head
    assert values.dtype == torch.float32 and values.shape == tokens.shape
    body = transformer_of(critic if separate_critic else policy)
    expected = []
    for s in samples:  # each sequence alone, unpacked: the state before completion token t is position p + t - 1
        with torch.no_grad():
            hidden = body(input_ids=torch.tensor([s.prompt_ids + s.completion_ids]), use_cache=False).last_hidden_state
            p = len(s.prompt_ids)
            expected.append(ac.value_head(hidden[0, p - 1:p - 1 + len(s.completion_ids)]).squeeze(-1))
    torch.testing.assert_close(values, torch.cat(expected), atol=1e-5, rtol=1e-5)
    assert len({round(v, 4) for v in values.tolist()}) > 10  # really position-dependent


def test_the_head_starts_at_zero_and_the_sampler_gets_the_plain_policy():
    tok = tiny_tokenizer("chatml")
    policy = tiny_model(tok)
    ac = ActorCritic(policy)
    with torch.no_grad():
        _, _, values = completion_outputs(ac, micro_batch(samples_of(tok, [(4, 3), (6, 2)])), values=True)
    assert torch.equal(values, torch.zeros(5))
    assert unwrap_policy(ac) is policy and unwrap_policy(policy) is policy
    names = [n for n, _ in ac.named_parameters()]
    assert {"value_head.weight", "value_head.bias"} <= set(names)
    assert all(n.startswith(("policy.", "value_head.")) for n in names)
    with pytest.raises(ValueError, match="another model"):
        ActorCritic(policy, policy)


def test_a_critic_from_a_reward_model_starts_from_its_score(tmp_path):
    tok = tiny_tokenizer("chatml")
    reward_model = RewardModel.from_causal_lm(tiny_model(tok, seed=3), tok)
    torch.nn.init.normal_(reward_model.hf.score.weight, std=0.5)
    reward_model.save_pretrained(str(tmp_path / "rm"), tok)
    critic, head = load_critic(str(tmp_path / "rm"))
    ac = ActorCritic(tiny_model(tok), critic, head_weight=head)
    assert not any("score" in n or "lm_head" in n for n, _ in ac.named_parameters() if n.startswith("critic."))
    (sample,) = samples_of(tok, [(6, 5)])
    with torch.no_grad():
        _, _, values = completion_outputs(ac, micro_batch([sample]), values=True)
    # the value before completion token t is the reward model's score of the text up to it
    ids = sample.prompt_ids + sample.completion_ids
    prefixes = [ids[:len(sample.prompt_ids) + t] for t in range(len(sample.completion_ids))]
    assert values.tolist() == pytest.approx(score_sequences(reward_model, prefixes), abs=1e-5)


# ----------------------------------------------------------------------------------------- the rollout

def trl_ppo_advantages(scores, logprobs, ref_logprobs, values, lens, kl_coef, gamma, lam):
    """The rollout half of TRL's PPOTrainer.train on right-padded [S, L] tensors: k1 KL per token as the
    non-score reward, the score added at the sequence's end (its last token: TRL's `actual_end` is the EOS
    when pad = eos), GAE over the padded columns, then masked whitening of the advantages."""
    logprobs, mask = padded(logprobs, lens, fill=1.0)  # TRL's INVALID_LOGPROB
    ref_logprobs, _ = padded(ref_logprobs, lens, fill=1.0)
    values, _ = padded(values, lens)
    rewards = -kl_coef * (logprobs - ref_logprobs)
    rewards[torch.arange(len(lens)), torch.tensor(lens) - 1] += scores
    gen_length = rewards.shape[1]
    lastgaelam, advantages_reversed = 0, []
    for t in reversed(range(gen_length)):
        nextvalues = values[:, t + 1] if t < gen_length - 1 else 0.0
        delta = rewards[:, t] + gamma * nextvalues - values[:, t]
        lastgaelam = delta + gamma * lam * lastgaelam
        advantages_reversed.append(lastgaelam)
    advantages = torch.stack(advantages_reversed[::-1], axis=1)
    returns = advantages + values
    mean = (advantages * mask).sum() / mask.sum()
    var = (((advantages - mean) ** 2) * mask).sum() / mask.sum() * mask.sum() / (mask.sum() - 1)
    return (advantages - mean) * torch.rsqrt(var + 1e-8), returns


def test_ppo_rollout_advantages_agree_with_trl_whatever_the_packing():
    tok = tiny_tokenizer("chatml")
    model = random_head(ActorCritic(tiny_model(tok)))
    source = ppo_source(tok, reference=tiny_model(tok, seed=9), reward_kl=RewardKL(FixedKLController(0.1)))
    batches = source.next_step(0, model)
    buffer = source.buffer
    assert len({len(s.prompt_ids) for s in buffer}) > 1 and len({len(s.completion_ids) for s in buffer}) > 1
    lens = [len(s.completion_ids) for s in buffer]

    def cat(attr):
        return torch.cat([getattr(s, attr) for s in buffer])

    adv, ret = trl_ppo_advantages(torch.tensor([s.reward for s in buffer]), cat("old_logprobs"), cat("ref_logprobs"),
                                  cat("old_values"), lens, 0.1, 0.9, 0.8)
    for i, s in enumerate(buffer):
        torch.testing.assert_close(s.token_advantages, adv[i, :lens[i]], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(s.returns, ret[i, :lens[i]], atol=1e-5, rtol=1e-5)
        assert s.advantage == s.token_advantages[0].item()
    kl = cat("old_logprobs") - cat("ref_logprobs")
    assert source.last_stats["kl"] == pytest.approx(kl.mean().item(), rel=1e-5)
    assert source.last_stats["kl_coef"] == 0.1
    # the micro-batches serve each sample's numbers on its own tokens
    samples = {tuple(s.prompt_ids + s.completion_ids): s for s in buffer}
    served = 0
    for batch in batches:
        for ids, tokens in by_sequence(batch):
            for key in ("old_values", "token_advantages", "returns"):
                assert torch.equal(batch[key][tokens], getattr(samples[ids], key)), key
            served += 1
    assert served == len(buffer)


def test_kl_in_the_reward_moves_token_advantages_by_the_gae_of_the_penalty():
    tok = tiny_tokenizer("chatml")
    model = random_head(ActorCritic(tiny_model(tok)))
    reference = tiny_model(tok, seed=9)
    plain = ppo_source(tok, reference=reference, whiten=False)
    penalised = ppo_source(tok, reference=reference, whiten=False, reward_kl=RewardKL(FixedKLController(0.3)))
    plain.next_step(0, model)
    penalised.next_step(0, model)
    seq_ids = seq_ids_of([len(s.completion_ids) for s in plain.buffer])
    kl = torch.cat([s.old_logprobs - s.ref_logprobs for s in plain.buffer])
    # GAE is linear in the rewards: the KL adds the GAE of -coef x KL with no values
    shift, _ = gae(-0.3 * kl, torch.zeros_like(kl), seq_ids, len(plain.buffer), gamma=0.9, lam=0.8)
    got = torch.cat([p.token_advantages - q.token_advantages for p, q in zip(penalised.buffer, plain.buffer)])
    torch.testing.assert_close(got, shift, atol=1e-5, rtol=1e-4)
    assert shift.abs().max() > 0.01


def test_kl_in_the_reward_of_rloo_penalises_each_sequence_and_adapts_its_coefficient():
    tok = tiny_tokenizer("chatml")
    controller = AdaptiveKLController(0.2, target=0.01, horizon=10)
    cfg = RolloutConfig(prompts_per_step=3, group_size=4, max_tokens=6, seed=3, stop=("o",), truncated="mask")
    source = RolloutSource(PROMPTS, tok, vowel_reward, cfg, advantage_fn=rloo_advantages,
                           reference=tiny_model(tok, seed=9), reward_kl=RewardKL(controller, "k1"))
    source.next_step(0, tiny_model(tok))
    buffer = source.buffer
    assert any(not s.trained for s in buffer) and any(s.trained for s in buffer)
    # a masked sample's KL still enters its group's baseline, so its log-probs were computed too
    kl = [float((s.old_logprobs - s.ref_logprobs).sum()) for s in buffer]
    rewards = torch.tensor([s.reward - 0.2 * k for s, k in zip(buffer, kl)])
    want = rloo_advantages(rewards, torch.tensor([s.group for s in buffer]))
    assert [s.advantage for s in buffer] == pytest.approx(want.tolist(), abs=1e-5)
    unpenalised = rloo_advantages(torch.tensor([s.reward for s in buffer]), torch.tensor([s.group for s in buffer]))
    assert (want - unpenalised).abs().max() > 0.01
    # the rollout used 0.2, then the controller took the rollout's KL per token over its trained samples
    trained = torch.cat([s.old_logprobs - s.ref_logprobs for s in buffer if s.trained])
    n = sum(s.trained for s in buffer)
    error = min(max(trained.mean().item() / 0.01 - 1, -0.2), 0.2)
    assert source.last_stats["kl_coef"] == 0.2 and source.last_stats["kl"] == pytest.approx(trained.mean().item())
    assert controller.value == pytest.approx(0.2 * (1 + error * n / 10))


def test_the_first_ppo_update_sees_its_rollout_values_and_log_probs_exactly_in_bf16():
    tok = tiny_tokenizer("chatml")
    model = random_head(ActorCritic(tiny_model(tok).to(torch.bfloat16)))
    batches = ppo_source(tok, temperature=0.8).next_step(0, model)
    model.train()
    for batch in batches:
        logits, tokens, values = completion_outputs(model, batch, values=True)
        assert torch.equal(tempered_token_logprobs(logits, tokens, 0.8).detach(), batch["old_logprobs"])
        assert torch.equal(values.detach(), batch["old_values"])


def test_a_restored_ppo_source_serves_the_same_token_advantages():
    tok = tiny_tokenizer("chatml")
    model = random_head(ActorCritic(tiny_model(tok)))
    first = ppo_source(tok, ppo_epochs=2, mini_batches=2)
    first.next_step(0, model)
    saved = io.BytesIO()
    torch.save(first.state_dict(), saved)
    saved.seek(0)
    expected = first.next_step(1, model)
    second = ppo_source(tok, ppo_epochs=2, mini_batches=2)
    second.load_state_dict(torch.load(saved, weights_only=False))
    got = second.next_step(1, random_head(ActorCritic(tiny_model(tok, seed=9)), seed=2))  # from the state alone
    for a, b in zip(expected, got, strict=True):
        for key in ("old_values", "token_advantages", "returns", "old_logprobs"):
            assert torch.equal(a[key], b[key]), key


# ----------------------------------------------------------------------------------------- the objective

def ppo_batch(tok, ac, seed=0):
    """`hand_batch` with rollout-time values a little off the current ones, returns and token advantages."""
    batch = hand_batch(tok, ac.policy, seed)
    with torch.no_grad():
        _, _, values = completion_outputs(ac, batch, values=True)
    g = torch.Generator().manual_seed(seed + 100)
    n = values.numel()
    batch["old_values"] = values + (torch.rand(n, generator=g) - 0.5) * 0.8
    batch["returns"] = values + torch.randn(n, generator=g)
    batch["token_advantages"] = torch.randn(n, generator=g)
    return batch


def grads(model):
    """Every gradient by parameter name, then cleared."""
    out = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    return out


def assert_same_grads(a, b):
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], atol=1e-6, rtol=1e-4)


def test_ppo_loss_adds_the_clipped_value_loss_as_trl_computes_it():
    tok = tiny_tokenizer("chatml")
    ac = random_head(ActorCritic(tiny_model(tok)))
    batch = ppo_batch(tok, ac)
    objective = PolicyGradientObjective(PolicyLossConfig(algo="ppo", vf_coef=0.3, cliprange_value=0.2),
                                        temperature=0.7)
    loss, metrics = objective.loss(ac, batch)
    units = batch["num_units"]
    (loss / units).backward()
    got = grads(ac)

    logits, tokens, values = completion_outputs(ac, batch, values=True)
    pg = policy_loss(tempered_token_logprobs(logits, tokens, 0.7), batch["old_logprobs"], batch["token_advantages"],
                     batch["seq_ids"], 4)
    lens = batch["completion_lens"].tolist()
    vpred, mask = padded(values, lens)
    mb_values, _ = padded(batch["old_values"], lens)
    mb_return, _ = padded(batch["returns"], lens)
    # TRL's PPOTrainer: vf_loss = 0.5 masked_mean(max(...)), loss = pg_loss + vf_coef x vf_loss
    vpredclipped = torch.clamp(vpred, mb_values - 0.2, mb_values + 0.2)
    vf_losses1 = torch.square(vpred - mb_return)
    vf_losses2 = torch.square(vpredclipped - mb_return)
    vf_loss = 0.5 * (torch.max(vf_losses1, vf_losses2) * mask).sum() / mask.sum()
    vf_clipfrac = ((vf_losses2 > vf_losses1).float() * mask).sum() / mask.sum()
    expected = pg.loss / units + 0.3 * vf_loss
    expected.backward()
    assert float(loss.detach()) / units == pytest.approx(float(expected.detach()), rel=1e-5)
    assert_same_grads(got, grads(ac))
    assert got["value_head.weight"].abs().sum() > 0
    assert metrics["value_loss"] / units == pytest.approx(float(vf_loss.detach()), rel=1e-5)
    assert metrics["value_clip_frac"] / units == pytest.approx(float(vf_clipfrac), rel=1e-6)
    assert 0 < float(vf_clipfrac) < 1  # both branches of the max are exercised
    assert metrics["value_mean"] / units == pytest.approx(float(values.detach().mean()), rel=1e-5, abs=1e-6)
    assert metrics["return_mean"] / units == pytest.approx(float(batch["returns"].mean()), rel=1e-5, abs=1e-6)


@pytest.mark.parametrize("aggregation,entropy_coef", [("token", 0.0), ("sequence", 0.5)])
def test_entropy_is_logged_every_step_and_its_bonus_follows_the_formula(aggregation, entropy_coef):
    tok = tiny_tokenizer("chatml")
    model = tiny_model(tok)
    batch = hand_batch(tok, model)
    if aggregation == "sequence":
        batch["num_units"] = 4
    cfg = PolicyLossConfig(algo="rloo", aggregation=aggregation, entropy_coef=entropy_coef)
    loss, metrics = PolicyGradientObjective(cfg, temperature=0.7).loss(model, batch)
    loss.backward()
    got = grads(model)

    keep = target_positions(batch["targets"])
    logits = packed_logits(model, batch, keep)
    tempered = logits / 0.7
    entropy = -(torch.softmax(tempered, -1) * torch.log_softmax(tempered, -1)).sum(-1)
    seq_ids = batch["seq_ids"]
    per_unit = entropy if aggregation == "token" else torch.stack([entropy[seq_ids == s].mean() for s in range(4)])
    assert metrics["entropy"] / batch["num_units"] == pytest.approx(float(per_unit.mean()), rel=1e-5)
    pg = policy_loss(tempered_token_logprobs(logits, batch["targets"][0, keep], 0.7), batch["old_logprobs"],
                     batch["advantages"], seq_ids, 4, aggregation=aggregation)
    expected = pg.loss - entropy_coef * aggregate(entropy, seq_ids, 4, aggregation).total
    expected.backward()
    assert float(loss.detach()) == pytest.approx(float(expected.detach()), rel=1e-5)
    assert_same_grads(got, grads(model))


def test_explained_variance_of_a_step_is_that_of_all_its_tokens():
    tok = tiny_tokenizer("chatml")
    ac = random_head(ActorCritic(tiny_model(tok)))
    objective = PolicyGradientObjective(PolicyLossConfig(algo="ppo"))
    batches = [ppo_batch(tok, ac, seed) for seed in (0, 1)]
    with torch.no_grad():
        values = [completion_outputs(ac, b, values=True)[2] for b in batches]
    batches[1]["returns"] = batches[1]["returns"] + 20.0  # one micro-batch's errors are all off by a constant
    sums, units = {}, 0
    for batch in batches:  # what the loop does: sum the metrics over the step, divide by its units
        with torch.no_grad():
            _, metrics = objective.loss(ac, batch)
        for k, v in metrics.items():
            sums[k] = sums.get(k, 0.0) + v
        units += batch["num_units"]
    record = {k: v / units for k, v in sums.items()}
    objective.after_step(record)
    want = explained_variance(torch.cat(values), torch.cat([b["returns"] for b in batches])).item()
    assert record["explained_variance"] == pytest.approx(want, rel=1e-6)
    assert not any(k.startswith("ev_") for k in record)
    per_batch = [explained_variance(v, b["returns"]).item() for v, b in zip(values, batches)]
    assert sum(per_batch) / 2 > want + 0.2  # each alone hides it: averaging their ratios would be wrong


# ----------------------------------------------------------------------------------------- runs

def ppo_args(model_dir, prompts, out, **extra):
    return run_args(model_dir, prompts, out, reward="even_first_char", **{
        "algo": "ppo", "rollout.prompts_per_step": 8, "rollout.group_size": 2, "rollout.max_tokens": 2,
        "rollout.grad_accum": 1, "train.lr": 1e-2, "train.schedule": "constant", "samples_per_step": 0,
        "kl_coef": 0.05, "kl_in": "reward", "vf_coef": 0.5, **extra})


def test_a_tiny_ppo_run_learns_and_saves_policy_and_value_head(tmp_path, model_dir):
    from transformers import AutoModelForCausalLM

    prompts = write_prompts(tmp_path / "prompts.jsonl")
    out = tmp_path / "run"
    # 32 steps: over rollout seeds 1 to 11 every run ends above 0.85 from 0.27 to 0.53
    result = run_rl(load_config(RLConfig, None, ppo_args(model_dir, prompts, out, **{"train.max_steps": 32})))
    rewards = [r["reward_mean"] for r in result.history]
    start, end = sum(rewards[:4]) / 4, sum(rewards[-4:]) / 4
    assert end > start + 0.25 and end > 0.8, rewards
    logged = [r for r in read_jsonl(out / "metrics.jsonl") if "loss" in r]
    assert len(logged) == 32
    for r in logged:
        for key in ("value_loss", "value_clip_frac", "explained_variance", "value_mean", "return_mean", "entropy",
                    "kl", "kl_coef", "clip_frac"):
            assert key in r, key
        assert not any(k.startswith("ev_") for k in r)
    assert logged[0]["explained_variance"] == pytest.approx(0.0, abs=1e-9)  # the zero head explains nothing
    assert logged[0]["kl"] == 0.0 and logged[-1]["kl"] > 0  # the reference is the starting policy
    assert logged[-1]["entropy"] < logged[0]["entropy"]
    # final/: the policy in the HF layout, loadable as it is, and the value head next to it
    policy = AutoModelForCausalLM.from_pretrained(out / "final")
    assert policy.config.hidden_size == 64
    head = load_file(out / "final" / VALUE_HEAD)
    assert head["weight"].shape == (1, 64) and head["bias"].shape == (1,) and head["weight"].abs().sum() > 0
    assert not (out / "final" / "critic").exists()


@pytest.mark.parametrize("precision,critic", [("fp32", False), ("bf16", True)])
def test_a_crashed_ppo_run_resumes_with_the_same_rewards_and_losses(tmp_path, model_dir, precision, critic):
    prompts = write_prompts(tmp_path / "prompts.jsonl")
    extra = {"train.save_every": 3, "train.max_steps": 6, "rollout.prompts_per_step": 4, "rollout.ppo_epochs": 2,
             "rollout.max_tokens": 4, "kl_target": 0.01, "kl_horizon": 20, "train.precision": precision,
             "critic.model": model_dir if critic else ""}

    def cfg(out):
        return load_config(RLConfig, None, ppo_args(model_dir, prompts, out, **extra))

    full = run_rl(cfg(tmp_path / "full"))
    out = tmp_path / "resumed"
    with pytest.raises(Crash):
        run_rl(cfg(out), on_step=crash_at(5))
    saved = load_file(out / "checkpoints" / "step-0000003" / "trainable.safetensors")
    assert "value_head.weight" in saved and any(k.startswith("critic.") for k in saved) == critic
    resumed = run_rl(cfg(out))
    # the checkpoint after step 3 lies mid-buffer (two steps per rollout)
    assert [r["step"] for r in resumed.history] == [4, 5, 6]
    for r in resumed.history:
        expected = full.history[r["step"] - 1]
        for key in ("loss", "reward_mean", "value_loss", "value_clip_frac", "explained_variance", "entropy", "kl",
                    "kl_coef", "clip_frac", "return_mean"):
            assert r[key] == pytest.approx(expected[key], rel=1e-5, abs=1e-7), (key, r["step"])
    assert len({r["kl_coef"] for r in full.history}) > 1  # the adaptive coefficient moved and was restored
    assert full.history[0]["kl"] == 0.0  # the reference is the starting policy, computing as it does
    assert max(r["value_clip_frac"] for r in full.history) > 0  # the value clip acts in the second epoch
    assert os.path.isfile(out / "final" / VALUE_HEAD)
    assert os.path.isfile(out / "final" / "critic" / "config.json") == critic


@pytest.mark.parametrize("kl_in", ["loss", "reward"])
def test_ppo_on_a_lora_policy_measures_the_kl_with_its_adapter_off(tmp_path, model_dir, kl_in):
    prompts = write_prompts(tmp_path / "prompts.jsonl")
    out = tmp_path / "run"
    argv = ppo_args(model_dir, prompts, out, **{"model.lora.enabled": "true", "model.lora.r": 4, "kl_in": kl_in,
                                                 "train.precision": "bf16", "train.max_steps": 3, "train.lr": 5e-2})
    assert main(["rl", *argv]) == 0
    metrics = [r for r in read_jsonl(out / "metrics.jsonl") if "loss" in r]
    assert metrics[0]["kl"] == pytest.approx(0.0, abs=1e-6) and metrics[-1]["kl"] != 0
    assert os.path.isdir(out / "final" / "adapter") and os.path.isfile(out / "final" / VALUE_HEAD)


def yaml_args(out, model_dir):
    return ["--config", "configs/ppo.yaml", f"model.name={model_dir}", f"train.output_dir={out}",
            "train.max_steps=2", "train.precision=fp32", "train.progress=false", "train.save_every=0",
            "rollout.prompts_per_step=2", "rollout.max_tokens=4", "rollout.grad_accum=1", "samples_per_step=1"]


def test_the_ppo_command_runs_the_demo_config(tmp_path, model_dir, capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    out = tmp_path / "run"
    assert main(["ppo", *yaml_args(out, model_dir), "gamma=0.99"]) == 0
    assert "saved to" in capsys.readouterr().out
    metrics = [r for r in read_jsonl(out / "metrics.jsonl") if "loss" in r]
    assert [r["step"] for r in metrics] == [1, 2] and all("value_loss" in r and "entropy" in r for r in metrics)
    assert os.path.isfile(out / "final" / "config.json") and os.path.isfile(out / "final" / VALUE_HEAD)
    with open(out / "config.yaml") as f:
        text = f.read()
    assert "algo: ppo" in text and "gamma: 0.99" in text and "kl_in: reward" in text
    cfg = load_config(RLConfig, "configs/ppo.yaml")
    assert cfg.rollout.group_size == 1 and cfg.rewards[0].kind == "format" and cfg.critic.model == ""


@pytest.mark.parametrize("argv,key", [
    (["ppo", "gamma=1.5"], "gamma"),
    (["ppo", "lam=-0.1"], "lam"),
    (["ppo", "vf_coef=-1"], "vf_coef"),
    (["ppo", "kl_in=sideways"], "kl_in"),
    (["ppo", "level=sequence"], "level"),
    (["ppo", "kl_estimator=k4"], "kl_estimator"),
    (["ppo", "entropy_coef=-0.1"], "entropy_coef"),
    (["ppo", "value_lr=-1e-4"], "value_lr"),
    (["ppo", "algo=grpo"], "algo"),
    (["grpo"], "kl_in"),  # the ppo config puts the KL in the reward; GRPO keeps it in the loss
    (["rloo", "kl_in=loss", "critic.model=runs/rm/final"], "critic.model"),
])
def test_a_bad_ppo_config_is_one_line_naming_the_key(tmp_path, model_dir, capsys, monkeypatch, argv, key):
    monkeypatch.chdir(ROOT)
    out = tmp_path / "run"
    assert main([argv[0], *yaml_args(out, model_dir), *argv[1:]]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and key in err, err
    assert not out.exists()


def test_ppo_help_lists_its_keys(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["ppo", "--help"])
    assert exit_.value.code == 0
    text = capsys.readouterr().out
    for key in ("vf_coef", "cliprange_value", "gamma", "lam", "whiten_advantages", "entropy_coef", "kl_in",
                "critic.model"):
        assert key in text, key


def test_value_lr_gives_the_value_head_its_own_learning_rate(tmp_path, model_dir):
    """The head (zero at the start) moves at value_lr while the policy keeps train.lr: one Adam step moves
    each weight by about its group's rate, so the two runs' policies match and their heads differ 100x."""
    prompts = write_prompts(tmp_path / "prompts.jsonl")
    moved = {}
    for value_lr in (0.0, 1e-2):
        out = tmp_path / f"run{value_lr}"
        cfg = load_config(RLConfig, None, ppo_args(model_dir, prompts, out, **{
            "train.max_steps": 1, "train.lr": 1e-4, "value_lr": value_lr, "train.max_grad_norm": 0,
            "train.warmup_steps": 0}))
        run_rl(cfg)
        moved[value_lr] = (load_file(out / "final" / VALUE_HEAD)["weight"].abs().max().item(),
                           load_file(out / "final" / "model.safetensors"))
    (head_default, policy_default), (head_fast, policy_fast) = moved[0.0], moved[1e-2]
    assert head_default == pytest.approx(1e-4, rel=0.05) and head_fast == pytest.approx(1e-2, rel=0.05)
    for name, tensor in policy_default.items():
        torch.testing.assert_close(policy_fast[name], tensor, rtol=0, atol=0)
