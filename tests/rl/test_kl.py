"""KL estimators (formulas, TRL 1.16's expressions, unbiasedness) and the KL-coefficient controllers."""
import math

import pytest
import torch

from alignkit.rl.kl import (
    AdaptiveKLController,
    FixedKLController,
    kl_k1,
    kl_k2,
    kl_k3,
    token_kl,
)
from tests.helpers.rl_packed import padded, rl_batch


def test_estimator_formulas():
    b = rl_batch([3, 2, 4], seed=1)
    logp, ref = b["logp"], b["ref"]
    log_r = ref - logp  # r = p_ref / p_policy on tokens sampled from the policy
    torch.testing.assert_close(kl_k1(logp, ref), -log_r)
    torch.testing.assert_close(kl_k2(logp, ref), 0.5 * log_r ** 2)
    torch.testing.assert_close(kl_k3(logp, ref), (log_r.exp() - 1) - log_r)
    assert (kl_k2(logp, ref) >= 0).all() and (kl_k3(logp, ref) >= 0).all()
    assert (kl_k1(logp, ref) < 0).any()  # k1 is unbiased only on average; single tokens go negative
    for name, fn in (("k1", kl_k1), ("k2", kl_k2), ("k3", kl_k3)):
        torch.testing.assert_close(token_kl(logp, ref, name), fn(logp, ref))
    with pytest.raises(ValueError, match="estimator"):
        token_kl(logp, ref, "k4")
    assert kl_k3(logp, logp).abs().max().item() == 0.0


def test_estimators_agree_with_trl_on_padded_batch():
    lens = [3, 1, 5]
    b = rl_batch(lens, seed=2)
    per_token_logps, mask = padded(b["logp"], lens)
    ref_per_token_logps, _ = padded(b["ref"], lens)
    # trl/trainer/grpo_trainer.py, GRPOTrainer._compute_loss: the KL term added to the loss
    grpo_kl = torch.exp(ref_per_token_logps - per_token_logps) - (ref_per_token_logps - per_token_logps) - 1
    ours, _ = padded(kl_k3(b["logp"], b["ref"]), lens)
    torch.testing.assert_close(ours * mask, grpo_kl * mask)
    # trl/trainer/rloo_trainer.py, RLOOTrainer._generate_and_score_completions: the KL in the reward
    old_per_token_logps, _ = padded(b["old"], lens)
    rloo_kl = old_per_token_logps - ref_per_token_logps
    ours, _ = padded(kl_k1(b["old"], b["ref"]), lens)
    torch.testing.assert_close(ours * mask, rloo_kl * mask)


def test_k1_and_k3_are_unbiased_k2_close_for_near_distributions():
    g = torch.Generator().manual_seed(3)
    logits = torch.randn(6, generator=g)
    p = torch.softmax(logits, -1)
    q = torch.softmax(logits + 0.3 * torch.randn(6, generator=g), -1)
    true_kl = (p * (p.log() - q.log())).sum().item()
    x = torch.multinomial(p, 200_000, replacement=True, generator=g)
    logp, logq = p.log()[x], q.log()[x]
    assert kl_k1(logp, logq).mean().item() == pytest.approx(true_kl, abs=3e-3)
    assert kl_k3(logp, logq).mean().item() == pytest.approx(true_kl, abs=3e-3)
    assert kl_k2(logp, logq).mean().item() == pytest.approx(true_kl, rel=0.2)


def test_fixed_controller():
    ctl = FixedKLController(0.05)
    ctl.update(current_kl=100.0, n_steps=64)
    assert ctl.value == 0.05
    other = FixedKLController(1.0)
    other.load_state_dict(ctl.state_dict())
    assert other.value == 0.05


def test_adaptive_controller_update_rule():
    ctl = AdaptiveKLController(0.1, target=6.0, horizon=10_000)
    ctl.update(current_kl=6.6, n_steps=256)  # 10% over target: proportional
    assert ctl.value == pytest.approx(0.1 * (1 + 0.1 * 256 / 10_000))
    before = ctl.value
    ctl.update(current_kl=60.0, n_steps=256)  # far over: the error is clipped at +0.2
    assert ctl.value == pytest.approx(before * (1 + 0.2 * 256 / 10_000))
    before = ctl.value
    ctl.update(current_kl=0.0, n_steps=512)  # far under: clipped at -0.2
    assert ctl.value == pytest.approx(before * (1 - 0.2 * 512 / 10_000))
    before = ctl.value
    ctl.update(current_kl=6.0, n_steps=256)  # on target: unchanged
    assert ctl.value == pytest.approx(before)
    with pytest.raises(ValueError):
        AdaptiveKLController(0.1, target=0.0, horizon=10)


def test_adaptive_controller_converges_towards_target():
    """A KL that falls as the coefficient grows: the controller settles near the target."""
    ctl = AdaptiveKLController(0.01, target=1.0, horizon=1_000)
    for _ in range(3_000):
        ctl.update(current_kl=0.1 / ctl.value, n_steps=64)
    assert 0.1 / ctl.value == pytest.approx(1.0, rel=0.05)


def test_adaptive_controller_state_round_trip(tmp_path):
    ctl = AdaptiveKLController(0.2, target=3.0, horizon=500)
    for kl in (1.0, 4.0, 3.5):
        ctl.update(kl, n_steps=32)
    torch.save(ctl.state_dict(), tmp_path / "kl.pt")  # how the loop checkpoints objective state
    resumed = AdaptiveKLController(0.2, target=3.0, horizon=500)
    resumed.load_state_dict(torch.load(tmp_path / "kl.pt"))
    assert resumed.value == ctl.value
    for c in (ctl, resumed):
        c.update(5.0, n_steps=32)
    assert resumed.value == ctl.value and not math.isclose(resumed.value, 0.2)
