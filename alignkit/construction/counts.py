"""What each step of a data job kept and dropped, and why: the summary every command prints and saves.

Counts are computed from a job's journal when it ends, never kept as running totals, so a job resumed
after a kill reports the same numbers as one that ran straight through.
"""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class StepCount:
    seen: int = 0
    kept: int = 0
    dropped: dict[str, int] = field(default_factory=dict)  # reason -> how many it removed, in the order first seen

    def to_dict(self) -> dict:
        return {"seen": self.seen, "kept": self.kept, "dropped": dict(self.dropped)}


class Counts:
    def __init__(self) -> None:
        self.steps: dict[str, StepCount] = {}

    def step(self, name: str) -> StepCount:
        return self.steps.setdefault(name, StepCount())

    def keep(self, step: str, n: int = 1) -> None:
        count = self.step(step)
        count.seen += n
        count.kept += n

    def drop(self, step: str, reason: str, n: int = 1) -> None:
        count = self.step(step)
        count.seen += n
        count.dropped[reason] = count.dropped.get(reason, 0) + n

    def declare(self, step: str, reasons: tuple[str, ...] | list[str]) -> None:
        """List `reasons` with 0 so a filter that removed nothing still shows in the summary."""
        count = self.step(step)
        for reason in reasons:
            count.dropped.setdefault(reason, 0)

    def to_dict(self) -> dict:
        return {name: count.to_dict() for name, count in self.steps.items()}

    def table(self) -> str:
        """One line per step: seen, kept, then each reason's count."""
        width = max((len(name) for name in self.steps), default=4)
        lines = []
        for name, count in self.steps.items():
            reasons = ", ".join(f"{reason} {n}" for reason, n in count.dropped.items())
            lines.append(f"  {name:<{width}}  {count.seen:>6} in  {count.kept:>6} kept"
                         + (f"  (dropped: {reasons})" if reasons else ""))
        return "\n".join(lines)


@dataclass
class JobResult:
    """What a data command returns: its folder, the rows written to each output file, and the counts."""
    output_dir: str
    written: dict[str, int]  # output file name -> rows
    counts: Counts

    def summary(self) -> dict:
        return {"output_dir": self.output_dir, "written": dict(self.written), "steps": self.counts.to_dict()}
