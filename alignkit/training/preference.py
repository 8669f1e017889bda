"""Pairwise (DPO family, SLiC-HF, SimPO, ORPO) and ranking (RRHF, PRO) objectives for the one loop.

Examples come from the data layer (`data.pref_examples`: each response as a prompt + response
token sequence, labels on the response only). A batch packs every response of every example
into one padding-free row, so chosen and rejected (or all N ranked responses) go through the
model in a single forward; summed log-probs per response come from a segment sum over that row
(see `reference.sequence_logps`).
Units are examples (pairs or rankings): the loop divides the summed loss by their count.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from alignkit.data.pref_examples import PrefExample
from alignkit.training import preference_losses as pl
from alignkit.training.reference import REFERENCE_MODES, LiveReference, pack_sequences, sequence_logps

PAIR_LOSSES = ("dpo", "cdpo", "ipo", "robust", "slic", "simpo", "orpo")
RANKING_LOSSES = ("rrhf", "pro")
ALL_LOSSES = PAIR_LOSSES + RANKING_LOSSES + ("kto", "control")
REFERENCE_LOSSES = ("dpo", "cdpo", "ipo", "robust", "kto")
SHORTHANDS = ("dpo", "ipo", "slic", "rrhf", "pro", "simpo", "orpo", "kto")  # `alignkit dpo` = `alignkit pref loss=dpo`


@dataclass
class PrefLossConfig:
    """Which preference loss, and its hyperparameters (top-level keys of a preference config)."""

    loss: str = "dpo"  # dpo | cdpo | ipo | robust | slic | simpo | orpo | rrhf | pro | kto | control
    beta: float = 0.1  # dpo/ipo/cdpo/robust/kto: pull towards the reference (larger: closer); simpo: reward scale
    label_smoothing: float = 0.0  # cdpo and robust: assumed share of flipped labels, in (0, 0.5)
    ipo_normalize_length: bool = True  # ipo: divide each log-ratio by its response's token count (as TRL does)
    simpo_gamma: float | None = None  # simpo: target reward margin gamma (required; papers use ~0.5*beta)
    slic_delta: float | None = None  # slic: hinge margin delta on log p(chosen) - log p(rejected) (required)
    slic_reg_weight: float | None = None  # slic: weight of the NLL regulariser on the chosen response (required)
    orpo_weight: float = 0.1  # orpo: lambda on the odds-ratio term (TRL's `beta` for ORPO)
    sft_weight: float | None = None  # rrhf/pro: weight of the NLL of the best response; empty: 1.0 rrhf, 0.0 pro
    kto_desirable_weight: float = 1.0  # kto: loss weight of desirable examples
    kto_undesirable_weight: float = 1.0  # kto: loss weight of undesirable examples
    reference: str = "precomputed"  # precomputed: once before training, cached on disk | live: a frozen model each step
    reference_cache: str = ""  # folder for cached reference log-probs; empty: ~/.cache/alignkit/reference
    reference_batch_size: int = 32  # examples per packed forward while precomputing

    def check(self) -> None:
        """Raise ValueError naming the key when the settings cannot work for the chosen loss."""
        if self.loss not in ALL_LOSSES:
            raise ValueError(f"loss must be one of {', '.join(ALL_LOSSES)}; got {self.loss!r}")
        if self.reference not in REFERENCE_MODES:
            raise ValueError(f"reference must be one of {REFERENCE_MODES}, not {self.reference!r}")
        if self.loss in ("cdpo", "robust") and not 0 < self.label_smoothing < 0.5:
            raise ValueError(f"loss={self.loss} needs label_smoothing in (0, 0.5), got {self.label_smoothing}")
        if self.loss == "dpo" and self.label_smoothing:
            raise ValueError("label_smoothing with loss=dpo: use loss=cdpo (conservative DPO) or loss=robust")
        required = {"simpo": ["simpo_gamma"], "slic": ["slic_delta", "slic_reg_weight"]}.get(self.loss, [])
        missing = [key for key in required if getattr(self, key) is None]
        if missing:
            raise ValueError(f"loss={self.loss} needs {' and '.join(missing)} (no established default); "
                             f"set e.g. {missing[0]}=1.0")
        if self.reference_batch_size < 1:
            raise ValueError(f"reference_batch_size must be >= 1, got {self.reference_batch_size}")

    def validate_loss(self, where: str = "") -> None:
        """The loss settings as every command training with them checks them: ConfigErrors naming the key
        (under `where`, e.g. "pref" for a method's pref section)."""
        from alignkit.config import ConfigError, require_number

        try:
            self.check()
        except ValueError as error:
            raise ConfigError(f"{where}: {error}" if where else str(error)) from None
        require_number(where, "beta", self.beta, low=0, low_open=True)
        require_number(where, "label_smoothing", self.label_smoothing, low=0, high=0.5, high_open=True)
        for key in ("orpo_weight", "kto_desirable_weight", "kto_undesirable_weight"):
            require_number(where, key, getattr(self, key), low=0)
        for key in ("simpo_gamma", "slic_delta", "slic_reg_weight", "sft_weight"):  # None: unset
            if getattr(self, key) is not None:
                require_number(where, key, getattr(self, key), low=0)

    @property
    def needs_reference(self) -> bool:
        return self.loss in REFERENCE_LOSSES


def collate_examples(examples: list[PrefExample]) -> dict:
    """One packed row holding every sequence of every example, example by example."""
    batch = pack_sequences([seq for ex in examples for seq in ex.sequences])
    batch["counts"] = [len(ex.sequences) for ex in examples]
    batch["num_units"] = len(examples)
    if all(ex.reference is not None for ex in examples):
        batch["reference"] = torch.tensor([v for ex in examples for v in ex.reference])
    batch["margin"] = torch.tensor([ex.margin if ex.margin is not None else 0.0 for ex in examples])
    return batch


def batch_reference(batch: dict, model, live: LiveReference | None, device) -> torch.Tensor:
    if "reference" in batch:
        return batch["reference"].to(device)
    if live is None:
        raise ValueError("this loss needs reference log-probs: call reference.attach_reference(model, examples, ...) "
                         "before training, or use reference=live")
    return live.logps(model, batch)


def _summed(out: pl.LossOutput, **extra: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
    metrics = {name: float(value.sum()) for name, value in {**out.metrics, **extra}.items()}
    return out.losses.sum(), metrics


class PairwiseObjective:
    """DPO, cDPO, IPO, robust DPO, SLiC-HF, SimPO or ORPO on chosen/rejected pairs (`cfg.loss`).

    Logged per pair (the loop averages): chosen_reward, rejected_reward, reward_margin and
    accuracy (the loss's implicit rewards), and the policy's summed log-probs of both responses.
    """

    def __init__(self, cfg: PrefLossConfig, live: LiveReference | None = None, *, loss_chunk_size: int = 0):
        cfg.check()
        if cfg.loss not in PAIR_LOSSES:
            raise ValueError(f"PairwiseObjective handles {', '.join(PAIR_LOSSES)}, not {cfg.loss!r}")
        self.cfg, self.live = cfg, live
        self.loss_chunk_size = loss_chunk_size  # train.loss_chunk_size (reference.sequence_logps's chunk)

    def collate(self, examples: list[PrefExample]) -> dict:
        if any(len(ex.sequences) != 2 for ex in examples):
            raise ValueError("pairwise losses need examples with exactly two sequences (chosen, rejected)")
        return collate_examples(examples)

    def loss(self, model, batch: dict) -> tuple[torch.Tensor, dict[str, float]]:
        logps, counts = sequence_logps(model, batch, chunk=self.loss_chunk_size)
        pc, pr, lc, lr = logps[0::2], logps[1::2], counts[0::2], counts[1::2]
        cfg = self.cfg
        if cfg.needs_reference:
            ref = batch_reference(batch, model, self.live, logps.device)
            rc, rr = ref[0::2], ref[1::2]
        if cfg.loss in ("dpo", "cdpo"):
            out = pl.dpo_loss(pc, pr, rc, rr, beta=cfg.beta, label_smoothing=cfg.label_smoothing)
        elif cfg.loss == "robust":
            out = pl.robust_dpo_loss(pc, pr, rc, rr, beta=cfg.beta, label_smoothing=cfg.label_smoothing)
        elif cfg.loss == "ipo":
            lengths = dict(chosen_lengths=lc, rejected_lengths=lr) if cfg.ipo_normalize_length else {}
            out = pl.ipo_loss(pc, pr, rc, rr, beta=cfg.beta, **lengths)
        elif cfg.loss == "slic":
            out = pl.slic_hf_loss(pc, pr, delta=cfg.slic_delta, regularization_weight=cfg.slic_reg_weight)
        elif cfg.loss == "simpo":
            out = pl.simpo_loss(pc, pr, lc, lr, beta=cfg.beta, gamma=cfg.simpo_gamma)
        else:
            out = pl.orpo_loss(pc, pr, lc, lr, odds_ratio_weight=cfg.orpo_weight)
        return _summed(out, chosen_logps=pc.detach(), rejected_logps=pr.detach())


class RankingObjective:
    """RRHF or PRO over N responses per prompt, best first; N may differ between prompts.

    Responses with equal scores keep their input order and are treated as ranked in that order.
    Logged per ranking: rank_loss, nll (of the best response) and accuracy (share of better/worse
    pairs whose length-normalised log-probs are already in order).
    """

    def __init__(self, cfg: PrefLossConfig, *, loss_chunk_size: int = 0):
        cfg.check()
        if cfg.loss not in RANKING_LOSSES:
            raise ValueError(f"RankingObjective handles {', '.join(RANKING_LOSSES)}, not {cfg.loss!r}")
        self.cfg = cfg
        self.loss_chunk_size = loss_chunk_size  # train.loss_chunk_size (reference.sequence_logps's chunk)
        default_weight = 1.0 if cfg.loss == "rrhf" else 0.0
        self.sft_weight = cfg.sft_weight if cfg.sft_weight is not None else default_weight

    def collate(self, examples: list[PrefExample]) -> dict:
        return collate_examples(examples)

    def loss(self, model, batch: dict) -> tuple[torch.Tensor, dict[str, float]]:
        logps, counts = sequence_logps(model, batch, chunk=self.loss_chunk_size)
        rows, width = len(batch["counts"]), max(batch["counts"])
        # Scatter the flat per-sequence values into [rankings, N], padding after each row's responses.
        row_index = torch.repeat_interleave(torch.arange(rows), torch.tensor(batch["counts"]))
        col_index = torch.cat([torch.arange(n) for n in batch["counts"]])
        grid = torch.zeros(rows, width, dtype=logps.dtype, device=logps.device).index_put(
            (row_index, col_index), logps)
        lengths = torch.ones(rows, width, dtype=logps.dtype).index_put(
            (row_index, col_index), counts.to(logps.dtype).cpu()).to(logps.device)
        mask = torch.zeros(rows, width, dtype=torch.bool).index_put(
            (row_index, col_index), torch.tensor(True)).to(logps.device)
        loss_fn = pl.rrhf_loss if self.cfg.loss == "rrhf" else pl.pro_loss
        return _summed(loss_fn(grid, lengths, response_mask=mask, sft_weight=self.sft_weight))
