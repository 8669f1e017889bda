"""Batches for the model: padding-free packing, and plain padding for comparison and generation.

A packed batch is one row holding several sequences back to back, with position ids restarting
at 0 for each. transformers reads the restarts and builds a block-diagonal causal mask, so no
token attends across a sequence boundary, and no compute is spent on padding. Targets are
shifted inside each sequence before concatenation, so the last token of one sequence never
learns to predict the first token of the next.
"""
from __future__ import annotations

from typing import Sequence

import torch

from alignkit.data.chat import IGNORE


def shift_targets(labels: Sequence[int]) -> list[int]:
    """targets[t] is what position t must predict: labels[t + 1], IGNORE at the end."""
    return list(labels[1:]) + [IGNORE]


def pack(examples: Sequence[tuple[Sequence[int], Sequence[int]]]) -> dict:
    """Pack (input_ids, labels) pairs into one padding-free row."""
    ids, pos, tgt, seq_lens = [], [], [], []
    for input_ids, labels in examples:
        ids.extend(input_ids)
        pos.extend(range(len(input_ids)))
        tgt.extend(shift_targets(labels))
        seq_lens.append(len(input_ids))
    targets = torch.tensor([tgt])
    return {
        "input_ids": torch.tensor([ids]),
        "position_ids": torch.tensor([pos]),
        "targets": targets,
        "seq_lens": seq_lens,
        "num_tokens": len(ids),
        "num_targets": int((targets != IGNORE).sum()),
    }


def pad(examples: Sequence[tuple[Sequence[int], Sequence[int]]], pad_id: int) -> dict:
    """Right-padded rows with an attention mask (the classic layout)."""
    width = max(len(x) for x, _ in examples)
    ids = torch.full((len(examples), width), pad_id)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    tgt = torch.full((len(examples), width), IGNORE)
    for row, (input_ids, labels) in enumerate(examples):
        n = len(input_ids)
        ids[row, :n] = torch.tensor(list(input_ids))
        mask[row, :n] = 1
        tgt[row, :n] = torch.tensor(shift_targets(labels))
    return {
        "input_ids": ids,
        "attention_mask": mask,
        "targets": tgt,
        "num_tokens": int(mask.sum()),
        "num_targets": int((tgt != IGNORE).sum()),
    }


def target_positions(targets: torch.Tensor) -> torch.Tensor:
    """Flat indices (over a [1, T] row) of positions that have a target."""
    return (targets[0] != IGNORE).nonzero(as_tuple=True)[0]
