"""Policy and value losses on the padding-free layout: formulas, aggregation divisors, exact gradient
accumulation, gradients in the clipped region, segment isolation, and agreement with TRL 1.16."""
import pytest
import torch

from alignkit.rl.kl import kl_k3
from alignkit.rl.losses import (
    AGGREGATION_UNITS,
    aggregate,
    clipped_surrogate,
    clipped_value_loss,
    entropy_from_logits,
    entropy_from_logprobs,
    explained_variance,
    gspo_log_ratio,
    loss_units,
    policy_loss,
)
from tests.helpers.rl_packed import padded, rl_batch, seq_ids_for, split_flat

LENS = [3, 1, 6, 2]  # different lengths, packed back to back
MAX_LEN = 8


def test_aggregation_divisors():
    ids = seq_ids_for(LENS)
    x = torch.arange(12, dtype=torch.float32)
    tok = aggregate(x, ids, 4, "token")
    assert tok.units == 12 and tok.total.item() == x.sum().item()
    seq = aggregate(x, ids, 4, "sequence")
    assert seq.units == 4
    assert seq.total.item() == pytest.approx(sum(s.mean().item() for s in split_flat(x, LENS)))
    dr = aggregate(x, ids, 4, "dr_grpo", max_completion_len=MAX_LEN)
    assert dr.units == 4
    assert (dr.total / dr.units).item() == pytest.approx(x.sum().item() / (4 * MAX_LEN))
    for agg in ("token", "sequence", "dr_grpo"):
        assert loss_units(agg, torch.tensor(LENS)) == aggregate(x, ids, 4, agg, MAX_LEN).units
        assert AGGREGATION_UNITS[agg] in ("tokens", "sequences")
    with pytest.raises(ValueError, match="max_completion_len"):
        aggregate(x, ids, 4, "dr_grpo")


@pytest.mark.parametrize("aggregation", ["token", "sequence", "dr_grpo"])
@pytest.mark.parametrize("level", ["token", "sequence"])
def test_accumulation_over_micro_batches_is_exact(aggregation, level):
    b = rl_batch(LENS, seed=1)
    logp = b["logp"].clone().requires_grad_(True)
    kw = {"aggregation": aggregation, "level": level, "max_completion_len": MAX_LEN, "kl_coef": 0.1}
    whole = policy_loss(logp, b["old"], b["adv"], b["seq_ids"], 4, ref_logp=b["ref"], **kw)
    (whole.loss / whole.units).backward()
    grad_whole = logp.grad.clone()
    logp.grad = None
    # Sequences {0, 1} and {2, 3} as two micro-batches; the loop divides each sum by the total units.
    cut = LENS[0] + LENS[1]
    parts = [policy_loss(logp[:cut], b["old"][:cut], b["adv"][:2], seq_ids_for(LENS[:2]), 2, ref_logp=b["ref"][:cut],
                         **kw),
             policy_loss(logp[cut:], b["old"][cut:], b["adv"][2:], seq_ids_for(LENS[2:]), 2, ref_logp=b["ref"][cut:],
                         **kw)]
    units = sum(p.units for p in parts)
    assert units == whole.units
    for p in parts:
        (p.loss / units).backward()
    torch.testing.assert_close(sum(p.loss for p in parts) / units, whole.loss / whole.units)
    torch.testing.assert_close(logp.grad, grad_whole)
    for key in whole.metrics:
        torch.testing.assert_close(sum(p.metrics[key] for p in parts), whole.metrics[key])


@pytest.mark.parametrize("level", ["token", "sequence"])
def test_no_token_leaks_into_another_sequence(level):
    """Under sequence aggregation the packed loss is the sum of each sequence's loss on its own, and each
    token's gradient depends only on its own sequence."""
    b = rl_batch(LENS, seed=2)
    logp = b["logp"].clone().requires_grad_(True)
    packed = policy_loss(logp, b["old"], b["adv"], b["seq_ids"], 4, aggregation="sequence", level=level)
    packed.loss.backward()
    start = 0
    for i, n in enumerate(LENS):
        own = b["logp"][start:start + n].clone().requires_grad_(True)
        alone = policy_loss(own, b["old"][start:start + n], b["adv"][i:i + 1], torch.zeros(n, dtype=torch.long), 1,
                            aggregation="sequence", level=level)
        alone.loss.backward()
        torch.testing.assert_close(logp.grad[start:start + n], own.grad)
        start += n


def _trl_grpo_loss(per_token_logps, old_per_token_logps, ref_per_token_logps, advantages, mask, *, loss_type,
                   level, epsilon_low, epsilon_high, beta, max_completion_length):
    """trl/trainer/grpo_trainer.py, GRPOTrainer._compute_loss (TRL 1.16), its expressions for the
    grpo / bnpo / dr_grpo loss types without vLLM correction, entropy masking or delta; returns the loss
    before the gradient-accumulation normaliser and the low/high clip ratios it logs."""
    advantages = advantages.unsqueeze(1)
    log_ratio = per_token_logps - old_per_token_logps
    if level == "token":
        log_importance_weights = log_ratio
    else:
        log_importance_weights = ((log_ratio * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)).unsqueeze(-1)
    coef_1 = torch.exp(log_importance_weights)
    per_token_kl = torch.exp(ref_per_token_logps - per_token_logps) - (ref_per_token_logps - per_token_logps) - 1
    coef_2 = torch.clamp(coef_1, 1 - epsilon_low, 1 + epsilon_high)
    per_token_loss = -torch.min(coef_1 * advantages, coef_2 * advantages)
    if beta != 0.0:
        per_token_loss = per_token_loss + beta * per_token_kl
    if loss_type == "grpo":
        loss = ((per_token_loss * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)).mean()
    elif loss_type == "bnpo":
        loss = (per_token_loss * mask).sum() / mask.sum().clamp(min=1.0)
    else:
        loss = (per_token_loss * mask).sum() / (per_token_loss.size(0) * max_completion_length)
    is_low_clipped = (coef_1 < 1 - epsilon_low) & (advantages < 0)
    is_high_clipped = (coef_1 > 1 + epsilon_high) & (advantages > 0)

    def global_masked_mean(x):
        if x.shape[1] == 1:
            return x.sum() / x.shape[0]
        return (x * mask).sum() / mask.sum()
    return loss, global_masked_mean(is_low_clipped.float()), global_masked_mean(is_high_clipped.float())


@pytest.mark.parametrize("loss_type,aggregation", [("grpo", "sequence"), ("bnpo", "token"), ("dr_grpo", "dr_grpo")])
@pytest.mark.parametrize("level", ["token", "sequence"])
@pytest.mark.parametrize("beta,eps_high", [(0.0, 0.2), (0.04, 0.28)])
def test_policy_loss_agrees_with_trl_grpo(loss_type, aggregation, level, beta, eps_high):
    b = rl_batch(LENS, seed=3, spread=0.4)
    # Push sequence 1 above the trust region with A > 0 and sequence 3 below it with A < 0, so both
    # clip branches occur at both levels.
    b["logp"][3], b["adv"][1] = b["old"][3] + 0.5, 1.0
    b["logp"][10:], b["adv"][3] = b["old"][10:] - 0.5, -1.0
    logp = b["logp"].clone().requires_grad_(True)
    ours = policy_loss(logp, b["old"], b["adv"], b["seq_ids"], 4, aggregation=aggregation, level=level,
                       eps_low=0.2, eps_high=eps_high, max_completion_len=MAX_LEN, ref_logp=b["ref"], kl_coef=beta)
    (ours.loss / ours.units).backward()

    logp_t = b["logp"].clone().requires_grad_(True)
    per_token_logps, mask = padded(logp_t, LENS)
    old, _ = padded(b["old"], LENS)
    ref, _ = padded(b["ref"], LENS)
    trl_loss, low, high = _trl_grpo_loss(per_token_logps, old, ref, b["adv"], mask, loss_type=loss_type, level=level,
                                         epsilon_low=0.2, epsilon_high=eps_high, beta=beta,
                                         max_completion_length=MAX_LEN)
    trl_loss.backward()
    torch.testing.assert_close(ours.loss / ours.units, trl_loss)
    torch.testing.assert_close(logp.grad, logp_t.grad)
    assert low > 0 and high > 0
    # TRL logs token means of the token-level clip flags and sequence means of the sequence-level ones;
    # ours follow the aggregation, so they are the same numbers where the two kinds of mean coincide.
    if (level == "token") == (aggregation == "token"):
        torch.testing.assert_close(ours.metrics["clip_low"] / ours.units, low)
        torch.testing.assert_close(ours.metrics["clip_high"] / ours.units, high)


def test_clipped_region_has_zero_gradient_and_asymmetric_clip():
    ratios = torch.tensor([1.5, 0.5, 1.5, 0.5, 1.1, 1.25, 0.75])
    adv = torch.tensor([1.0, -1.0, -1.0, 1.0, 2.0, 1.0, -1.0])
    old = torch.full((7,), -1.0)
    ids = seq_ids_for([2, 3, 2])

    def run(eps_low, eps_high):
        logp = (old + ratios.log()).requires_grad_(True)
        out = policy_loss(logp, old, adv, ids, 3, aggregation="token", eps_low=eps_low, eps_high=eps_high)
        out.loss.backward()
        return out, logp.grad

    out, grad = run(0.2, 0.2)
    # d/dlogp of -r A is -r A where unclipped; zero where the clipped branch is the minimum.
    want = torch.where(torch.tensor([True, True, False, False, False, True, True]), torch.zeros(7), -ratios * adv)
    torch.testing.assert_close(grad, want)
    assert out.metrics["clip_high"].item() == 2 and out.metrics["clip_low"].item() == 2
    assert out.metrics["clip_frac"].item() == 4
    _, grad = run(0.3, 0.28)  # clip-higher: 1.25 and 0.75 now fall inside the trust region
    assert grad[5].item() == pytest.approx(-1.25) and grad[6].item() == pytest.approx(0.75)
    assert grad[0].item() == 0.0 and grad[1].item() == 0.0


def test_on_policy_loss_is_the_policy_gradient():
    b = rl_batch(LENS, seed=4)
    logp = b["old"].clone().requires_grad_(True)
    out = policy_loss(logp, b["old"], b["adv"], b["seq_ids"], 4, aggregation="token")
    out.loss.backward()
    torch.testing.assert_close(logp.grad, -b["adv"][b["seq_ids"]])
    assert out.metrics["approx_kl"].item() == 0.0 and out.metrics["clip_frac"].item() == 0.0
    assert out.metrics["ratio"].item() == pytest.approx(out.units)


def test_gspo_sequence_ratio_and_gradient():
    b = rl_batch(LENS, seed=5, spread=0.05)
    log_s = gspo_log_ratio(b["logp"], b["old"], b["seq_ids"], 4)
    for i, (lp, lo) in enumerate(zip(split_flat(b["logp"], LENS), split_flat(b["old"], LENS))):
        geo = torch.prod((lp - lo).exp()) ** (1.0 / len(lp))
        assert log_s[i].exp().item() == pytest.approx(geo.item(), rel=1e-5)
    logp = b["logp"].clone().requires_grad_(True)
    out = policy_loss(logp, b["old"], b["adv"], b["seq_ids"], 4, aggregation="sequence", level="sequence")
    out.loss.backward()
    # Inside the trust region every token of sequence i gets -A_i s_i / |y_i|.
    lens = torch.tensor(LENS, dtype=torch.float32)
    want = (-b["adv"] * log_s.exp() / lens)[b["seq_ids"]]
    torch.testing.assert_close(logp.grad, want)
    torch.testing.assert_close(out.loss, (-b["adv"] * log_s.exp()).sum())


def test_approx_kl_metric_is_k3_of_old_to_new():
    b = rl_batch(LENS, seed=6)
    out = policy_loss(b["logp"], b["old"], b["adv"], b["seq_ids"], 4, aggregation="token")
    log_r = b["logp"] - b["old"]
    torch.testing.assert_close(out.metrics["approx_kl"], ((log_r.exp() - 1) - log_r).sum())
    torch.testing.assert_close(out.metrics["approx_kl"], kl_k3(b["old"], b["logp"]).sum())
    assert out.metrics["approx_kl"].item() > 0


def test_policy_loss_rejects_bad_shapes():
    b = rl_batch(LENS)
    with pytest.raises(ValueError, match="per sequence"):
        policy_loss(b["logp"], b["old"], torch.zeros(5), b["seq_ids"], 4)
    with pytest.raises(ValueError, match="GSPO"):
        policy_loss(b["logp"], b["old"], torch.zeros(12), b["seq_ids"], 4, level="sequence")


def test_clipped_surrogate_formula():
    log_ratio = torch.linspace(-0.6, 0.6, 9)
    adv = torch.tensor([1.0, -1.0, 0.5, -0.5, 2.0, -2.0, 1.0, -1.0, 0.0])
    terms = clipped_surrogate(log_ratio, adv, 0.2, 0.28)
    r = log_ratio.exp()
    want = -torch.min(r * adv, r.clamp(0.8, 1.28) * adv)
    torch.testing.assert_close(terms.loss, want)


def test_clipped_value_loss_formula_and_gradient():
    old = torch.zeros(4)
    returns = torch.tensor([1.0, 0.0, 0.1, -1.0])
    values = torch.tensor([0.5, 0.5, 0.05, -0.5], requires_grad=True)
    terms = clipped_value_loss(values, old, returns, clip_range=0.2)
    v = values.detach()
    v_clip = v.clamp(-0.2, 0.2)
    torch.testing.assert_close(terms.loss, 0.5 * torch.max((v - returns) ** 2, (v_clip - returns) ** 2))
    assert terms.clipped.tolist() == [True, False, False, True]
    terms.loss.sum().backward()
    # Where the clipped error is larger, the loss is a constant in V: no gradient.
    torch.testing.assert_close(values.grad, torch.tensor([0.0, 0.5, -0.05, 0.0]))
    plain = clipped_value_loss(values, old, returns, clip_range=None)
    torch.testing.assert_close(plain.loss, 0.5 * (v - returns) ** 2)


def test_explained_variance():
    returns = torch.tensor([1.0, 2.0, 4.0, -1.0])
    assert explained_variance(returns, returns).item() == pytest.approx(1.0)
    assert explained_variance(torch.full((4,), returns.mean().item()), returns).item() == pytest.approx(0.0, abs=1e-6)
    noisy = returns + torch.tensor([0.1, -0.1, 0.2, 0.0])
    want = 1 - (returns - noisy).var() / returns.var()
    assert explained_variance(noisy, returns).item() == pytest.approx(want.item(), rel=1e-5)
    assert torch.isnan(explained_variance(returns, torch.ones(4)))


def test_entropy_from_logits_formula_chunks_and_gradient():
    logits = (torch.randn(7, 11, generator=torch.Generator().manual_seed(7)) * 3).requires_grad_(True)
    ent = entropy_from_logits(logits, chunk_size=3)
    p = torch.softmax(logits, -1)
    direct = -(p * torch.log_softmax(logits, -1)).sum(-1)
    torch.testing.assert_close(ent, direct)
    (g1,) = torch.autograd.grad(ent.sum(), logits)
    (g2,) = torch.autograd.grad(direct.sum(), logits)
    torch.testing.assert_close(g1, g2)
    assert entropy_from_logits(logits.detach().bfloat16()).dtype == torch.float32
    assert entropy_from_logits(logits.detach().reshape(1, 7, 11)).shape == (1, 7)


def test_entropy_from_logprobs_formula_chunks_gradient_and_excluded_tokens():
    logits = (torch.randn(7, 11, generator=torch.Generator().manual_seed(9)) * 3).requires_grad_(True)
    logprobs = torch.log_softmax(logits, -1)
    ent = entropy_from_logprobs(logprobs, chunk_size=2)
    direct = -(torch.softmax(logits, -1) * torch.log_softmax(logits, -1)).sum(-1)
    torch.testing.assert_close(ent, direct)
    torch.testing.assert_close(torch.autograd.grad(ent.sum(), logits)[0], torch.autograd.grad(direct.sum(), logits)[0])
    torch.testing.assert_close(ent, entropy_from_logits(logits, temperature=1.0))
    # Tempered: the entropy of softmax(logits / T), the distribution the sampler drew from.
    torch.testing.assert_close(entropy_from_logits(logits, temperature=0.5),
                               entropy_from_logprobs(torch.log_softmax(logits / 0.5, -1)))
    # A masked token (-inf logit) has probability 0 and adds nothing: finite, and equal to the entropy
    # over the remaining tokens.
    masked = logits.detach().clone()
    masked[:, 0] = float("-inf")
    ent_masked = entropy_from_logprobs(torch.log_softmax(masked, -1))
    assert torch.isfinite(ent_masked).all()
    torch.testing.assert_close(ent_masked, entropy_from_logits(logits.detach()[:, 1:]))


def test_entropy_of_tiny_model_logits_agrees_with_trl(tiny_lm):
    trl_utils = pytest.importorskip("trl.trainer.utils")
    from alignkit.data.chat import IGNORE
    from alignkit.data.packing import pack, target_positions
    from alignkit.training.forward import packed_logits

    g = torch.Generator().manual_seed(8)
    vocab = tiny_lm.config.vocab_size
    seqs = []
    for prompt_len, completion_len in [(3, 4), (2, 1), (4, 3)]:
        ids = torch.randint(0, vocab, (prompt_len + completion_len,), generator=g).tolist()
        seqs.append((ids, [IGNORE] * prompt_len + ids[prompt_len:]))
    batch = pack(seqs)
    keep = target_positions(batch["targets"])
    with torch.no_grad():
        logits = packed_logits(tiny_lm, batch, keep)
    assert logits.shape[0] == 8  # one row per completion token
    torch.testing.assert_close(entropy_from_logits(logits, chunk_size=3), trl_utils.entropy_from_logits(logits.float()))
