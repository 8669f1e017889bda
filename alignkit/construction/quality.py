"""Data quality: the input and output layer shared by `alignkit data dedup`, `decontaminate` and `stats`.

The commands live in dedup.py, decontaminate.py and stats.py; their configs and run functions are found
here too (imported on first use), which is where `alignkit data` looks for them.

Input is any data file alignkit reads, several at once, in order: SFT records (messages, ShareGPT,
instruction/output, prompt/completion), prompts, preference pairs and rankings. Each record is read with
the data layer's own parsers, so what these commands accept is what training accepts, and a bad record
stops the job with its file, line and field. A record becomes one conversation:
- SFT records and prompts: `formats.to_conversation` (an answer is optional, so prompt files work too);
- a preference pair: its prompt and the chosen response (`preference.to_pair`); the rejected response is
  not the record's content, it is what the record says not to do;
- a ranking: its prompt and its best response (`preference.to_ranking`), so a ranking must be scored or
  marked `ranked: true` (unscored samples from `generate --n` are refused, as training refuses them).

`text` then picks the turns that are compared: `prompt` (the user turns), `response` (the assistant turns,
i.e. the chosen or best response of a preference record) or `all` (every turn, system included).
Comparisons use `filters.normalise` (case, punctuation and spacing folded away), the same rule
self-instruct's duplicate filter uses.

Records are written out as they were read, the kept ones in input order, to `data.jsonl`; removed ones go
to `dropped.jsonl` with the reason, their source `file:line` and what they matched. These jobs make no
model calls and take seconds, so there is nothing to resume: every run rewrites its outputs
(`if_exists` has no effect here). A generating job's folder is refused, so its summary is never overwritten.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Iterable

from alignkit.atomic_write import write_json_atomic, write_jsonl_atomic
from alignkit.config import ConfigError, require, require_choice
from alignkit.construction.counts import Counts, JobResult
from alignkit.construction.filters import normalise
from alignkit.construction.generator import JobConfig
from alignkit.construction.journal import JOURNAL, SUMMARY
from alignkit.data.errors import RecordError
from alignkit.data.formats import FORMATS, to_conversation
from alignkit.data.preference import detect_preference_format, to_pair, to_ranking
from alignkit.data.readers import DataSpec, Record, read_records
from alignkit.lazy_exports import lazy_exports

__all__, __getattr__ = lazy_exports("alignkit.construction", {
    "dedup": ("DedupConfig", "run_dedup"),
    "decontaminate": ("DecontaminateConfig", "run_decontaminate"),
    "stats": ("StatsConfig", "run_stats"),
})

TEXTS = ("prompt", "response", "all")
KEPT = "data.jsonl"
DROPPED = "dropped.jsonl"
# Formats a data entry may name: the conversation layouts, and the two preference layouts read here.
INPUT_FORMATS = (*FORMATS, "pair", "ranking")


@dataclass
class InputConfig(JobConfig):
    """The keys the three quality commands share: what to read, and how to describe what is kept."""
    output_dir: str = ""  # the job's folder: data.jsonl and dropped.jsonl (dedup, decontaminate), summary.json
    if_exists: str = "overwrite"  # not used: these commands make no model calls and rewrite their outputs each run
    data: list[DataSpec] = field(default_factory=list)  # input files, in order: paths, or {path, format, split}
    tokenizer: str = ""  # count tokens too with this tokenizer: embedded or a model folder; empty: words only
    languages: bool = True  # detect each record's language (langdetect, fixed seed)

    def validate(self, where: str = "") -> None:
        super().validate(where)
        require(len(self.data) > 0, where, "data", "a list of at least one data file", self.data)
        for index, spec in enumerate(self.data):
            require_choice(where, f"data[{index}].format", spec.format, INPUT_FORMATS)
        check_tokenizer(self.tokenizer, where)


def check_tokenizer(spec: str, where: str = "") -> None:
    from alignkit.models.loading import EMBEDDED_ALIASES

    require(spec == "" or spec.lower() in EMBEDDED_ALIASES or os.path.isdir(os.path.expanduser(spec)), where,
            "tokenizer", "empty, embedded or a model folder", spec)


@dataclass
class Item:
    """One input record: as read (written out unchanged), where it came from, and its conversation."""
    record: Record
    messages: list[dict]  # the normalised conversation: SFT turns, or a preference prompt + chosen/best response

    @property
    def where(self) -> str:
        return location(self.record)

    def turns(self, text: str) -> list[str]:
        """The contents of the turns `text` picks: prompt (user turns), response (assistant turns) or all."""
        roles = {"prompt": ("user",), "response": ("assistant",), "all": ("system", "user", "assistant")}[text]
        return [message["content"] for message in self.messages if message["role"] in roles]


def location(record: Record) -> str:
    """`file:17` (a line), or `file:record 17` (an item of a JSON list or a table), as errors name it."""
    return record.error("", "").where


def conversation(data: dict, fmt: str = "auto") -> list[dict]:
    """A record's conversation as the data layer reads it; raises an unplaced RecordError for a bad record."""
    kind = fmt if fmt in ("pair", "ranking") else "conversation"
    if fmt == "auto":
        try:  # the data layer's rule: non-null keys first, responses before chosen/rejected
            kind = detect_preference_format(data)
        except RecordError:  # no preference keys: a conversation or a prompt
            pass
    if kind == "pair":
        pair = to_pair(data)
        return pair.prompt + pair.chosen
    if kind == "ranking":
        ranking = to_ranking(data)
        return ranking.prompt + ranking.responses[ranking.best_first()[0]]
    # Unpaired feedback (prompt, completion, label) reads as prompt + completion.
    return to_conversation(data, fmt=fmt, require_assistant=False)


def read_items(specs: Iterable[DataSpec], *, progress: bool = False) -> list[Item]:
    """Every record of every source, in order; a bad one raises a RecordError placed at its file and line."""
    from tqdm.auto import tqdm

    items = []
    for spec in specs:
        for record in tqdm(read_records(spec.path, split=spec.split), desc=f"read {spec.path}", unit="record",
                           disable=not progress):
            try:
                items.append(Item(record, conversation(record.data, spec.format)))
            except RecordError as error:
                raise error.located(record.path, record.line, record.unit) from None
    return items


def compared_text(item: Item, text: str) -> str:
    """The text a record is compared by; a record without the turns `text` picks is an error, not a match
    of every other such record on the empty string."""
    turns = item.turns(text)
    if not turns:
        which = {"prompt": "user", "response": "assistant"}[text]
        raise RecordError("", f"no {which} turn to compare (text: {text}); use text: all, or text: "
                              f"{'response' if text == 'prompt' else 'prompt'}",
                          path=item.record.path, line=item.record.line, unit=item.record.unit)
    return "\n".join(turns)


def words(text: str) -> list[str]:
    """The normalised words of `text` (case, punctuation and spacing folded away)."""
    return normalise(text).split()


def dropped_row(item: Item, reason: str, matched: dict) -> dict:
    return {"reason": reason, "source": item.where, "matched": matched, "record": item.record.data}


def check_output_dir(output_dir: str) -> None:
    """Refuse a generating job's folder: these outputs and summary.json would overwrite its own."""
    if os.path.exists(os.path.join(output_dir, JOURNAL)):
        raise ConfigError(f"output_dir: {output_dir} holds a generating job ({JOURNAL}); choose another folder")


def write_outputs(output_dir: str, counts: Counts, outputs: dict[str, list[dict]], extra: dict) -> JobResult:
    """Each output file, then summary.json (the job's counts, the written files and `extra`), atomically.

    The old summary goes first: a kill before the new one is written leaves no summary beside outputs it
    does not describe."""
    os.makedirs(output_dir, exist_ok=True)
    summary_path = os.path.join(output_dir, SUMMARY)
    if os.path.exists(summary_path):
        os.remove(summary_path)
    for name, rows in outputs.items():
        write_jsonl_atomic(os.path.join(output_dir, name), rows)
    result = JobResult(output_dir, {name: len(rows) for name, rows in outputs.items()}, counts)
    write_json_atomic(summary_path, {**result.summary(), **extra})
    return result
