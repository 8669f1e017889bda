"""Where the training loop gets each optimizer step's micro-batches: a `BatchSource`.

The loop asks its source for one step's micro-batches at a time and saves the source's state in every
checkpoint, so any source (a fixed data set, or rollouts generated with the current policy and reused
for several updates) resumes exactly. `ExampleSource`, a seeded pass over a fixed list of examples, is
what `train` builds when it is given examples.
"""
from __future__ import annotations

import math
from typing import Callable, Protocol, Sequence

import torch

from alignkit.training.distributed import rank_world


class BatchSource(Protocol):
    """The micro-batches of each optimizer step, with state that a checkpoint keeps.

    `next_step(step, model)` is called once per optimizer step, in order; `step` is the number of steps
    already taken. It returns that step's micro-batches, already collated by the objective (each a dict
    with `num_units` and `num_tokens`). `model` is the policy being trained, as it is now and not wrapped
    for data parallelism, for sources that generate with it; such a source may switch it to eval mode
    (the loop switches it back) and should generate under `torch.no_grad()`.

    With several processes every process has its own source and gets its own share of the step's
    data, and every process must return the same number of micro-batches (each one is a backward pass
    that data parallelism synchronises).

    `state_dict()` is taken from rank 0 after a step and saved with `torch.save` (tensors, examples and
    generator states are fine; tensors come back on the CPU). `load_state_dict(state)` is applied on every
    process before the first `next_step` of a resumed run, after which the source must return what it
    would have returned had the run not stopped. So the state must describe every process's position:
    derive per-process randomness from a shared seed and the rank rather than keeping it per process.

    `steps_per_epoch()` is the number of optimizer steps in one pass over the data, from which the loop
    derives the run's length when `train.max_steps` is 0; a source without epochs returns None and
    then needs `train.max_steps`. `epoch()` is the position, in passes, logged with each step.
    """

    def next_step(self, step: int, model) -> list[dict]:
        ...

    def state_dict(self) -> dict:
        ...

    def load_state_dict(self, state: dict) -> None:
        ...

    def steps_per_epoch(self) -> int | None:
        ...

    def epoch(self) -> float:
        ...


class MicroBatches:
    """A deterministic stream of micro-batches, addressed by index: epoch e visits examples in the order
    of a permutation seeded by (seed, e); each process takes every world-th micro-batch."""

    def __init__(self, examples: Sequence, batch_size: int, seed: int, *, shuffle: bool = True,
                 rank_and_world: tuple[int, int] | None = None):
        if not examples:
            raise ValueError("no training examples")
        self.examples, self.batch_size, self.seed, self.shuffle = examples, batch_size, seed, shuffle
        rank, world = rank_and_world or rank_world()
        self.rank, self.world = rank, world
        per_epoch = math.ceil(len(examples) / batch_size)
        self.per_epoch = max(1, per_epoch // world)  # micro-batches each process sees per epoch

    def get(self, index: int) -> list:
        return [self.examples[j] for j in self.indices(index)]

    def indices(self, index: int) -> list[int]:
        """The positions in `examples` of micro-batch `index`'s examples."""
        epoch, i = divmod(index, self.per_epoch)
        n = len(self.examples)
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
            order = torch.randperm(n, generator=g).tolist()
        else:
            order = list(range(n))
        start = (i * self.world + self.rank) * self.batch_size
        return order[start:start + self.batch_size]


class ExampleSource:
    """A fixed list of examples in seeded epochs: `grad_accum` micro-batches of `batch_size` examples per
    step, each collated by `collate` (the objective's). Its state is the index of the next micro-batch,
    the same on every process; keeping the index rather than the step lets a resumed run change
    grad_accum and still continue where the data left off."""

    def __init__(self, examples: Sequence, collate: Callable[[Sequence], dict], *, batch_size: int,
                 grad_accum: int, seed: int, shuffle: bool = True):
        self.stream = MicroBatches(examples, batch_size, seed, shuffle=shuffle)
        self.collate, self.grad_accum = collate, grad_accum
        self.micro_index = 0

    def next_step(self, step: int, model=None) -> list[dict]:
        micro = [self.collate(self.stream.get(self.micro_index + k)) for k in range(self.grad_accum)]
        self.micro_index += self.grad_accum
        return micro

    def state_dict(self) -> dict:
        return {"micro_index": self.micro_index}

    def load_state_dict(self, state: dict) -> None:
        self.micro_index = int(state["micro_index"])

    def steps_per_epoch(self) -> int:
        return math.ceil(self.stream.per_epoch / self.grad_accum)

    def epoch(self) -> float:
        return self.micro_index / self.stream.per_epoch


def examples_visited(examples: Sequence, *, batch_size: int, grad_accum: int, seed: int, shuffle: bool,
                     steps: int) -> set[int]:
    """Positions in `examples` of every example the first `steps` optimizer steps of an ExampleSource visit,
    on every process: what a run of that length needs prepared (its reference log-probs), and no more."""
    world = rank_world()[1]
    visited: set[int] = set()
    for rank in range(world):
        stream = MicroBatches(examples, batch_size, seed, shuffle=shuffle, rank_and_world=(rank, world))
        for index in range(steps * grad_accum):
            visited.update(stream.indices(index))
            if len(visited) == len(examples):
                return visited
    return visited
