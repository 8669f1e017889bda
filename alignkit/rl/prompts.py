"""Prompts for online sampling: `data.prompts.PromptRecord`s (the conversation to answer plus the record it
came from, whose fields a reward may need: a reference answer, test cases, a label), and a seeded, resumable
stream over them. Under several processes every process walks the same stream and takes its own slice of
each step's prompts (`take_share`), so the stream's state is rank-independent.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch

from alignkit.data.prompts import PromptRecord


def as_prompt_records(prompts: Sequence) -> list[PromptRecord]:
    """PromptRecords from PromptRecords (read_prompt_records) or plain message lists."""
    out = []
    for index, item in enumerate(prompts):
        if isinstance(item, PromptRecord):
            out.append(item)
        elif isinstance(item, list):
            out.append(PromptRecord(list(item)))
        else:
            raise ValueError(f"prompt {index}: expected a PromptRecord or a list of messages, got {type(item).__name__}")
    if not out:
        raise ValueError("no prompts to roll out")
    return out


class PromptStream:
    """Prompt indices in seeded epochs: epoch e visits all prompts in a permutation seeded by (seed, e).
    Its whole state is `position`, the number of prompts taken so far."""

    def __init__(self, count: int, seed: int, *, shuffle: bool = True):
        self.count, self.seed, self.shuffle = count, seed, shuffle
        self.position = 0
        self._order: tuple[int, list[int]] | None = None  # (epoch, permutation), the last one used

    def _permutation(self, epoch: int) -> list[int]:
        if self._order is None or self._order[0] != epoch:
            if self.shuffle:
                g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
                order = torch.randperm(self.count, generator=g).tolist()
            else:
                order = list(range(self.count))
            self._order = (epoch, order)
        return self._order[1]

    def take(self, n: int) -> list[int]:
        out = []
        for index in range(self.position, self.position + n):
            epoch, i = divmod(index, self.count)
            out.append(self._permutation(epoch)[i])
        self.position += n
        return out

    def take_share(self, n: int, rank: int = 0, world: int = 1) -> list[int]:
        """This process's share of the next `n` prompts (n divisible by `world`): every process advances the
        same global stream by `n` and keeps the rank-th contiguous slice. The position is then the same on
        every process, so rank 0's checkpoint describes them all, and shares are disjoint within a pass."""
        if n % world:
            raise ValueError(f"{n} prompts cannot be shared evenly among {world} processes")
        per = n // world
        return self.take(n)[rank * per:(rank + 1) * per]

    def epoch(self) -> float:
        return self.position / self.count
