"""Prompts for online RL: the conversation to answer plus the record it came from, and a seeded,
resumable stream over them.

A reward often needs more than the prompt (a reference answer, test cases, a label), so each prompt
keeps its record's fields as `metadata`. Any prompt file `alignkit generate` reads works here.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from alignkit.data.errors import RecordError
from alignkit.data.formats import to_conversation
from alignkit.data.readers import load_parsed


@dataclass
class RLPrompt:
    messages: list[dict]  # the conversation to continue; ends with a user (or system) turn
    # The record's own fields (e.g. "answer"), plus "source" (file:line) and, when the record ended with
    # an assistant turn, "reference" (its content), which is left out of the prompt.
    metadata: dict = field(default_factory=dict)


def read_rl_prompts(sources: Any, *, skip_bad: bool = False) -> list[RLPrompt]:
    """Prompts from files or DataSpecs in any format alignkit reads, each with its record's fields."""
    def parse(record, spec):
        messages = to_conversation(record.data, fmt=spec.format, require_assistant=False)
        reference = None
        while messages and messages[-1]["role"] == "assistant":
            reference = messages.pop()["content"] if reference is None else reference
        if not messages:
            raise RecordError("messages", "no user turn to answer")
        metadata = {**record.data, "source": f"{record.path}:{record.line}"}
        if reference is not None:
            metadata["reference"] = reference
        return [RLPrompt(messages, metadata)]

    prompts, _ = load_parsed(sources, parse, skip_bad=skip_bad)
    return prompts


def as_rl_prompts(prompts: Sequence) -> list[RLPrompt]:
    """RLPrompts from RLPrompts, message lists, or `read_prompts` (conversation, messages) pairs."""
    out = []
    for index, item in enumerate(prompts):
        if isinstance(item, RLPrompt):
            out.append(item)
        elif isinstance(item, list):
            out.append(RLPrompt(list(item)))
        elif isinstance(item, tuple) and len(item) == 2 and isinstance(item[1], list):
            conv = item[0]
            out.append(RLPrompt(list(item[1]), {"source": f"{getattr(conv, 'source', '')}:{getattr(conv, 'line', 0)}"}))
        else:
            raise ValueError(f"prompt {index}: expected an RLPrompt, a list of messages or a (conversation, "
                             f"messages) pair, got {type(item).__name__}")
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

    def epoch(self) -> float:
        return self.position / self.count
