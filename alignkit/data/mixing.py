"""Mix several datasets so the result has the requested proportions.

Rule, per dataset: its count is its share of `total` (weights are normalised to proportions of
the final mix; rounding by largest remainder so counts add up to `total` exactly). Items are
drawn without replacement in a seeded random order; only when every item has been used once
does the dataset start again with a fresh shuffle (so an item appears k or k+1 times, never
more unevenly). The drawn items of all datasets are then shuffled together.

With `total=None` the mix is as large as possible without repeating any dataset: a dataset
that is small for its weight sets the size, and larger ones are subsampled.

Everything is deterministic under `seed`. Repeated items are the same objects, not copies.
"""
from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Any, Callable, Sequence, TypeVar

from alignkit.data.errors import SkipReport
from alignkit.data.readers import DataSpec, as_specs

T = TypeVar("T")


@dataclass
class MixPart:
    name: str
    available: int
    share: float  # normalised weight: the intended fraction of the mix
    count: int  # how many items of the mix came from this dataset

    @property
    def passes(self) -> float:
        """How many times over the dataset was used (above 1 means repetition)."""
        return self.count / self.available if self.available else 0.0


@dataclass
class MixSummary:
    parts: list[MixPart]
    total: int
    seed: int

    def summary(self) -> str:
        width = max(len(part.name) for part in self.parts)
        lines = [f"mixed {self.total} items (seed {self.seed}):"]
        for part in self.parts:
            lines.append(f"  {part.name:<{width}}  share {part.share:.3f}  {part.count:>8} of "
                         f"{part.available} available ({part.passes:.2f} passes)")
        return "\n".join(lines)

    def to_dict(self) -> dict:
        return {"total": self.total, "seed": self.seed,
                "parts": [{"name": p.name, "available": p.available, "share": p.share, "count": p.count,
                           "passes": p.passes} for p in self.parts]}


def mix(datasets: Sequence[Sequence[T]], weights: Sequence[float], *, seed: int, total: int | None = None,
        names: Sequence[str] | None = None) -> tuple[list[T], MixSummary]:
    """A shuffled list drawn from `datasets` in proportion to `weights`, and how many came from each."""
    shares = _normalise(weights, len(datasets))
    sizes = [len(dataset) for dataset in datasets]
    names = list(names) if names is not None else [f"dataset {i}" for i in range(len(datasets))]
    if len(names) != len(datasets):
        raise ValueError(f"got {len(names)} names for {len(datasets)} datasets")
    for name, size, share in zip(names, sizes, shares):
        if size == 0 and share > 0:
            raise ValueError(f"{name}: empty, but has weight share {share:.3f}")
    if total is None:
        total = _largest_total_without_repeats(sizes, shares)
    elif isinstance(total, bool) or not isinstance(total, int) or total < 1:
        raise ValueError(f"total must be a positive integer, got {total!r}")
    counts = _counts(shares, total)
    mixed: list[T] = []
    for index, (dataset, count) in enumerate(zip(datasets, counts)):
        mixed.extend(dataset[i] for i in _draw(len(dataset), count, random.Random(f"{seed}:{index}")))
    random.Random(f"{seed}:order").shuffle(mixed)
    parts = [MixPart(name, size, share, count) for name, size, share, count in zip(names, sizes, shares, counts)]
    return mixed, MixSummary(parts, total, seed)


def load_mix(specs: Any, load: Callable[[DataSpec], tuple[list[T], SkipReport]], *, seed: int,
             total: int | None = None) -> tuple[list[T], SkipReport, MixSummary]:
    """Load every DataSpec with `load` (e.g. `functools.partial(load_conversations, skip_bad=True)`)
    and mix them by their weights."""
    specs = as_specs(specs)
    report = SkipReport()
    datasets = []
    for spec in specs:
        items, spec_report = load(spec)
        report.merge(spec_report)
        datasets.append(items)
    mixed, summary = mix(datasets, [spec.weight for spec in specs], seed=seed, total=total,
                         names=[spec.path for spec in specs])
    return mixed, report, summary


def _normalise(weights: Sequence[float], count: int) -> list[float]:
    if count == 0:
        raise ValueError("no datasets to mix")
    if len(weights) != count:
        raise ValueError(f"got {len(weights)} weights for {count} datasets")
    for index, weight in enumerate(weights):
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not math.isfinite(weight) or weight < 0:
            raise ValueError(f"weight {index} must be a finite number >= 0, got {weight!r}")
    weight_sum = float(sum(weights))
    if weight_sum == 0:
        raise ValueError("all weights are zero")
    return [weight / weight_sum for weight in weights]


def _counts(shares: list[float], total: int) -> list[int]:
    """Largest-remainder rounding: counts add up to `total`, each within 1 of its exact share."""
    exact = [share * total for share in shares]
    counts = [math.floor(value) for value in exact]
    leftover = total - sum(counts)
    by_remainder = sorted(range(len(shares)), key=lambda i: (-(exact[i] - counts[i]), i))
    for index in by_remainder[:leftover]:
        counts[index] += 1
    return counts


def _largest_total_without_repeats(sizes: list[int], shares: list[float]) -> int:
    total = math.floor(min(size / share for size, share in zip(sizes, shares) if share > 0) + 1e-9)
    # Rounding can push a count one over its dataset's size; shrink until every count fits.
    while total > 0 and any(count > size for count, size in zip(_counts(shares, total), sizes)):
        total -= 1
    if total == 0:
        raise ValueError("the datasets are too small to mix at these weights without repeating; pass total=")
    return total


def _draw(size: int, count: int, rng: random.Random) -> list[int]:
    """`count` indices into a dataset: full shuffled passes, then a partial one."""
    if count == 0:
        return []
    indices: list[int] = []
    while len(indices) + size <= count:
        full_pass = list(range(size))
        rng.shuffle(full_pass)
        indices.extend(full_pass)
    indices.extend(rng.sample(range(size), count - len(indices)))
    return indices
