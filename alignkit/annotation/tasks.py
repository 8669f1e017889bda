"""Annotation task files: one item per line, each asking people to compare, rank or rate responses.

A task file is JSONL (or any format alignkit reads), one item per record:

    {"id": "q1",                                   optional; default: a hash of prompt and responses
     "kind": "pairwise" | "ranking" | "rating",    optional; default: rating when `rubric` or `scale` is
                                                   given, pairwise for 2 responses, ranking for more
     "prompt": "text" | [OpenAI messages],         earlier turns are shown as a conversation
     "responses": ["text", ...] | [{"content": "text", "model": "name"}, ...],
     "question": "Which answer follows the instruction better?",   optional, shown above the responses
     "scale": [1, 10],                             rating only; the default
     "rubric": ["1: ...", "2: ...", "3: ...", "4: ...", "5: ..."]} rating only; five levels, scale 1-5

Pairwise items have two responses, ranking items 2 to 10 (one key each), rating items 1 to 10. A model
name on each response lets votes become battles for the leaderboard. `make_tasks` builds a task file
from `alignkit generate` outputs of several models.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Sequence

from alignkit.data.errors import DataError, RecordError, describe_type
from alignkit.data.formats import as_list, parse_messages, require_str, required, text_turn
from alignkit.data.prompts import read_prompt_records
from alignkit.data.readers import load_parsed
from alignkit.stable_ids import stable_id

KINDS = ("pairwise", "ranking", "rating")
MAX_RESPONSES = 10
DEFAULT_SCALE = (1, 10)
RUBRIC_LEVELS = 5


@dataclass(frozen=True)
class Response:
    content: str
    model: str | None = None


@dataclass
class TaskItem:
    id: str
    kind: str
    prompt: list[dict]  # OpenAI messages; the last is the turn the responses answer
    responses: list[Response]
    question: str | None = None
    scale: tuple[int, int] | None = None  # rating only
    rubric: list[str] | None = None  # rating only; RUBRIC_LEVELS descriptions for scores 1..5
    where: str = field(default="", compare=False)  # file:line, for messages

    def to_record(self) -> dict:
        """The item as a task-file record; reading it back gives the same item."""
        record: dict[str, Any] = {"id": self.id, "kind": self.kind, "prompt": self.prompt,
                                  "responses": [{"content": r.content, **({"model": r.model} if r.model else {})}
                                                for r in self.responses]}
        if self.question:
            record["question"] = self.question
        if self.rubric:
            record["rubric"] = self.rubric
        elif self.scale:
            record["scale"] = list(self.scale)
        return record

    def body(self) -> str:
        """What makes the item what it is, as canonical JSON: a reloaded task file must match it."""
        record = self.to_record()
        return json.dumps(record, sort_keys=True, ensure_ascii=False)


def _responses(value: Any) -> list[Response]:
    responses = []
    for index, entry in enumerate(as_list(value, "responses")):
        where = f"responses[{index}]"
        if isinstance(entry, str):
            responses.append(Response(entry))
        elif isinstance(entry, dict):
            content = require_str(required(entry, "content", f"{where}.content"), f"{where}.content")
            model = entry.get("model")
            if model is not None and (not isinstance(model, str) or not model.strip()):
                raise RecordError(f"{where}.model", f"must be a non-empty string, got {model!r}")
            responses.append(Response(content, model))
        else:
            raise RecordError(where, f"expected a string or an object with content, got {describe_type(entry)}")
    if not responses:
        raise RecordError("responses", "no responses")
    if len(responses) > MAX_RESPONSES:
        raise RecordError("responses", f"{len(responses)} responses; at most {MAX_RESPONSES} per item")
    return responses


def _prompt(data: dict) -> list[dict]:
    value = required(data, "prompt")
    turns = [text_turn(value, "prompt", "user")] if isinstance(value, str) else parse_messages(value, "prompt")
    if not turns or turns[-1].role != "user":
        raise RecordError("prompt", "must end with a user turn")
    if not turns[-1].content.strip():
        raise RecordError("prompt", "the last user turn is empty")
    return [{"role": t.role, "content": t.content} for t in turns]


def _kind(data: dict, count: int) -> str:
    kind = data.get("kind")
    if kind is None:
        if "rubric" in data or "scale" in data:
            return "rating"
        return "pairwise" if count == 2 else "ranking" if count > 2 else "rating"
    if kind not in KINDS:
        raise RecordError("kind", f"unknown kind {kind!r}; expected one of {', '.join(KINDS)}")
    return kind


def _rating_scale(data: dict) -> tuple[tuple[int, int], list[str] | None]:
    if "rubric" in data:
        if "scale" in data:
            raise RecordError("scale", "a rubric sets the scale to 1-5; give one or the other")
        rubric = as_list(data["rubric"], "rubric")
        if len(rubric) != RUBRIC_LEVELS or not all(isinstance(r, str) and r.strip() for r in rubric):
            raise RecordError("rubric", f"expected {RUBRIC_LEVELS} non-empty descriptions, for scores 1 to 5")
        return (1, RUBRIC_LEVELS), list(rubric)
    scale = data.get("scale", list(DEFAULT_SCALE))
    if (not isinstance(scale, list) or len(scale) != 2 or not all(isinstance(s, int) and not isinstance(s, bool)
                                                                   for s in scale)
            or not 0 <= scale[0] < scale[1] or scale[1] - scale[0] > 10):
        raise RecordError("scale", f"expected [low, high]: integers, 0 <= low < high, at most 11 levels; got {scale!r}")
    return (scale[0], scale[1]), None


def parse_item(data: dict, where: str = "") -> TaskItem:
    prompt = _prompt(data)
    responses = _responses(required(data, "responses"))
    kind = _kind(data, len(responses))
    if kind == "pairwise" and len(responses) != 2:
        raise RecordError("responses", f"a pairwise item has 2 responses, got {len(responses)}")
    if kind == "ranking" and len(responses) < 2:
        raise RecordError("responses", "a ranking item needs at least 2 responses")
    if kind != "rating" and ("rubric" in data or "scale" in data):
        raise RecordError("rubric" if "rubric" in data else "scale", f"only rating items have one, not {kind}")
    scale, rubric = _rating_scale(data) if kind == "rating" else (None, None)
    question = data.get("question")
    if question is not None:
        question = require_str(question, "question")
    item_id = data.get("id")
    if item_id is None:
        item_id = stable_id(prompt, [r.content for r in responses])
    elif isinstance(item_id, bool) or not isinstance(item_id, (str, int)) or str(item_id) == "":
        raise RecordError("id", f"must be a non-empty string or an integer, got {item_id!r}")
    return TaskItem(str(item_id), kind, prompt, responses, question, scale, rubric, where)


def read_tasks(paths: str | Sequence[str]) -> list[TaskItem]:
    """Every item of the task files, checked; a bad record stops with its file, line and field."""
    if isinstance(paths, str):
        paths = [paths]
    seen: dict[str, str] = {}

    def parse(record, spec):
        item = parse_item(record.data, f"{record.path}:{record.line}")
        if item.id in seen:
            raise RecordError("id", f"item id {item.id!r} already used at {seen[item.id]}")
        seen[item.id] = item.where
        return [item]

    items, _ = load_parsed(list(paths), parse, skip_bad=False)
    return items


def make_tasks(output_files: Sequence[str], kind: str = "pairwise", question: str | None = None) -> tuple[list[dict], int]:
    """Task records comparing several models' `alignkit generate` outputs on the same prompts.

    Rows are matched by their `id` field when every file has one, else by the prompt conversation. One
    file with several samples per prompt (`generate --n`) gives one item over its samples. Returns the
    records and how many prompts were left out because a file lacks them."""
    if kind not in ("pairwise", "ranking"):
        raise DataError(f"kind: expected pairwise or ranking, got {kind!r}")
    files = []
    for path in output_files:
        rows = {}
        for record in read_prompt_records([path]):
            data = record.metadata
            key = json.dumps(data["id"] if "id" in data else record.messages, sort_keys=True)
            if "responses" in data and len(output_files) == 1:
                contents = [str(r) for r in data["responses"]]
            elif "response" in data:
                contents = [required(data, "response")]
            else:
                raise record.error("response", "no response: expected an `alignkit generate` output row")
            model = str(data.get("model") or path)
            rows.setdefault(key, (record.messages, [Response(require_str(c, "response"), model) for c in contents]))
        files.append(rows)
    shared = [key for key in files[0] if all(key in rows for rows in files[1:])]
    missing = len(set().union(*files)) - len(shared)
    records = []
    for key in shared:
        prompt = files[0][key][0]
        responses = [response for rows in files for response in rows[key][1]]
        if kind == "pairwise" and len(responses) != 2:
            raise DataError(f"a pairwise task needs 2 responses per prompt; {len(output_files)} file(s) give "
                            f"{len(responses)} (use --kind ranking)")
        item = TaskItem(stable_id(prompt, [r.content for r in responses]), kind, prompt, responses, question)
        records.append(item.to_record())
    if not records:
        raise DataError(f"no prompt is answered in every one of {', '.join(output_files)}")
    return records, missing
