"""A rollout buffer and its micro-batches in the RL micro-batch contract.

A micro-batch is `pack([(prompt_ids + completion_ids, labels)])` with labels IGNORE on the prompt and
the completion ids on the completion, so its target positions are exactly the completion tokens, in
order, sequence after sequence. Per-token keys ([N], that order): old_logprobs, ref_logprobs (when a
reference is used), seq_ids, and for PPO old_values, token_advantages and returns. Per-sequence keys
([S]): advantages, rewards, group_ids, completion_lens, truncated. `num_units` is the number of
completion tokens (units="tokens") or sequences ("sequences").
"""
from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from alignkit.data.chat import IGNORE
from alignkit.data.packing import pack

UNITS = ("tokens", "sequences")
# The Sample fields served as per-token keys, each once every sample of the micro-batch has it.
PER_TOKEN = ("old_logprobs", "ref_logprobs", "old_values", "token_advantages", "returns")


@dataclass
class Sample:
    """One sampled completion and everything the losses need about it."""
    prompt_ids: list[int]
    completion_ids: list[int]  # as generated, the EOS / last stop-string token included
    text: str  # the completion's text (stop strings and special tokens left out), what the reward read
    group: int  # index of its prompt within the rollout
    truncated: bool  # ended by max_tokens, without EOS or a stop string
    gen_logprobs: list[float] | None = None  # the sampler's own (Completion.logprobs), for diagnostics
    old_logprobs: torch.Tensor | None = None  # float32 [len(completion_ids)], training forward
    ref_logprobs: torch.Tensor | None = None
    reward: float = 0.0
    advantage: float = 0.0  # PPO: its first token's, the advantage of the whole completion
    old_values: torch.Tensor | None = None  # PPO: float32 [len(completion_ids)], the critic's at rollout time
    token_advantages: torch.Tensor | None = None  # PPO: GAE's, whitened when configured
    returns: torch.Tensor | None = None  # PPO: the value targets, GAE's advantages + old values
    trained: bool = True  # False for a truncated sample under truncated=mask: it never reaches a loss

    def to_state(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_state(cls, state: dict) -> Sample:
        return cls(**state)


def shuffled_chunks(indices: Sequence[int], chunks: int, seed: int) -> list[list[int]]:
    """`indices` in a seeded random order, cut into `chunks` contiguous parts whose sizes differ by at
    most one (none empty when there are at least `chunks` indices)."""
    g = torch.Generator().manual_seed(seed)
    order = [indices[i] for i in torch.randperm(len(indices), generator=g).tolist()]
    base, extra = divmod(len(order), chunks)
    out, start = [], 0
    for k in range(chunks):
        size = base + (1 if k < extra else 0)
        out.append(order[start:start + size])
        start += size
    return [c for c in out if c]


def seq_ids_of(lengths: Sequence[int]) -> torch.Tensor:
    """[N] sequence index of each token of sequences of these lengths, back to back."""
    return torch.repeat_interleave(torch.arange(len(lengths)), torch.as_tensor(list(lengths), dtype=torch.long))


def micro_batch(samples: Sequence[Sample], *, units: str = "tokens", gen_logprobs: bool = False) -> dict:
    """The contract's micro-batch of `samples`, in the given order (per-token keys only once computed).
    `gen_logprobs` adds the sampler's own per-token log-probs (when every sample has them)."""
    if units not in UNITS:
        raise ValueError(f"units must be one of {UNITS}, not {units!r}")
    sequences = [(s.prompt_ids + s.completion_ids, [IGNORE] * len(s.prompt_ids) + s.completion_ids)
                 for s in samples]
    batch = pack(sequences)
    lens = torch.tensor([len(s.completion_ids) for s in samples], dtype=torch.long)
    batch.update(
        seq_ids=seq_ids_of(lens.tolist()),
        advantages=torch.tensor([s.advantage for s in samples], dtype=torch.float32),
        rewards=torch.tensor([s.reward for s in samples], dtype=torch.float32),
        group_ids=torch.tensor([s.group for s in samples], dtype=torch.long),
        completion_lens=lens,
        truncated=torch.tensor([s.truncated for s in samples], dtype=torch.bool),
        num_units=int(lens.sum()) if units == "tokens" else len(samples),
    )
    for key in PER_TOKEN:
        if all(getattr(s, key) is not None for s in samples):
            batch[key] = torch.cat([getattr(s, key) for s in samples]).float()
    if gen_logprobs and all(s.gen_logprobs is not None for s in samples):
        batch["gen_logprobs"] = torch.tensor([v for s in samples for v in s.gen_logprobs], dtype=torch.float32)
    return batch


def scatter_tokens(samples: Sequence[Sample], flat: torch.Tensor, attr: str) -> None:
    """Split a micro-batch's [N] per-token values back onto its samples (in micro-batch order)."""
    offset = 0
    for s in samples:
        n = len(s.completion_ids)
        setattr(s, attr, flat[offset:offset + n].detach().float().cpu().clone())
        offset += n
    if offset != flat.numel():
        raise ValueError(f"{flat.numel()} values for {offset} completion tokens")
