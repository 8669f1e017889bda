"""Tests for alignkit.training.preference_losses.

Three kinds of check:
1. values against hand computations on small numbers, and gradients against autograd of
   an independently written formula (loops, explicit sigmoid/log; see the `ref_*` helpers)
   plus finite differences (gradcheck);
2. equivalence with TRL 1.16's own loss code, fed the same log-probs from the same logits;
3. properties the objectives are designed to have.
"""
from __future__ import annotations

import inspect
import math
from collections import defaultdict
from types import SimpleNamespace
from typing import Callable

import pytest
import torch
import torch.nn.functional as F

from alignkit.training import preference_losses as pl

F64 = torch.float64


def vec(*values: float) -> torch.Tensor:
    return torch.tensor(values, dtype=F64)


def softplus(x: float) -> float:
    """-log σ(-x) = log(1 + e^x), for hand computations."""
    return math.log1p(math.exp(x))


def random_logps(generator: torch.Generator, *shape: int) -> torch.Tensor:
    return -(torch.rand(*shape, generator=generator, dtype=F64) * 8 + 0.5)


# --------------------------------------------------------------------------- independent formulas
# Written per example with explicit probabilities so they share no code path with the module.


def ref_dpo(pc, pr, rc, rr, beta, eps):
    out = []
    for i in range(len(pc)):
        p_chosen_wins = torch.sigmoid(beta * ((pc[i] - rc[i]) - (pr[i] - rr[i])))
        out.append(-(1 - eps) * torch.log(p_chosen_wins) - eps * torch.log(1 - p_chosen_wins))
    return torch.stack(out)


def ref_ipo(pc, pr, rc, rr, beta, lc=None, lr=None):
    out = []
    for i in range(len(pc)):
        h = (pc[i] - rc[i]) / (1 if lc is None else lc[i]) - (pr[i] - rr[i]) / (1 if lr is None else lr[i])
        out.append((h - 1 / (2 * beta)) * (h - 1 / (2 * beta)))
    return torch.stack(out)


def ref_robust(pc, pr, rc, rr, beta, eps):
    out = []
    for i in range(len(pc)):
        p = torch.sigmoid(beta * ((pc[i] - rc[i]) - (pr[i] - rr[i])))
        loss_as_labelled, loss_if_flipped = -torch.log(p), -torch.log(1 - p)
        out.append(((1 - eps) * loss_as_labelled - eps * loss_if_flipped) / (1 - 2 * eps))
    return torch.stack(out)


def ref_slic(pc, pr, delta, weight, reg=None):
    target = pc if reg is None else reg
    return torch.stack([torch.clamp(delta - pc[i] + pr[i], min=0) - weight * target[i] for i in range(len(pc))])


def ref_simpo(pc, pr, lc, lr, beta, gamma):
    return torch.stack([-torch.log(torch.sigmoid(beta * pc[i] / lc[i] - beta * pr[i] / lr[i] - gamma))
                        for i in range(len(pc))])


def ref_orpo(pc, pr, lc, lr, weight):
    out = []
    for i in range(len(pc)):
        prob_c, prob_r = torch.exp(pc[i] / lc[i]), torch.exp(pr[i] / lr[i])
        odds_ratio = (prob_c / (1 - prob_c)) / (prob_r / (1 - prob_r))
        out.append(-pc[i] / lc[i] - weight * torch.log(torch.sigmoid(torch.log(odds_ratio))))
    return torch.stack(out)


def ref_rrhf(logps, lengths, counts, sft_weight):
    out = []
    for b, n in enumerate(counts):
        p = [logps[b, i] / lengths[b, i] for i in range(n)]
        rank = sum(torch.clamp(p[j] - p[i], min=0) for i in range(n) for j in range(i + 1, n))
        out.append(rank - sft_weight * logps[b, 0])
    return torch.stack(out)


def ref_pro(logps, lengths, counts, sft_weight):
    out = []
    for b, n in enumerate(counts):
        p = [logps[b, i] / lengths[b, i] for i in range(n)]
        total = 0
        for k in range(n - 1):
            total = total - torch.log(torch.exp(p[k]) / sum(torch.exp(p[i]) for i in range(k, n)))
        out.append(total - sft_weight * logps[b, 0])
    return torch.stack(out)


def ref_kto(policy, reference, desirable, kl_policy, kl_reference, beta, w_d, w_u):
    z0 = max(0.0, float((kl_policy - kl_reference).sum()) / len(kl_policy))  # a plain number: no gradient
    out = []
    for i in range(len(policy)):
        r = policy[i] - reference[i]
        if desirable[i]:
            out.append(w_d * (1 - torch.sigmoid(beta * (r - z0))))
        else:
            out.append(w_u * (1 - torch.sigmoid(beta * (z0 - r))))
    return torch.stack(out)


def ref_reward(rc, rr, margin, coef):
    return torch.stack([-torch.log(torch.sigmoid(rc[i] - rr[i] - margin[i])) + coef * (rc[i] + rr[i]) ** 2
                        for i in range(len(rc))])


# --------------------------------------------------------------------------- 1. hand values


def test_dpo_and_cdpo_hand_values():
    # h = (-1 - -2) - (-3 - -2) = 2, β·h = 1
    args = (vec(-1.0), vec(-3.0), vec(-2.0), vec(-2.0))
    assert pl.dpo_loss(*args, beta=0.5).losses.item() == pytest.approx(softplus(-1))
    cdpo = pl.dpo_loss(*args, beta=0.5, label_smoothing=0.2).losses.item()
    assert cdpo == pytest.approx(0.8 * softplus(-1) + 0.2 * softplus(1))
    metrics = pl.dpo_loss(*args, beta=0.5).metrics
    assert metrics["chosen_reward"].item() == pytest.approx(0.5)
    assert metrics["rejected_reward"].item() == pytest.approx(-0.5)
    assert metrics["reward_margin"].item() == pytest.approx(1.0)
    assert metrics["accuracy"].item() == 1.0


def test_ipo_hand_values():
    args = (vec(-1.0), vec(-3.0), vec(-2.0), vec(-2.0))
    assert pl.ipo_loss(*args, beta=0.5).losses.item() == pytest.approx((2 - 1) ** 2)
    # per-token: 1/2 - (-1)/4 = 0.75
    normalised = pl.ipo_loss(*args, beta=0.5, chosen_lengths=torch.tensor([2]), rejected_lengths=torch.tensor([4]))
    assert normalised.losses.item() == pytest.approx((0.75 - 1) ** 2)


def test_robust_dpo_hand_value():
    args = (vec(-1.0), vec(-3.0), vec(-2.0), vec(-2.0))
    value = pl.robust_dpo_loss(*args, beta=0.5, label_smoothing=0.2).losses.item()
    assert value == pytest.approx((0.8 * softplus(-1) - 0.2 * softplus(1)) / 0.6)


def test_slic_hf_hand_values():
    out = pl.slic_hf_loss(vec(-2.0, -1.0), vec(-2.5, -4.0), delta=1.0, regularization_weight=0.5)
    # row 0: hinge 1 - 0.5 = 0.5, NLL 2; row 1: margin 3 clears δ, NLL 1
    assert out.losses.tolist() == pytest.approx([0.5 + 0.5 * 2, 0.5 * 1])
    other = pl.slic_hf_loss(vec(-2.0), vec(-2.5), delta=1.0, regularization_weight=0.5,
                            regularization_logps=vec(-4.0))
    assert other.losses.item() == pytest.approx(0.5 + 0.5 * 4)


def test_simpo_hand_value():
    # 2·(-4/2) - 2·(-9/3) - 1 = 1
    out = pl.simpo_loss(vec(-4.0), vec(-9.0), torch.tensor([2]), torch.tensor([3]), beta=2.0, gamma=1.0)
    assert out.losses.item() == pytest.approx(softplus(-1))


def test_orpo_hand_value():
    # average log-probs -1 and -2
    out = pl.orpo_loss(vec(-2.0), vec(-6.0), torch.tensor([2]), torch.tensor([3]), odds_ratio_weight=0.1)
    p_c, p_r = math.exp(-1), math.exp(-2)
    log_odds = math.log(p_c / (1 - p_c)) - math.log(p_r / (1 - p_r))
    assert out.losses.item() == pytest.approx(1 + 0.1 * softplus(-log_odds))
    assert out.metrics["log_odds_ratio"].item() == pytest.approx(log_odds)


def test_rrhf_hand_value():
    # scores -2, -3, -1 (best first): pair (0,2) violated by 1, pair (1,2) by 2; NLL of the best is 2
    out = pl.rrhf_loss(vec(-2.0, -3.0, -1.0).unsqueeze(0), torch.ones(1, 3))
    assert out.losses.item() == pytest.approx(1 + 2 + 2)
    assert out.metrics["accuracy"].item() == pytest.approx(1 / 3)


def test_pro_hand_value():
    out = pl.pro_loss(vec(-1.0, -2.0, -3.0).unsqueeze(0), torch.ones(1, 3))
    e1, e2, e3 = math.exp(-1), math.exp(-2), math.exp(-3)
    assert out.losses.item() == pytest.approx(-math.log(e1 / (e1 + e2 + e3)) - math.log(e2 / (e2 + e3)))


def test_kto_hand_value():
    # r = 2 (desirable) and -1 (undesirable); z0 = mean(0.75, 0.25) = 0.5
    out = pl.kto_loss(vec(-3.0, -6.0), vec(-5.0, -5.0), torch.tensor([True, False]),
                      vec(-1.25, -1.75), vec(-2.0, -2.0), beta=0.5, desirable_weight=2.0, undesirable_weight=3.0)
    sig = lambda x: 1 / (1 + math.exp(-x))  # noqa: E731
    assert out.losses.tolist() == pytest.approx([2 * (1 - sig(0.5 * 1.5)), 3 * (1 - sig(0.5 * 1.5))])
    assert out.metrics["kl_reference_point"].tolist() == pytest.approx([0.5, 0.5])


def test_reward_model_hand_value():
    out = pl.reward_model_loss(vec(1.0), vec(0.5), margin=vec(0.25), center_rewards_coefficient=0.1)
    assert out.losses.item() == pytest.approx(softplus(-0.25) + 0.1 * 1.5 ** 2)


# --------------------------------------------------------------------------- 1b. gradients


def assert_matches_reference(ours: Callable, reference: Callable, diff: dict, fixed: dict, ref_fixed: dict):
    """Same per-example values and same gradients for every differentiable input."""
    ours_in = {k: v.detach().clone().requires_grad_() for k, v in diff.items()}
    ref_in = {k: v.detach().clone().requires_grad_() for k, v in diff.items()}
    ours_losses = ours(**ours_in, **fixed).losses
    ref_losses = reference(**ref_in, **ref_fixed)
    torch.testing.assert_close(ours_losses, ref_losses)
    # Unequal per-example weights so a gradient routed to the wrong example cannot cancel out.
    weights = torch.linspace(0.5, 1.5, ours_losses.numel(), dtype=F64)
    (ours_losses * weights).sum().backward()
    (ref_losses * weights).sum().backward()
    for name in diff:
        torch.testing.assert_close(ours_in[name].grad, ref_in[name].grad, msg=f"gradient of {name}")
    # Finite differences on our function alone also catch a term wrongly cut from the graph.
    names = list(diff)
    assert torch.autograd.gradcheck(
        lambda *xs: ours(**dict(zip(names, xs)), **fixed).losses,
        tuple(v.detach().clone().requires_grad_() for v in diff.values()),
    )


def pair_inputs(seed: int, batch: int = 4) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {name: random_logps(g, batch) for name in
            ("policy_chosen_logps", "policy_rejected_logps", "reference_chosen_logps", "reference_rejected_logps")}


def short(d: dict) -> dict:
    """Map the module's argument names onto the reference helpers' short ones."""
    names = {"policy_chosen_logps": "pc", "policy_rejected_logps": "pr", "reference_chosen_logps": "rc",
             "reference_rejected_logps": "rr", "chosen_lengths": "lc", "rejected_lengths": "lr"}
    return {names.get(k, k): v for k, v in d.items()}


@pytest.mark.parametrize("eps", [0.0, 0.15])
def test_dpo_gradient(eps):
    diff = pair_inputs(0)
    assert_matches_reference(
        pl.dpo_loss, lambda **kw: ref_dpo(**short(kw), beta=0.3, eps=eps), diff,
        {"beta": 0.3, "label_smoothing": eps}, {})


@pytest.mark.parametrize("normalise", [False, True])
def test_ipo_gradient(normalise):
    diff = pair_inputs(1)
    lengths = {"chosen_lengths": torch.tensor([3, 5, 1, 7]), "rejected_lengths": torch.tensor([2, 2, 9, 4])}
    fixed = {"beta": 0.2, **(lengths if normalise else {})}
    assert_matches_reference(pl.ipo_loss, lambda **kw: ref_ipo(**short(kw)), diff, fixed, short(fixed))


def test_robust_dpo_gradient():
    diff = pair_inputs(2)
    assert_matches_reference(
        pl.robust_dpo_loss, lambda **kw: ref_robust(**short(kw), beta=0.4, eps=0.3), diff,
        {"beta": 0.4, "label_smoothing": 0.3}, {})


@pytest.mark.parametrize("with_target", [False, True])
def test_slic_hf_gradient(with_target):
    g = torch.Generator().manual_seed(3)
    diff = {"policy_chosen_logps": random_logps(g, 6), "policy_rejected_logps": random_logps(g, 6)}
    if with_target:
        diff["regularization_logps"] = random_logps(g, 6)
    reference = lambda **kw: ref_slic(kw["policy_chosen_logps"], kw["policy_rejected_logps"],  # noqa: E731
                                      2.0, 0.3, kw.get("regularization_logps"))
    assert_matches_reference(pl.slic_hf_loss, reference, diff, {"delta": 2.0, "regularization_weight": 0.3}, {})


def test_simpo_gradient():
    g = torch.Generator().manual_seed(4)
    diff = {"policy_chosen_logps": random_logps(g, 4), "policy_rejected_logps": random_logps(g, 4)}
    fixed = {"chosen_lengths": torch.tensor([3, 1, 4, 2]), "rejected_lengths": torch.tensor([5, 2, 2, 6]),
             "beta": 2.5, "gamma": 0.7}
    assert_matches_reference(pl.simpo_loss, lambda **kw: ref_simpo(**short(kw)), diff, fixed, short(fixed))


def test_orpo_gradient():
    g = torch.Generator().manual_seed(5)
    diff = {"policy_chosen_logps": random_logps(g, 4), "policy_rejected_logps": random_logps(g, 4)}
    fixed = {"chosen_lengths": torch.tensor([3, 1, 4, 2]), "rejected_lengths": torch.tensor([5, 2, 2, 6])}
    assert_matches_reference(
        pl.orpo_loss, lambda **kw: ref_orpo(**short(kw), weight=0.25), diff,
        {**fixed, "odds_ratio_weight": 0.25}, short(fixed))


@pytest.mark.parametrize("loss_fn, reference", [(pl.rrhf_loss, ref_rrhf), (pl.pro_loss, ref_pro)])
def test_ranked_gradient_with_ragged_rows(loss_fn, reference):
    g = torch.Generator().manual_seed(6)
    counts = [4, 2, 3]
    mask = torch.tensor([[i < n for i in range(4)] for n in counts])
    lengths = torch.randint(1, 9, (3, 4), generator=g).masked_fill(~mask, 0)
    logps = random_logps(g, 3, 4)
    assert_matches_reference(
        loss_fn, lambda **kw: reference(kw["policy_logps"], kw["lengths"], counts, 0.4),
        {"policy_logps": logps}, {"lengths": lengths, "response_mask": mask, "sft_weight": 0.4},
        {"lengths": lengths.to(F64)})


def test_kto_gradient():
    g = torch.Generator().manual_seed(7)
    diff = {"policy_logps": random_logps(g, 5), "reference_logps": random_logps(g, 5)}
    kl_policy, kl_reference = random_logps(g, 5), random_logps(g, 5) - 1.0  # positive KL so z0 is not clamped
    desirable = torch.tensor([True, False, True, True, False])
    fixed = {"is_desirable": desirable, "policy_kl_logps": kl_policy, "reference_kl_logps": kl_reference,
             "beta": 0.3, "desirable_weight": 1.5, "undesirable_weight": 0.7}
    reference = lambda **kw: ref_kto(kw["policy_logps"], kw["reference_logps"], desirable.tolist(),  # noqa: E731
                                     kl_policy, kl_reference, 0.3, 1.5, 0.7)
    assert_matches_reference(pl.kto_loss, reference, diff, fixed, {})


def test_reward_model_gradient():
    g = torch.Generator().manual_seed(8)
    diff = {"chosen_rewards": torch.randn(5, generator=g, dtype=F64),
            "rejected_rewards": torch.randn(5, generator=g, dtype=F64)}
    margin = torch.rand(5, generator=g, dtype=F64)
    reference = lambda **kw: ref_reward(kw["chosen_rewards"], kw["rejected_rewards"], margin, 0.05)  # noqa: E731
    assert_matches_reference(pl.reward_model_loss, reference, diff,
                             {"margin": margin, "center_rewards_coefficient": 0.05}, {})


# --------------------------------------------------------------------------- 2. equivalence with TRL 1.16
# TRL computes these losses inside trainer methods that run a model. Each test builds a bare
# trainer with `object.__new__` and sets only the attributes that method reads, then hands
# it a stub model whose outputs come from one random logits tensor. Our side gets summed
# log-probs derived from a copy of the same logits, so values and gradients must agree.

VOCAB, SEQ = 13, 8


class OneProcessAccelerator:
    """Stands in for accelerate.Accelerator on a single CPU process: every gather is the identity."""

    device = torch.device("cpu")

    def gather(self, tensor):
        return tensor

    def gather_for_metrics(self, tensor):
        return tensor


class FusedHeadStub:
    """Answers `model(..., labels=..., fused_lm_head=True)` as TRL's `add_fused_lm_head` does:
    per-token log-probs of the next-token labels, zero where the label is -100."""

    training = False

    def __init__(self, *logits_for_ids: tuple[torch.Tensor, torch.Tensor]):
        self.logits_for_ids = logits_for_ids

    def __call__(self, input_ids, labels, fused_lm_head, **_):
        from trl.trainer.utils import FusedCausalLMOutput

        assert fused_lm_head
        logits = next(lg for ids, lg in self.logits_for_ids if torch.equal(ids, input_ids))
        next_labels = labels[:, 1:]
        keep = next_labels != -100
        log_probs = torch.log_softmax(logits[:, :-1], dim=-1).gather(-1, next_labels.clamp(min=0).unsqueeze(-1))
        log_probs = log_probs.squeeze(-1).masked_fill(~keep, 0.0)
        zeros = torch.zeros_like(log_probs).detach()
        return FusedCausalLMOutput(log_probs=log_probs, entropy=zeros, mean_logits=zeros,
                                   is_top1=zeros.bool(), label_mask=keep)


def random_rows(g: torch.Generator, rows: int, prompt_len: int | None = None, completion_len: int | None = None):
    """Right-padded token rows: returns (input_ids, attention_mask, completion_mask)."""
    input_ids = torch.randint(1, VOCAB, (rows, SEQ), generator=g)
    attention = torch.zeros(rows, SEQ, dtype=torch.long)
    completion = torch.zeros(rows, SEQ, dtype=torch.long)
    for r in range(rows):
        p = prompt_len or int(torch.randint(1, 4, (1,), generator=g))
        c = completion_len or int(torch.randint(1, SEQ - p + 1, (1,), generator=g))
        attention[r, : p + c] = 1
        completion[r, p: p + c] = 1
    input_ids = input_ids.masked_fill(attention == 0, 0)
    return input_ids, attention, completion


def summed_logps(logits: torch.Tensor, input_ids: torch.Tensor, completion_mask: torch.Tensor):
    """Our side: summed response log-probs and response token counts from the same logits."""
    per_token = torch.log_softmax(logits[:, :-1], dim=-1).gather(-1, input_ids[:, 1:].unsqueeze(-1)).squeeze(-1)
    return (per_token * completion_mask[:, 1:]).sum(dim=1), completion_mask.sum(dim=1)


def bare(trainer_class, **attributes):
    trainer = object.__new__(trainer_class)
    for name, value in attributes.items():
        setattr(trainer, name, value)
    return trainer


def two_leaves(g: torch.Generator, rows: int) -> tuple[torch.Tensor, torch.Tensor]:
    logits = torch.randn(rows, SEQ, VOCAB, generator=g, dtype=F64) * 2
    return logits.clone().requires_grad_(), logits.clone().requires_grad_()


def metric_dict() -> dict:
    return {"train": defaultdict(list), "eval": defaultdict(list)}


@pytest.mark.parametrize("loss_type", ["sigmoid", "ipo", "robust"])
def test_dpo_family_matches_trl_dpo_trainer(loss_type):
    # Calls trl.DPOTrainer._compute_loss (trl/trainer/dpo_trainer.py) with loss_type in
    # {"sigmoid", "ipo", "robust"}. TRL's "ipo" divides by completion token counts, so ours
    # gets the lengths; TRL's "sigmoid" ignores label_smoothing (cDPO is checked against CPO below).
    from trl import DPOTrainer

    g = torch.Generator().manual_seed(10)
    pairs, beta, eps = 3, 0.7, (0.2 if loss_type == "robust" else 0.0)
    input_ids, attention, completion = random_rows(g, 2 * pairs)
    trl_logits, our_logits = two_leaves(g, 2 * pairs)
    ref_chosen, ref_rejected = random_logps(g, pairs), random_logps(g, pairs)
    trainer = bare(DPOTrainer, model=FusedHeadStub(), accelerator=OneProcessAccelerator(), aux_loss_enabled=False,
                   ld_alpha=None, precompute_ref_logps=True, f_divergence_type="reverse_kl", loss_types=[loss_type],
                   loss_weights=[1.0], beta=beta, label_smoothing=eps, use_weighting=False, _metrics=metric_dict(),
                   _total_train_tokens=0, _tp_size=1)
    stub = FusedHeadStub((input_ids, trl_logits))
    trainer.model = stub
    inputs = {"input_ids": input_ids, "attention_mask": attention, "completion_mask": completion,
              "ref_chosen_logps": ref_chosen, "ref_rejected_logps": ref_rejected}
    trl_loss = DPOTrainer._compute_loss(trainer, stub, inputs, False)

    logps, lengths = summed_logps(our_logits, input_ids, completion)
    args = (logps[:pairs], logps[pairs:], ref_chosen, ref_rejected)
    if loss_type == "sigmoid":
        ours = pl.dpo_loss(*args, beta=beta)
    elif loss_type == "ipo":
        ours = pl.ipo_loss(*args, beta=beta, chosen_lengths=lengths[:pairs], rejected_lengths=lengths[pairs:])
    else:
        ours = pl.robust_dpo_loss(*args, beta=beta, label_smoothing=eps)

    torch.testing.assert_close(ours.losses.mean(), trl_loss)
    trl_loss.backward()
    ours.losses.mean().backward()
    torch.testing.assert_close(our_logits.grad, trl_logits.grad)
    logged = trainer._metrics["eval"]
    assert ours.metrics["chosen_reward"].mean().item() == pytest.approx(logged["rewards/chosen"][0])
    assert ours.metrics["reward_margin"].mean().item() == pytest.approx(logged["rewards/margins"][0])
    assert ours.metrics["accuracy"].mean().item() == pytest.approx(logged["rewards/accuracies"][0])


def test_cdpo_matches_trl_cpo_sigmoid_with_label_smoothing():
    # Calls trl.experimental.cpo.CPOTrainer.cpo_loss with loss_type="sigmoid": it is
    # -(1-ε)·logσ(β·(a - b)) - ε·logσ(-β·(a - b)) of its two inputs, so given the chosen and
    # rejected *log-ratios* it is exactly cDPO (TRL 1.16's DPO "sigmoid" dropped label_smoothing).
    from trl.experimental.cpo import CPOTrainer

    inputs = pair_inputs(11, batch=5)
    trainer = bare(CPOTrainer, alpha=0.0, loss_type="sigmoid", beta=0.4, label_smoothing=0.2,
                   accelerator=OneProcessAccelerator())
    trl_in = {k: v.clone().requires_grad_() for k, v in inputs.items()}
    our_in = {k: v.clone().requires_grad_() for k, v in inputs.items()}
    trl_losses, _, _ = CPOTrainer.cpo_loss(
        trainer, trl_in["policy_chosen_logps"] - trl_in["reference_chosen_logps"],
        trl_in["policy_rejected_logps"] - trl_in["reference_rejected_logps"])
    ours = pl.dpo_loss(**our_in, beta=0.4, label_smoothing=0.2).losses
    torch.testing.assert_close(ours, trl_losses)
    trl_losses.sum().backward()
    ours.sum().backward()
    for name in inputs:
        torch.testing.assert_close(our_in[name].grad, trl_in[name].grad)


def cpo_style_batch(g: torch.Generator, pairs: int, prompt_len: int | None = None,
                    chosen_len: int | None = None) -> tuple[dict, torch.Tensor]:
    """A CPO/ORPO-trainer batch (chosen_*/rejected_* keys, prompt labels -100) and its completion mask."""
    chosen = random_rows(g, pairs, prompt_len, chosen_len)
    rejected = random_rows(g, pairs, prompt_len)
    batch = {}
    for side, (ids, attention, completion) in (("chosen", chosen), ("rejected", rejected)):
        batch[f"{side}_input_ids"] = ids
        batch[f"{side}_attention_mask"] = attention
        batch[f"{side}_labels"] = ids.masked_fill(completion == 0, -100)
    return batch, torch.cat([chosen[2], rejected[2]])


class LogitsStub:
    """A model whose forward returns fixed logits (TRL's CPO/ORPO/reward trainers read `.logits`)."""

    training = False

    def __init__(self, logits: torch.Tensor):
        self.logits = logits

    def __call__(self, *args, **kwargs):
        return SimpleNamespace(logits=self.logits)


def test_simpo_matches_trl_cpo_trainer():
    # Calls trl.experimental.cpo.CPOTrainer.get_batch_loss_metrics with loss_type="simpo" and
    # cpo_alpha=0 (no behaviour-cloning term): TRL averages log-probs over completion tokens itself.
    from trl.experimental.cpo import CPOTrainer

    g = torch.Generator().manual_seed(12)
    pairs, beta, gamma = 3, 2.0, 0.6
    batch, completion = cpo_style_batch(g, pairs)
    trl_logits, our_logits = two_leaves(g, 2 * pairs)
    trainer = bare(CPOTrainer, is_encoder_decoder=False, pad_token_id=0, accelerator=OneProcessAccelerator(),
                   aux_loss_enabled=False, cpo_alpha=0.0, loss_type="simpo", alpha=0.0, simpo_gamma=gamma,
                   beta=beta, label_smoothing=0.0)
    trl_loss, trl_metrics = CPOTrainer.get_batch_loss_metrics(trainer, LogitsStub(trl_logits), batch, "train")

    ids = torch.cat([batch["chosen_input_ids"], batch["rejected_input_ids"]])
    logps, lengths = summed_logps(our_logits, ids, completion)
    ours = pl.simpo_loss(logps[:pairs], logps[pairs:], lengths[:pairs], lengths[pairs:], beta=beta, gamma=gamma)
    torch.testing.assert_close(ours.losses.mean(), trl_loss)
    trl_loss.backward()
    ours.losses.mean().backward()
    torch.testing.assert_close(our_logits.grad, trl_logits.grad)
    assert ours.metrics["chosen_reward"].mean().item() == pytest.approx(trl_metrics["rewards/chosen"])
    assert ours.metrics["reward_margin"].mean().item() == pytest.approx(trl_metrics["rewards/margins"])


def test_orpo_matches_trl_orpo_trainer():
    # Calls trl.experimental.orpo.ORPOTrainer.get_batch_loss_metrics. TRL's NLL is a token mean
    # over the whole chosen sequences of the batch, ours a per-example token mean over the
    # response; they coincide when the prompt is one (never predicted) token and every chosen
    # response has the same length, which this batch has.
    from trl.experimental.orpo import ORPOTrainer

    g = torch.Generator().manual_seed(13)
    pairs, weight = 3, 0.3
    batch, completion = cpo_style_batch(g, pairs, prompt_len=1, chosen_len=SEQ - 1)
    trl_logits, our_logits = two_leaves(g, 2 * pairs)
    trainer = bare(ORPOTrainer, is_encoder_decoder=False, padding_value=0, accelerator=OneProcessAccelerator(),
                   aux_loss_enabled=False, beta=weight)
    trl_loss, trl_metrics = ORPOTrainer.get_batch_loss_metrics(trainer, LogitsStub(trl_logits), batch, "train")

    ids = torch.cat([batch["chosen_input_ids"], batch["rejected_input_ids"]])
    logps, lengths = summed_logps(our_logits, ids, completion)
    ours = pl.orpo_loss(logps[:pairs], logps[pairs:], lengths[:pairs], lengths[pairs:], odds_ratio_weight=weight)
    # float32 tolerance: TRL computes the odds-ratio term in float32
    torch.testing.assert_close(ours.losses.mean(), trl_loss, rtol=1e-5, atol=1e-6)
    trl_loss.backward()
    ours.losses.mean().backward()
    torch.testing.assert_close(our_logits.grad, trl_logits.grad, rtol=1e-5, atol=1e-6)
    assert ours.metrics["nll"].mean().item() == pytest.approx(trl_metrics["nll_loss"])
    assert ours.metrics["log_odds_ratio"].mean().item() == pytest.approx(trl_metrics["log_odds_chosen"])


def test_orpo_odds_ratio_term_matches_trl_per_example():
    # Calls trl.experimental.orpo.ORPOTrainer.odds_ratio_loss, which returns λ·logσ(log-odds)
    # per example from average log-probs; ours minus its NLL term must be the negative of it.
    from trl.experimental.orpo import ORPOTrainer

    g = torch.Generator().manual_seed(14)
    # float32, because TRL's odds_ratio_loss casts its inputs to float32
    chosen, rejected = random_logps(g, 6).float(), random_logps(g, 6).float()
    chosen_len, rejected_len = torch.randint(1, 20, (6,), generator=g), torch.randint(1, 20, (6,), generator=g)
    trainer = bare(ORPOTrainer, beta=0.2, accelerator=OneProcessAccelerator())
    trl_losses, _, _, _, trl_mean_log_odds = ORPOTrainer.odds_ratio_loss(
        trainer, chosen / chosen_len, rejected / rejected_len)
    ours = pl.orpo_loss(chosen, rejected, chosen_len, rejected_len, odds_ratio_weight=0.2)
    torch.testing.assert_close(ours.losses - ours.metrics["nll"], -trl_losses)
    assert ours.metrics["log_odds_ratio"].mean().item() == pytest.approx(trl_mean_log_odds.item())


@pytest.mark.parametrize("kl_offset", [0.8, -0.8])  # z0 positive, and z0 clamped to 0
def test_kto_matches_trl_kto_trainer(kl_offset):
    # Calls trl.KTOTrainer._compute_loss (trl/trainer/kto_trainer.py) with loss_type="kto",
    # precomputed reference log-probs and the KL term on.
    from trl import KTOTrainer

    g = torch.Generator().manual_seed(15)
    rows, beta, w_d, w_u = 5, 0.4, 1.3, 0.6
    labels = torch.tensor([True, False, True, True, False])
    input_ids, attention, completion = random_rows(g, rows)
    kl_ids, kl_attention, kl_completion = random_rows(g, rows)
    trl_logits, our_logits = two_leaves(g, rows)
    kl_logits = torch.randn(rows, SEQ, VOCAB, generator=g, dtype=F64)
    policy_kl, _ = summed_logps(kl_logits, kl_ids, kl_completion)
    ref_kl = policy_kl - kl_offset + 0.1 * torch.randn(rows, generator=g, dtype=F64)
    ref_logps = random_logps(g, rows)
    stub = FusedHeadStub((input_ids, trl_logits), (kl_ids, kl_logits))
    trainer = bare(KTOTrainer, model=stub, accelerator=OneProcessAccelerator(), calculate_KL=True,
                   aux_loss_enabled=False, precompute_ref_logps=True, loss_type="kto", beta=beta,
                   desirable_weight=w_d, undesirable_weight=w_u, _metrics=metric_dict(),
                   _total_train_tokens=0, _tp_size=1)
    inputs = {"label": labels, "input_ids": input_ids, "attention_mask": attention, "completion_mask": completion,
              "KL_input_ids": kl_ids, "KL_attention_mask": kl_attention, "KL_completion_mask": kl_completion,
              "ref_logps": ref_logps, "ref_KL_logps": ref_kl}
    trl_loss = KTOTrainer._compute_loss(trainer, stub, inputs, False)

    logps, _ = summed_logps(our_logits, input_ids, completion)
    ours = pl.kto_loss(logps, ref_logps, labels, policy_kl, ref_kl, beta=beta,
                       desirable_weight=w_d, undesirable_weight=w_u)
    torch.testing.assert_close(ours.losses.mean(), trl_loss)
    trl_loss.backward()
    ours.losses.mean().backward()
    torch.testing.assert_close(our_logits.grad, trl_logits.grad)
    assert ours.metrics["kl_reference_point"][0].item() == pytest.approx(trainer._metrics["eval"]["kl"][0])


@pytest.mark.parametrize("with_margin, coefficient", [(False, None), (True, 0.05)])
def test_reward_model_matches_trl_reward_trainer(with_margin, coefficient):
    # Calls trl.RewardTrainer.compute_loss (trl/trainer/reward_trainer.py); the stub model's
    # logits are the rewards, chosen rows first as TRL's collator lays them out.
    from trl import RewardTrainer

    g = torch.Generator().manual_seed(16)
    pairs = 4
    rewards = torch.randn(2 * pairs, generator=g, dtype=F64) * 2
    trl_rewards, our_rewards = rewards.clone().requires_grad_(), rewards.clone().requires_grad_()
    margin = torch.rand(pairs, generator=g, dtype=F64)
    stub = LogitsStub(trl_rewards.unsqueeze(-1))
    trainer = bare(RewardTrainer, model=stub, accelerator=OneProcessAccelerator(), _metrics=metric_dict(),
                   _total_train_tokens=0, _tp_size=1,
                   args=SimpleNamespace(center_rewards_coefficient=coefficient))
    inputs = {"input_ids": torch.ones(2 * pairs, 3, dtype=torch.long),
              "attention_mask": torch.ones(2 * pairs, 3, dtype=torch.long)}
    if with_margin:
        inputs["margin"] = margin
    trl_loss = RewardTrainer.compute_loss(trainer, stub, inputs)

    ours = pl.reward_model_loss(our_rewards[:pairs], our_rewards[pairs:], margin=margin if with_margin else None,
                                center_rewards_coefficient=coefficient or 0.0)
    torch.testing.assert_close(ours.losses.mean(), trl_loss)
    trl_loss.backward()
    ours.losses.mean().backward()
    torch.testing.assert_close(our_rewards.grad, trl_rewards.grad)
    assert ours.metrics["accuracy"].mean().item() == pytest.approx(trainer._metrics["eval"]["accuracy"][0])


# --------------------------------------------------------------------------- 3. properties


def test_dpo_loss_falls_as_chosen_logprob_rises():
    chosen = torch.linspace(-12.0, -2.0, 11, dtype=F64).requires_grad_()
    others = [torch.full((11,), -7.0, dtype=F64) for _ in range(3)]
    out = pl.dpo_loss(chosen, *others, beta=0.5)
    assert bool((out.losses[1:] < out.losses[:-1]).all())
    out.losses.sum().backward()
    assert bool((chosen.grad < 0).all())


@pytest.mark.parametrize("beta", [0.1, 0.5, 2.0])
def test_ipo_is_minimised_at_margin_half_inverse_beta(beta):
    target = 1 / (2 * beta)
    margins = torch.tensor([target - 0.3, target, target + 0.3], dtype=F64).requires_grad_()
    zeros = torch.zeros(3, dtype=F64)
    out = pl.ipo_loss(margins, zeros, zeros, zeros, beta=beta)
    out.losses.sum().backward()
    assert out.losses[1].item() == pytest.approx(0.0, abs=1e-12)
    assert margins.grad[1].item() == pytest.approx(0.0, abs=1e-12)
    assert out.losses[0] > 0 and out.losses[2] > 0


def test_robust_dpo_is_unbiased_under_flipped_labels():
    # The defining property: if a label is flipped with probability ε, the expected robust
    # loss equals the clean DPO loss. cDPO does not have it, which is why both exist.
    eps, beta = 0.25, 0.5
    inputs = pair_inputs(20, batch=6)
    swapped = {"policy_chosen_logps": inputs["policy_rejected_logps"],
               "policy_rejected_logps": inputs["policy_chosen_logps"],
               "reference_chosen_logps": inputs["reference_rejected_logps"],
               "reference_rejected_logps": inputs["reference_chosen_logps"]}
    expected = ((1 - eps) * pl.robust_dpo_loss(**inputs, beta=beta, label_smoothing=eps).losses
                + eps * pl.robust_dpo_loss(**swapped, beta=beta, label_smoothing=eps).losses)
    clean = pl.dpo_loss(**inputs, beta=beta).losses
    torch.testing.assert_close(expected, clean)
    cdpo_expected = ((1 - eps) * pl.dpo_loss(**inputs, beta=beta, label_smoothing=eps).losses
                     + eps * pl.dpo_loss(**swapped, beta=beta, label_smoothing=eps).losses)
    assert not torch.allclose(cdpo_expected, clean)


def test_smoothed_variants_reduce_to_dpo_without_noise():
    inputs = pair_inputs(21)
    plain = pl.dpo_loss(**inputs, beta=0.3).losses
    torch.testing.assert_close(pl.robust_dpo_loss(**inputs, beta=0.3, label_smoothing=0.0).losses, plain)
    assert not torch.allclose(pl.dpo_loss(**inputs, beta=0.3, label_smoothing=0.1).losses, plain)


def test_dpo_depends_only_on_policy_minus_reference():
    inputs = pair_inputs(22)
    shifted = {k: v + 3.0 for k, v in inputs.items()}  # same log-ratios
    torch.testing.assert_close(pl.dpo_loss(**shifted).losses, pl.dpo_loss(**inputs).losses)


def test_simpo_ignores_reference_and_normalises_length():
    params = inspect.signature(pl.simpo_loss).parameters
    assert not any("reference" in name for name in params)
    chosen, rejected = vec(-6.0, -10.0), vec(-9.0, -4.0)
    lc, lr = torch.tensor([2, 5]), torch.tensor([3, 1])
    base = pl.simpo_loss(chosen, rejected, lc, lr, beta=2.0, gamma=0.5).losses
    # Repeating each response three times triples both the sum and the length: nothing changes.
    tripled = pl.simpo_loss(3 * chosen, 3 * rejected, 3 * lc, 3 * lr, beta=2.0, gamma=0.5).losses
    torch.testing.assert_close(tripled, base)
    assert not torch.allclose(pl.simpo_loss(chosen, rejected, lc, 2 * lr, beta=2.0, gamma=0.5).losses, base)
    # γ is a target margin: raising it raises the loss.
    assert bool((pl.simpo_loss(chosen, rejected, lc, lr, beta=2.0, gamma=1.5).losses > base).all())


def test_slic_hinge_is_inactive_beyond_delta():
    chosen = torch.tensor([-1.0, -1.0], dtype=F64, requires_grad=True)
    rejected = torch.tensor([-5.0, -1.5], dtype=F64, requires_grad=True)  # margins 4 (> δ) and 0.5 (< δ)
    out = pl.slic_hf_loss(chosen, rejected, delta=1.0, regularization_weight=0.0)
    out.losses.sum().backward()
    assert out.losses[0].item() == 0.0 and rejected.grad[0].item() == 0.0
    assert out.losses[1].item() > 0 and rejected.grad[1].item() > 0


def test_orpo_prefers_more_likely_chosen():
    lengths = torch.tensor([4, 4])
    out = pl.orpo_loss(vec(-2.0, -8.0), vec(-8.0, -2.0), lengths, lengths)
    assert out.metrics["log_odds_ratio"][0] > 0 > out.metrics["log_odds_ratio"][1]
    assert out.losses[0] < out.losses[1]


def test_rrhf_only_sft_when_ranking_already_right():
    logps = vec(-1.0, -2.0, -3.0).unsqueeze(0)
    out = pl.rrhf_loss(logps, torch.ones(1, 3), sft_weight=0.5)
    assert out.metrics["rank_loss"].item() == 0.0
    assert out.losses.item() == pytest.approx(0.5 * 1.0)


def test_pro_with_two_responses_is_bradley_terry_on_average_logprobs():
    g = torch.Generator().manual_seed(23)
    logps, lengths = random_logps(g, 5, 2), torch.randint(1, 9, (5, 2), generator=g)
    scores = logps / lengths
    expected = -F.logsigmoid(scores[:, 0] - scores[:, 1])
    torch.testing.assert_close(pl.pro_loss(logps, lengths).losses, expected)


def test_pro_is_invariant_to_a_shared_per_token_shift():
    g = torch.Generator().manual_seed(24)
    logps, lengths = random_logps(g, 3, 4), torch.randint(1, 9, (3, 4), generator=g)
    shifted = logps - 0.7 * lengths  # every score drops by 0.7
    torch.testing.assert_close(pl.pro_loss(shifted, lengths).losses, pl.pro_loss(logps, lengths).losses)


@pytest.mark.parametrize("loss_fn", [pl.rrhf_loss, pl.pro_loss])
def test_ranked_padding_is_ignored_even_if_garbage(loss_fn):
    logps = vec(-1.0, -3.0, -2.0).unsqueeze(0).requires_grad_()
    out = loss_fn(logps, torch.tensor([[1, 2, 1]]), sft_weight=0.3)
    padded = torch.cat([logps.detach(), vec(float("nan"), 5.0).unsqueeze(0)], dim=1).requires_grad_()
    mask = torch.tensor([[True, True, True, False, False]])
    out_padded = loss_fn(padded, torch.tensor([[1, 2, 1, 0, 0]]), response_mask=mask, sft_weight=0.3)
    torch.testing.assert_close(out_padded.losses, out.losses)
    out.losses.sum().backward()
    out_padded.losses.sum().backward()
    torch.testing.assert_close(padded.grad[:, :3], logps.grad)
    assert padded.grad[:, 3:].eq(0).all()


def test_kto_reference_point_is_detached_and_clamped():
    policy, reference = vec(-3.0, -4.0).requires_grad_(), vec(-3.5, -3.5)
    kl_policy = vec(-2.0, -2.0).requires_grad_()
    desirable = torch.tensor([True, False])
    out = pl.kto_loss(policy, reference, desirable, kl_policy, vec(-3.0, -3.0))
    out.losses.sum().backward()
    assert kl_policy.grad is None and policy.grad is not None
    # Negative KL estimates clamp to 0: any negative value gives the same loss as exactly 0.
    negative = pl.kto_loss(policy, reference, desirable, vec(-5.0, -6.0), vec(-2.0, -2.0)).losses
    zero = pl.kto_loss(policy, reference, desirable, vec(-2.0, -2.0), vec(-2.0, -2.0)).losses
    torch.testing.assert_close(negative, zero)


def test_kto_weights_scale_only_their_own_examples():
    args = (vec(-3.0, -4.0), vec(-3.5, -3.5), torch.tensor([True, False]), vec(-2.0), vec(-2.5))
    base = pl.kto_loss(*args).losses
    heavier = pl.kto_loss(*args, desirable_weight=3.0).losses
    assert heavier[0].item() == pytest.approx(3 * base[0].item())
    assert heavier[1].item() == pytest.approx(base[1].item())


def test_reward_centring_term_vanishes_for_centred_rewards():
    rc, rr = vec(1.5, -0.2), vec(-1.5, 0.2)
    torch.testing.assert_close(pl.reward_model_loss(rc, rr, center_rewards_coefficient=0.5).losses,
                               pl.reward_model_loss(rc, rr).losses)
    # Shifting both rewards leaves Bradley-Terry unchanged, so only the centring term grows.
    assert bool((pl.reward_model_loss(rc + 2, rr + 2, center_rewards_coefficient=0.5).losses
                 > pl.reward_model_loss(rc, rr, center_rewards_coefficient=0.5).losses).all())


def test_reward_margin_demands_a_larger_gap():
    rc, rr = vec(1.0, 1.0), vec(0.0, 0.0)
    assert bool((pl.reward_model_loss(rc, rr, margin=vec(0.5, 0.5)).losses > pl.reward_model_loss(rc, rr).losses).all())


# One call per loss, on a batch from `pair_inputs` plus per-example lengths and labels, for the
# properties every loss shares.
def _every_loss(b: dict[str, torch.Tensor], lc: torch.Tensor, lr: torch.Tensor,
                desirable: torch.Tensor) -> dict[str, pl.LossOutput]:
    pc, pr = b["policy_chosen_logps"], b["policy_rejected_logps"]
    ranked = torch.stack([pc, pr, b["reference_chosen_logps"]], dim=1)
    ranked_lengths = torch.stack([lc, lr, lc], dim=1)
    return {
        "dpo": pl.dpo_loss(**b, label_smoothing=0.1),
        "ipo": pl.ipo_loss(**b, chosen_lengths=lc, rejected_lengths=lr),
        "robust": pl.robust_dpo_loss(**b, label_smoothing=0.1),
        "slic": pl.slic_hf_loss(pc, pr, delta=5.0, regularization_weight=0.1),
        "simpo": pl.simpo_loss(pc, pr, lc, lr, beta=2.0, gamma=0.5),
        "orpo": pl.orpo_loss(pc, pr, lc, lr),
        "rrhf": pl.rrhf_loss(ranked, ranked_lengths),
        "pro": pl.pro_loss(ranked, ranked_lengths, sft_weight=0.1),
        "kto": pl.kto_loss(pc, b["reference_chosen_logps"], desirable, pr.detach(), b["reference_rejected_logps"]),
        "reward": pl.reward_model_loss(pc, pr, center_rewards_coefficient=0.1),
    }


EXTRAS = (torch.tensor([1, 4, 2, 7]), torch.tensor([3, 1, 5, 2]), torch.tensor([True, False, False, True]))


def test_every_loss_is_per_example_with_detached_per_example_metrics():
    batch = {k: v.requires_grad_() for k, v in pair_inputs(25, batch=4).items()}
    for name, out in _every_loss(batch, *EXTRAS).items():
        assert out.losses.shape == (4,), name
        assert out.losses.requires_grad, name
        for key, metric in out.metrics.items():
            assert metric.shape == (4,), f"{name}/{key}"
            assert not metric.requires_grad, f"{name}/{key}"


def test_every_loss_treats_examples_independently():
    # Reversing the batch must reverse each loss; a batch mean or cross-example mix would not.
    # (KTO's z0 pools the KL pairs, and reversing them leaves their mean unchanged.)
    batch = pair_inputs(26, batch=4)
    forward = _every_loss(batch, *EXTRAS)
    backward = _every_loss({k: v.flip(0) for k, v in batch.items()}, *(t.flip(0) for t in EXTRAS))
    for name in forward:
        torch.testing.assert_close(backward[name].losses, forward[name].losses.flip(0), msg=name)


def test_half_precision_inputs_are_computed_in_float32():
    inputs = {k: v.to(torch.bfloat16) for k, v in pair_inputs(27).items()}
    out = pl.dpo_loss(**inputs)
    assert out.losses.dtype == torch.float32


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("call, message", [
    (lambda: pl.dpo_loss(vec(-1.0, -2.0), vec(-1.0), vec(-1.0, -2.0), vec(-1.0, -2.0)), "policy_rejected_logps"),
    (lambda: pl.dpo_loss(*[vec(-1.0)] * 4, label_smoothing=0.5), "label_smoothing"),
    (lambda: pl.dpo_loss(*[vec(-1.0)] * 4, beta=0.0), "beta"),
    (lambda: pl.dpo_loss(torch.tensor([-1]), *[vec(-1.0)] * 3), "policy_chosen_logps"),
    (lambda: pl.ipo_loss(*[vec(-1.0)] * 4, chosen_lengths=torch.tensor([2])), "rejected_lengths"),
    (lambda: pl.simpo_loss(vec(-1.0), vec(-1.0), torch.tensor([0]), torch.tensor([1]), beta=1.0, gamma=0.0),
     "chosen_lengths"),
    (lambda: pl.orpo_loss(vec(-1.0, 0.0), vec(-1.0, -1.0), torch.tensor([1, 1]), torch.tensor([1, 1])),
     "example 1"),
    (lambda: pl.rrhf_loss(torch.zeros(2, 3, dtype=F64) - 1, torch.ones(2, 3),
                          response_mask=torch.tensor([[1, 1, 1], [1, 0, 1]])), "row 1 of `response_mask`"),
    (lambda: pl.pro_loss(torch.zeros(1, 3, dtype=F64) - 1, torch.ones(1, 3),
                         response_mask=torch.tensor([[1, 0, 0]])), "at least two"),
    (lambda: pl.pro_loss(vec(-1.0, -2.0), torch.ones(2)), "[batch, N]"),
    (lambda: pl.rrhf_loss(torch.zeros(1, 3, dtype=F64) - 1, torch.ones(1, 2)), "`lengths`"),
    (lambda: pl.kto_loss(vec(-1.0), vec(-1.0), torch.tensor([1]), vec(-1.0), vec(-1.0)), "is_desirable"),
    (lambda: pl.kto_loss(vec(-1.0), vec(-1.0), torch.tensor([True]), vec(), vec()), "policy_kl_logps"),
    (lambda: pl.reward_model_loss(vec(1.0, 2.0), vec(0.0, 0.0), margin=vec(0.1)), "margin"),
])
def test_bad_input_names_the_argument(call, message):
    with pytest.raises(ValueError) as error:
        call()
    assert message in str(error.value)
