"""Conversations to token ids and labels for SFT, under an explicit over-length policy."""
from __future__ import annotations

from dataclasses import dataclass, field

from alignkit.data.chat import IGNORE, TemplateError, tokenize_conversation
from alignkit.data.errors import RecordError, SkipReport
from alignkit.data.formats import Conversation

OVERLONG_POLICIES = ("truncate", "drop")


@dataclass
class SFTExample:
    input_ids: list[int]
    labels: list[int]
    source: str = ""
    line: int = 0

    @property
    def num_targets(self) -> int:
        return sum(1 for x in self.labels if x != IGNORE)


@dataclass
class LengthReport:
    max_length: int
    policy: str
    truncated: int = 0
    dropped: int = 0
    dropped_where: list[str] = field(default_factory=list)

    def summary(self) -> str:
        if not (self.truncated or self.dropped):
            return f"no example exceeded max_length={self.max_length}"
        return (f"over max_length={self.max_length} ({self.policy}): {self.truncated} truncated, "
                f"{self.dropped} dropped" + (f" ({', '.join(self.dropped_where[:10])})" if self.dropped_where else ""))

    def to_dict(self) -> dict:
        return {"max_length": self.max_length, "policy": self.policy, "truncated": self.truncated,
                "dropped": self.dropped, "dropped_where": self.dropped_where}


def build_sft_examples(conversations: list[Conversation], tokenizer, *, max_length: int, overlong: str = "truncate",
                       train_on: str = "all_assistant", skip_bad: bool = False,
                       report: SkipReport | None = None) -> tuple[list[SFTExample], LengthReport]:
    if overlong not in OVERLONG_POLICIES:
        raise ValueError(f"overlong must be one of {OVERLONG_POLICIES}, not {overlong!r}")
    lengths = LengthReport(max_length, overlong)
    examples = []
    for conv in conversations:
        where = f"{conv.source}:{conv.line}"
        try:
            tok = tokenize_conversation(tokenizer, conv.messages, train_on=train_on)
        except TemplateError as e:
            error = RecordError("messages", str(e), path=conv.source, line=conv.line, unit=conv.unit)
            if not skip_bad:
                raise error from None
            if report is not None:
                report.add(error)
            continue
        ids, labels = tok.input_ids, tok.labels
        if len(ids) > max_length:
            if overlong == "drop":
                lengths.dropped += 1
                lengths.dropped_where.append(where)
                continue
            ids, labels = ids[:max_length], labels[:max_length]
            # The first label is never predicted (nothing precedes it); a cut that leaves no
            # other target leaves nothing to learn.
            if not any(x != IGNORE for x in labels[1:]):
                lengths.dropped += 1
                lengths.dropped_where.append(f"{where} (no target left after truncation)")
                continue
            lengths.truncated += 1
        examples.append(SFTExample(ids, labels, conv.source, conv.line))
    return examples, lengths
