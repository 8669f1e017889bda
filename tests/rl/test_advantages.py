"""Advantages on the padding-free layout: formulas, segment isolation, and TRL 1.16's numbers."""
import math

import pytest
import torch

from alignkit.rl.advantages import (
    RunningBaseline,
    batch_mean_advantages,
    gae,
    grpo_advantages,
    kl_penalised_rewards,
    ppo_token_rewards,
    rloo_advantages,
    whiten,
)
from alignkit.rl.segments import from_padded, positions_in_seq, segment_mean, to_padded
from tests.helpers.rl_packed import padded, seq_ids_for, split_flat

# Groups of different sizes, ids neither contiguous nor sorted (a singleton group among them).
GROUPS = torch.tensor([7, 3, 7, 3, 3, 9, 7, 5, 5, 7])


def _rewards(n, seed=0):
    return torch.randn(n, generator=torch.Generator().manual_seed(seed))


def test_segments_round_trip_and_isolation():
    lens = [3, 1, 5, 2]
    ids = seq_ids_for(lens)
    x = torch.arange(11, dtype=torch.float32)
    assert positions_in_seq(ids, 4).tolist() == [0, 1, 2, 0, 0, 1, 2, 3, 4, 0, 1]
    assert torch.equal(from_padded(to_padded(x, ids, 4), ids, 4), x)
    means = segment_mean(x, ids, 4)
    assert means.tolist() == [s.mean().item() for s in split_flat(x, lens)]
    with pytest.raises(ValueError, match="non-decreasing"):
        positions_in_seq(torch.tensor([0, 1, 0]), 2)


@pytest.mark.parametrize("scale", ["group", "batch", "none"])
def test_grpo_matches_formula_per_group(scale):
    r = _rewards(len(GROUPS))
    adv = grpo_advantages(r, GROUPS, scale=scale, eps=1e-4)
    for i in range(len(r)):
        members = r[GROUPS == GROUPS[i]]
        centred = r[i] - members.mean()
        if scale == "none":
            want = centred
        elif scale == "group":
            std = members.std() if len(members) > 1 else torch.tensor(0.0)
            want = centred / (std + 1e-4)
        else:
            want = centred / (r.std() + 1e-4)
        assert adv[i].item() == pytest.approx(want.item(), abs=1e-5)


def test_grpo_singleton_group_is_zero_and_groups_do_not_leak():
    r = _rewards(len(GROUPS))
    adv = grpo_advantages(r, GROUPS)
    assert adv[GROUPS == 9].item() == 0.0 and torch.isfinite(adv).all()
    r2 = r.clone()
    r2[GROUPS == 3] += torch.tensor([5.0, -2.0, 1.0])
    adv2 = grpo_advantages(r2, GROUPS)
    other = GROUPS != 3
    assert torch.equal(adv[other], adv2[other])


@pytest.mark.parametrize("scale", ["group", "batch", "none"])
def test_grpo_agrees_with_trl(scale):
    nanstd = pytest.importorskip("trl.trainer.utils").nanstd
    k = 4
    rewards = _rewards(5 * k, seed=3)
    rewards[8:12] = 1.5  # a group whose samples all agree: std 0
    # TRL lays groups out as consecutive blocks of k.
    ours = grpo_advantages(rewards, torch.arange(5).repeat_interleave(k), scale=scale)
    # trl/trainer/grpo_trainer.py, GRPOTrainer._generate_and_score_completions ("sum_then_normalize")
    mean_grouped_rewards = torch.nanmean(rewards.view(-1, k), dim=1).repeat_interleave(k, dim=0)
    if scale in ["group", "none"]:
        std_rewards = nanstd(rewards.view(-1, k), dim=1).repeat_interleave(k, dim=0)
    else:
        std_rewards = nanstd(rewards).expand_as(rewards)
    advantages = rewards - mean_grouped_rewards
    if scale != "none":
        advantages = advantages / (std_rewards + 1e-4)
    advantages = torch.nan_to_num(advantages, nan=0.0)
    torch.testing.assert_close(ours, advantages, rtol=1e-5, atol=1e-5)


def test_rloo_leave_one_out_formula_and_trl():
    r = _rewards(len(GROUPS), seed=1)
    adv = rloo_advantages(r, GROUPS)
    for i in range(len(r)):
        others = [r[j] for j in range(len(r)) if j != i and GROUPS[j] == GROUPS[i]]
        want = r[i] - sum(others) / len(others) if others else torch.tensor(0.0)
        assert adv[i].item() == pytest.approx(float(want), abs=1e-6)

    k = 3
    rewards = _rewards(4 * k, seed=2)
    ours = rloo_advantages(rewards, torch.arange(4).repeat_interleave(k))
    # trl/trainer/rloo_trainer.py, RLOOTrainer._generate_and_score_completions
    grouped_rewards = rewards.view(-1, k)
    scorable_counts = (~torch.isnan(grouped_rewards)).sum(dim=1, keepdim=True)
    grouped_sum = torch.nansum(grouped_rewards, dim=1, keepdim=True)
    baselines = ((grouped_sum - grouped_rewards) / (scorable_counts - 1)).view(-1)
    torch.testing.assert_close(ours, rewards - baselines)


def test_rloo_kl_in_reward_agrees_with_trl():
    lens = [4, 2, 6]
    ids = seq_ids_for(lens)
    g = torch.Generator().manual_seed(4)
    old, ref = -torch.rand(12, generator=g), -torch.rand(12, generator=g)
    rewards, beta = torch.tensor([1.0, -0.5, 0.25]), 0.05
    ours = kl_penalised_rewards(rewards, old - ref, ids, beta)
    old_p, mask = padded(old, lens)
    ref_p, _ = padded(ref, lens)
    # trl/trainer/rloo_trainer.py, RLOOTrainer._generate_and_score_completions (KL in the reward)
    per_token_kl = old_p - ref_p
    kl = (per_token_kl * mask).sum(-1)
    torch.testing.assert_close(ours, rewards - beta * kl)


def test_batch_mean_and_whiten():
    r = _rewards(9, seed=5) * 3 + 2
    assert batch_mean_advantages(r).sum().item() == pytest.approx(0.0, abs=1e-5)
    w = whiten(r)
    assert w.mean().item() == pytest.approx(0.0, abs=1e-5)
    assert w.var().item() == pytest.approx(1.0, rel=1e-4)  # the Bessel-corrected variance
    kept = whiten(r, shift_mean=False)
    torch.testing.assert_close(kept - r.mean(), w)


@pytest.mark.parametrize("decay", [None, 0.9])
def test_running_baseline_update_and_state(decay, tmp_path):
    base = RunningBaseline(decay=decay)
    first = torch.tensor([1.0, 3.0])
    torch.testing.assert_close(base.advantages(first), first - 2.0)  # no history: the batch mean
    batches = [first, torch.tensor([5.0, 6.0, 7.0]), torch.tensor([-1.0])]
    for b in batches:
        base.update(float(b.sum()), b.numel())
    if decay is None:
        assert base.value == pytest.approx(float(torch.cat(batches).mean()))
    else:
        want = 2.0
        for b in batches[1:]:
            want = decay * want + (1 - decay) * float(b.mean())
        assert base.value == pytest.approx(want)
    new = torch.tensor([0.5, 4.0])
    torch.testing.assert_close(base.advantages(new), new - base.value)
    torch.save(base.state_dict(), tmp_path / "s.pt")
    restored = RunningBaseline(decay=decay)
    restored.load_state_dict(torch.load(tmp_path / "s.pt"))
    for b in (base, restored):
        b.update(10.0, 4)
    assert restored.value == base.value and restored.count == base.count


def test_ppo_token_rewards_layout():
    lens = [3, 1, 4]
    ids = seq_ids_for(lens)
    scores = torch.tensor([2.0, -1.0, 0.5])
    plain = ppo_token_rewards(scores, ids)
    assert plain.tolist() == [0, 0, 2.0, -1.0, 0, 0, 0, 0.5]
    kl = torch.linspace(-0.3, 0.4, 8)
    with_kl = ppo_token_rewards(scores, ids, token_kl=kl, kl_coef=0.1)
    torch.testing.assert_close(with_kl, plain - 0.1 * kl)
    with pytest.raises(ValueError, match="at least one"):
        ppo_token_rewards(torch.tensor([1.0, 2.0, 3.0]), seq_ids_for([2, 0, 1]))


def _gae_reference(r, v, gamma, lam, last=0.0):
    """Per-sequence GAE straight from its definition, one sequence at a time."""
    n = len(r)
    adv = [0.0] * n
    for t in range(n):
        total = 0.0
        for l in range(n - t):
            nxt = v[t + l + 1] if t + l + 1 < n else last
            delta = r[t + l] + gamma * nxt - v[t + l]
            total += (gamma * lam) ** l * delta
        adv[t] = total
    return adv


@pytest.mark.parametrize("gamma,lam", [(1.0, 0.95), (0.9, 0.8), (1.0, 1.0), (0.99, 0.0)])
def test_gae_matches_definition_per_sequence(gamma, lam):
    lens = [3, 1, 6, 2]
    ids = seq_ids_for(lens)
    g = torch.Generator().manual_seed(6)
    r, v = torch.randn(12, generator=g), torch.randn(12, generator=g)
    last = torch.tensor([0.0, 0.7, -0.2, 1.3])
    adv, ret = gae(r, v, ids, 4, gamma=gamma, lam=lam, last_values=last)
    want = []
    for rs, vs, lv in zip(split_flat(r, lens), split_flat(v, lens), last.tolist()):
        want += _gae_reference(rs.tolist(), vs.tolist(), gamma, lam, lv)
    torch.testing.assert_close(adv, torch.tensor(want), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ret, adv + v)


def test_gae_special_cases_and_isolation():
    lens = [4, 3]
    ids = seq_ids_for(lens)
    r = torch.tensor([0.0, 0.0, 0.0, 1.0, 0.5, 0.0, 2.0])
    v = torch.tensor([0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7])
    # gamma = lam = 1: Monte Carlo return-to-go minus V, ending at each sequence's own end.
    _, ret = gae(r, v, ids, 2, gamma=1.0, lam=1.0)
    togo = [1.0, 1.0, 1.0, 1.0, 2.5, 2.0, 2.0]
    torch.testing.assert_close(ret, torch.tensor(togo))
    # Changing the second sequence's rewards leaves the first's advantages alone.
    r2 = r.clone()
    r2[4:] = torch.tensor([9.0, -9.0, 9.0])
    adv2, _ = gae(r2, v, ids, 2, gamma=0.9, lam=0.9)
    adv1, _ = gae(r, v, ids, 2, gamma=0.9, lam=0.9)
    assert torch.equal(adv1[:4], adv2[:4]) and not torch.equal(adv1[4:], adv2[4:])


def test_gae_of_token_rewards_has_score_reach_every_token():
    lens = [2, 3]
    ids = seq_ids_for(lens)
    rewards = ppo_token_rewards(torch.tensor([1.0, -2.0]), ids)
    adv, ret = gae(rewards, torch.zeros(5), ids, 2, gamma=1.0, lam=1.0)
    assert ret.tolist() == [1.0, 1.0, -2.0, -2.0, -2.0]
    assert not any(math.isnan(x) for x in adv.tolist())
