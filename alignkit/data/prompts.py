"""Prompts read with their records: the conversation to answer plus the record's other fields.

Whatever answers a prompt file (`alignkit generate`, best-of-n, online RL) needs more than the
conversation: a reward reads the record's reference answer, label or format, and an output row should
carry them on, so a generated file can be scored as it is. Any format the data layer reads works.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from alignkit.data.errors import RecordError
from alignkit.data.formats import to_conversation
from alignkit.data.readers import load_parsed

# A record's conversation and answer fields, in every layout alignkit reads or writes: an output row gets
# the prompt's other fields, never these (a second conversation or answer in it would be read instead).
CONVERSATION_KEYS = frozenset({"messages", "conversations", "instruction", "input", "output", "system", "prompt",
                               "completion", "response", "responses", "reward", "rewards", "ranked", "chosen",
                               "rejected", "source"})


@dataclass
class PromptRecord:
    messages: list[dict]  # the conversation to continue; ends with a user (or system) turn
    # The record's own fields (e.g. "answer"), plus "source" (file:line) and, when the record ended with
    # an assistant turn, "reference" (its content), which is left out of the prompt.
    metadata: dict = field(default_factory=dict)
    where: dict = field(default_factory=dict)  # path, line and unit of the record, for errors about it

    def error(self, field: str, reason: str) -> RecordError:
        """An error about one of the record's fields, naming its file and line."""
        return RecordError(field, reason, **self.where)

    def record_fields(self) -> dict:
        """The record's fields an output row carries on (its label, reference answer key, format, ...)."""
        return {k: v for k, v in self.metadata.items() if k not in CONVERSATION_KEYS}


def read_prompt_records(sources: Any, *, skip_bad: bool = False) -> list[PromptRecord]:
    """Prompts from files or DataSpecs in any format alignkit reads, each with its record's fields. A
    trailing assistant turn (a reference answer in an evaluation file) is left out of the prompt and kept
    as metadata["reference"]."""
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
        return [PromptRecord(messages, metadata, {"path": record.path, "line": record.line, "unit": record.unit})]

    prompts, _ = load_parsed(sources, parse, skip_bad=skip_bad)
    return prompts


def split_repeats(records: list[PromptRecord]) -> tuple[list[PromptRecord], list[tuple[PromptRecord, str]]]:
    """(each conversation's first record, [(a later record of the same conversation, the first one's source)])."""
    first: dict[str, str] = {}
    unique, repeats = [], []
    for record in records:
        key = json.dumps(record.messages, sort_keys=True, ensure_ascii=False)
        if key in first:
            repeats.append((record, first[key]))
        else:
            first[key] = record.metadata["source"]
            unique.append(record)
    return unique, repeats
