"""Per-sequence reductions over the padding-free RL layout.

Completion tokens of a micro-batch lie in one flat tensor [N]; `seq_ids` [N] says which sequence
(0..S-1) each token belongs to. Statistics per sequence are segment sums (index_add_), so a token can
only ever reach its own sequence's entry, whatever the sequence lengths.
"""
from __future__ import annotations

import torch
from torch import Tensor


def segment_sum(values: Tensor, seq_ids: Tensor, num_seqs: int) -> Tensor:
    """[S] sums of `values` [N] per sequence (differentiable; empty sequences give 0)."""
    out = torch.zeros(num_seqs, dtype=values.dtype, device=values.device)
    return out.index_add(0, seq_ids, values)


def segment_count(seq_ids: Tensor, num_seqs: int) -> Tensor:
    """[S] number of tokens of each sequence (long)."""
    return torch.bincount(seq_ids, minlength=num_seqs)[:num_seqs]


def segment_mean(values: Tensor, seq_ids: Tensor, num_seqs: int) -> Tensor:
    """[S] mean of `values` over each sequence's tokens; an empty sequence gives 0, not NaN."""
    counts = segment_count(seq_ids, num_seqs).clamp(min=1).to(values.dtype)
    return segment_sum(values, seq_ids, num_seqs) / counts


def seq_starts(seq_ids: Tensor, num_seqs: int) -> Tensor:
    """[S] flat index of each sequence's first token; needs each sequence's tokens to be consecutive
    (the micro-batch contract: target positions in order, sequence after sequence)."""
    if seq_ids.numel() > 1 and bool((seq_ids[1:] < seq_ids[:-1]).any()):
        raise ValueError("seq_ids must be non-decreasing: each sequence's tokens consecutive, in order")
    counts = segment_count(seq_ids, num_seqs)
    return torch.cumsum(counts, 0) - counts


def positions_in_seq(seq_ids: Tensor, num_seqs: int) -> Tensor:
    """[N] index of each token within its own sequence (0 at its first token)."""
    starts = seq_starts(seq_ids, num_seqs)
    return torch.arange(seq_ids.numel(), device=seq_ids.device) - starts[seq_ids]


def to_padded(values: Tensor, seq_ids: Tensor, num_seqs: int, fill: float = 0.0) -> Tensor:
    """[S, Lmax] rows of each sequence's tokens, right-padded with `fill`; for scans along time."""
    pos = positions_in_seq(seq_ids, num_seqs)
    width = int(segment_count(seq_ids, num_seqs).max()) if num_seqs else 0
    out = torch.full((num_seqs, width), fill, dtype=values.dtype, device=values.device)
    out[seq_ids, pos] = values
    return out


def from_padded(padded: Tensor, seq_ids: Tensor, num_seqs: int) -> Tensor:
    """Inverse of `to_padded`: the flat [N] tokens back out of [S, Lmax]."""
    return padded[seq_ids, positions_in_seq(seq_ids, num_seqs)]


def group_index(group_ids: Tensor) -> tuple[Tensor, int]:
    """Dense 0..G-1 index per sample from arbitrary group ids (prompt ids need not be contiguous)."""
    uniq, inverse = torch.unique(group_ids, return_inverse=True)
    return inverse, int(uniq.numel())
