"""Input records as the data commands take them: each conversation once, and a record's own fields kept apart."""
from __future__ import annotations

from alignkit.construction.counts import Counts
from alignkit.data.prompts import PromptRecord, split_repeats


def own_fields(prompt: PromptRecord) -> dict:
    # Nested, not beside the row's own fields: a record's `id`, `label` or `model` must neither overwrite
    # the row's nor be read by a loader as the row's (a `label` would make a pair a KTO record).
    return {k: v for k, v in prompt.record_fields().items() if k not in ("finish_reason", "reference")}


def unique_prompts(records: list[PromptRecord], counts: Counts, step: str = "prompts") -> list[PromptRecord]:
    """The records whose conversation has not been seen before; repeats are counted as `duplicate`."""
    unique, repeats = split_repeats(records)
    counts.declare(step, ("duplicate",))
    counts.keep(step, len(unique))
    if repeats:
        counts.drop(step, "duplicate", len(repeats))
    return unique
