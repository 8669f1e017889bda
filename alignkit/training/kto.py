"""KTO on unpaired feedback: each example is one completion labelled desirable or not.

KTO's baseline z0 estimates KL(policy || reference) from completions paired with the *wrong*
prompt. Each example carries such a mismatched sequence, fixed when the data is built (the
next example, cyclically, whose prompt differs: `data.pref_examples.feedback_items`), so its
reference log-prob can be precomputed and cached like any other. Its policy log-prob needs no
gradient (z0 is detached), so it runs in a separate no-grad forward and costs no backward pass.
"""
from __future__ import annotations

import torch

from alignkit.data.pref_examples import PrefExample
from alignkit.training import preference_losses as pl
from alignkit.training.preference import PrefLossConfig, batch_reference, collate_examples
from alignkit.training.reference import LiveReference, sequence_logps


class KTOObjective:
    """KTO loss per example. Logged per example (the loop averages): accuracy (desirable above the
    KL baseline, undesirable below), kl (the baseline z0), and `desirable_reward` /
    `undesirable_reward` summed over their own examples: divide by `desirable` / `undesirable`
    (their shares) for each group's mean implicit reward."""

    def __init__(self, cfg: PrefLossConfig, live: LiveReference | None = None, *, loss_chunk_size: int = 0):
        cfg.check()
        if cfg.loss != "kto":
            raise ValueError(f"KTOObjective needs loss=kto, not {cfg.loss!r}")
        self.cfg, self.live = cfg, live
        self.loss_chunk_size = loss_chunk_size  # train.loss_chunk_size (reference.sequence_logps's chunk)

    def collate(self, examples: list[PrefExample]) -> dict:
        if any(len(ex.sequences) != 2 or ex.desirable is None for ex in examples):
            raise ValueError("KTO examples need a label and two sequences (completion, mismatched completion)")
        completions = [PrefExample([ex.sequences[0]], ex.reference and ex.reference[:1]) for ex in examples]
        mismatched = [PrefExample([ex.sequences[1]], ex.reference and ex.reference[1:]) for ex in examples]
        batch = collate_examples(completions)
        batch["kl"] = collate_examples(mismatched)
        batch["desirable"] = torch.tensor([bool(ex.desirable) for ex in examples])
        batch["num_tokens"] += batch["kl"]["num_tokens"]
        return batch

    def loss(self, model, batch: dict) -> tuple[torch.Tensor, dict[str, float]]:
        cfg = self.cfg
        logps, _ = sequence_logps(model, batch, chunk=self.loss_chunk_size)
        with torch.no_grad():
            kl_logps, _ = sequence_logps(model, batch["kl"], chunk=self.loss_chunk_size)
        device = logps.device
        ref = batch_reference(batch, model, self.live, device)
        kl_ref = batch_reference(batch["kl"], model, self.live, device)
        desirable = batch["desirable"].to(device)
        out = pl.kto_loss(logps, ref, desirable, kl_logps, kl_ref, beta=cfg.beta,
                          desirable_weight=cfg.kto_desirable_weight, undesirable_weight=cfg.kto_undesirable_weight)
        reward, z0 = out.metrics["reward"], out.metrics["kl_reference_point"]
        above = (logps.detach().float() - ref.float()) > z0
        weight = desirable.to(reward.dtype)
        metrics = {
            "desirable": float(weight.sum()),
            "undesirable": float((1 - weight).sum()),
            "desirable_reward": float((reward * weight).sum()),
            "undesirable_reward": float((reward * (1 - weight)).sum()),
            "kl": float(z0.sum()),
            "accuracy": float((above == desirable).sum()),
        }
        return out.losses.sum(), metrics
