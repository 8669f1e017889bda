"""Hand-built RL batches in the padding-free layout, and their padded [S, Lmax] twins for comparing
with implementations (TRL) that work on right-padded tensors with a completion mask."""
from __future__ import annotations

import torch


def seq_ids_for(lens) -> torch.Tensor:
    """[N] sequence index of each token for sequences of the given lengths, packed back to back."""
    lens = torch.as_tensor(lens, dtype=torch.long)
    return torch.repeat_interleave(torch.arange(len(lens)), lens)


def padded(flat: torch.Tensor, lens, fill: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """(values [S, Lmax] right-padded with `fill`, mask [S, Lmax] float) from flat [N] values."""
    lens = [int(x) for x in lens]
    width = max(lens)
    values = torch.full((len(lens), width), fill, dtype=flat.dtype)
    mask = torch.zeros(len(lens), width)
    start = 0
    for i, n in enumerate(lens):
        values[i, :n] = flat[start:start + n]
        mask[i, :n] = 1.0
        start += n
    return values, mask


def split_flat(flat: torch.Tensor, lens) -> list[torch.Tensor]:
    """Each sequence's own tokens, from flat [N]."""
    return list(torch.split(flat, [int(x) for x in lens]))


def rl_batch(lens, seed: int = 0, spread: float = 0.3) -> dict:
    """Random per-token log-probs (policy, old, reference) and per-sequence advantages for sequences of
    the given lengths; the policy's log-probs differ from the old ones by up to about `spread`, so some
    ratios fall outside a 0.2 clip range and some inside."""
    g = torch.Generator().manual_seed(seed)
    n = int(sum(lens))
    old = -torch.rand(n, generator=g) * 3 - 0.05
    logp = old + (torch.rand(n, generator=g) * 2 - 1) * spread
    ref = old + (torch.rand(n, generator=g) * 2 - 1) * spread
    adv = torch.randn(len(lens), generator=g)
    return {"logp": logp, "old": old, "ref": ref, "adv": adv, "seq_ids": seq_ids_for(lens), "lens": list(lens)}
