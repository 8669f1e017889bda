"""The one over-length policy for every kind of training example, and its count.

SFT conversations and preference responses are fitted to `max_length` the same way: `truncate`
keeps a sequence's start and cuts its end, `drop` leaves the example out. Either way the
LengthReport counts what happened, so every data report reads alike. An example holds one
sequence (SFT) or several (the responses of one prompt); it is dropped whole when any of them is.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from alignkit.data.chat import IGNORE, TokenSeq

OVERLONG_POLICIES = ("truncate", "drop")


@dataclass
class LengthReport:
    """The over-length policy of one build, and how many examples it truncated or dropped."""

    max_length: int
    policy: str
    truncated: int = 0  # sequences cut to max_length
    dropped: int = 0  # examples left out
    dropped_where: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.policy not in OVERLONG_POLICIES:
            raise ValueError(f"overlong must be one of {OVERLONG_POLICIES}, not {self.policy!r}")

    def fit(self, sequences: list[TokenSeq], where: str, *, empty_reason: str,
            over_reason: str = "") -> list[TokenSeq] | None:
        """The sequences fitted to max_length, or None (counted, with `where`) when the example is dropped.

        `over_reason` notes a drop under the `drop` policy (nothing: `where` alone); `empty_reason`
        notes a truncation that left nothing to learn, which drops the example under either policy.
        """
        fitted, reasons, truncated = [], [], 0
        for ids, labels in sequences:
            if len(ids) <= self.max_length:
                fitted.append((ids, labels))
                continue
            if self.policy == "drop":
                reasons.append(over_reason)
                continue
            ids, labels = ids[:self.max_length], labels[:self.max_length]
            # The first label is never predicted (nothing precedes it); a cut that leaves no
            # other target leaves nothing to learn or score.
            if not any(x != IGNORE for x in labels[1:]):
                reasons.append(empty_reason)
                continue
            fitted.append((ids, labels))
            truncated += 1
        if reasons:
            self.dropped += 1
            self.dropped_where.append(f"{where} ({reasons[0]})" if reasons[0] else where)
            return None
        self.truncated += truncated
        return fitted

    def summary(self) -> str:
        if not (self.truncated or self.dropped):
            return f"no example exceeded max_length={self.max_length}"
        return (f"over max_length={self.max_length} ({self.policy}): {self.truncated} truncated, "
                f"{self.dropped} dropped" + (f" ({', '.join(self.dropped_where[:10])})" if self.dropped_where else ""))

    def to_dict(self) -> dict:
        return {"max_length": self.max_length, "policy": self.policy, "truncated": self.truncated,
                "dropped": self.dropped, "dropped_where": self.dropped_where}
