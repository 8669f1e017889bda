"""Conversations to token ids and labels for SFT, fitted to max_length by the shared policy (lengths.py)."""
from __future__ import annotations

from dataclasses import dataclass

from alignkit.data.chat import IGNORE, TemplateError, tokenize_conversation
from alignkit.data.errors import RecordError, SkipReport
from alignkit.data.formats import Conversation
from alignkit.data.lengths import LengthReport


@dataclass
class SFTExample:
    input_ids: list[int]
    labels: list[int]
    source: str = ""
    line: int = 0

    @property
    def num_targets(self) -> int:
        return sum(1 for x in self.labels if x != IGNORE)


def build_sft_examples(conversations: list[Conversation], tokenizer, *, max_length: int, overlong: str = "truncate",
                       train_on: str = "all_assistant", skip_bad: bool = False,
                       report: SkipReport | None = None) -> tuple[list[SFTExample], LengthReport]:
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
        fitted = lengths.fit([(tok.input_ids, tok.labels)], where, empty_reason="no target left after truncation")
        if fitted is None:
            continue
        (ids, labels), = fitted
        examples.append(SFTExample(ids, labels, conv.source, conv.line))
    return examples, lengths
