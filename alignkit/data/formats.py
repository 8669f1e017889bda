"""Instruction-data formats, all normalised to OpenAI chat messages.

Accepted layouts (picked by `fmt`, or by `fmt="auto"` from the first key present, in this order):
- "messages":          {"messages": [{"role", "content"}, ...]}            (OpenAI / TRL)
- "sharegpt":          {"conversations": [{"from", "value"}, ...]}         (from: human/user/gpt/assistant/system;
                       turns written as {"role", "content"} are accepted too)
- "alpaca":            {"instruction", "input"?, "output", "system"?}      (user turn = instruction, then a
                       blank line and the input when the input is non-empty)
- "prompt_completion": {"prompt", "completion"}, each a string (a user / an assistant turn) or a
                       message list (TRL's conversational prompt-completion)

The result is `[{"role": "system"|"user"|"assistant", "content": str}, ...]`; other message keys
(name, weight, ...) are not carried over. Errors name the field as written in the source, e.g.
`conversations[3].from` or `output`, so the user can find it.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from alignkit.data.errors import DataError, RecordError, SkipReport, describe_type
from alignkit.data.readers import DataSpec, Record, load_parsed

FORMATS = ("auto", "messages", "sharegpt", "alpaca", "prompt_completion")
ROLES = ("system", "user", "assistant")
SHAREGPT_SPEAKERS = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
                     "system": "system"}
# The key whose presence marks each format, in detection order. Order matters because real
# datasets carry extra columns (ultrachat_200k has both "prompt" and "messages").
_MARKERS = (("messages", "messages"), ("conversations", "sharegpt"), ("instruction", "alpaca"),
            ("prompt", "prompt_completion"))


@dataclass
class Turn:
    """One message plus the source fields it came from, so checks can name them."""

    role: str
    content: str
    role_field: str
    content_field: str


@dataclass
class Conversation:
    messages: list[dict]
    source: str = ""
    line: int = 0
    unit: str = "line"


def detect_format(data: dict) -> str:
    # A table (Parquet, datasets) mixing layouts gives every row every column, null where unused,
    # so a non-null marker wins; a present-but-null one is still picked so the error names it.
    for present in (lambda key: data.get(key) is not None, lambda key: key in data):
        for key, name in _MARKERS:
            if present(key):
                return name
    raise RecordError("", "cannot tell the format: expected a key 'messages', 'conversations', "
                          f"'instruction' or 'prompt'; found keys {sorted(data)}")


def to_conversation(data: dict, *, fmt: str = "auto", require_assistant: bool = True) -> list[dict]:
    """Normalise one record; raises an unplaced `RecordError` naming the bad field.

    `require_assistant=False` accepts prompts for generation (ending with a user turn, no answer).
    """
    turns, container = _turns(data, fmt=fmt, require_assistant=require_assistant)
    check_turns(turns, container, require_assistant=require_assistant)
    return turns_to_messages(turns)


def _turns(data: dict, *, fmt: str = "auto", require_assistant: bool = True) -> tuple[list[Turn], str]:
    """Parse without the conversation-level checks; returns the turns and the container field."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; expected one of {FORMATS}")
    if fmt == "auto":
        fmt = detect_format(data)
    if fmt == "messages":
        return parse_messages(required(data, "messages"), "messages"), "messages"
    if fmt == "sharegpt":
        return _sharegpt_turns(required(data, "conversations")), "conversations"
    if fmt == "alpaca":
        return _alpaca_turns(data, require_assistant), "output"
    return _prompt_completion_turns(data, require_assistant), "completion"


def load_conversations(sources: Any, *, fmt: str = "auto", skip_bad: bool = False,
                       require_assistant: bool = True, split: str | None = None,
                       ) -> tuple[list[Conversation], SkipReport]:
    """Read paths / DataSpecs and normalise every record; each result remembers its file and line.

    `fmt` and `split` apply to plain paths; a DataSpec carries its own format and split.
    """
    def parse(record: Record, spec: DataSpec) -> list[Conversation]:
        if spec.format not in FORMATS:
            raise DataError(f"{spec.path}: unknown format {spec.format!r}; expected one of {FORMATS}")
        messages = to_conversation(record.data, fmt=spec.format, require_assistant=require_assistant)
        return [Conversation(messages, record.path, record.line, record.unit)]

    return load_parsed(sources, parse, skip_bad=skip_bad, fmt=fmt, split=split)


# ---- building blocks shared with preference.py ----

def required(data: dict, key: str, field: str | None = None) -> Any:
    value = data.get(key)
    if value is None:
        raise RecordError(field or key, "missing" if key not in data else "missing (null)")
    return value


def require_str(value: Any, field: str) -> str:
    if not isinstance(value, str):
        raise RecordError(field, f"expected a string, got {describe_type(value)}")
    return value


def as_list(value: Any, field: str) -> list:
    """A list, or JSON text of one (CSV cells the reader left as text, such as `responses`)."""
    if isinstance(value, str):
        try:
            decoded = json.loads(value)
        except json.JSONDecodeError:
            raise RecordError(field, "expected a list of messages, got a string that is not JSON") from None
        if isinstance(decoded, list):
            return decoded
        raise RecordError(field, f"expected a list of messages, got JSON text holding {describe_type(decoded)}")
    if not isinstance(value, list):
        raise RecordError(field, f"expected a list of messages, got {describe_type(value)}")
    return value


def parse_messages(value: Any, field: str) -> list[Turn]:
    """OpenAI-style messages: each an object with a known `role` and a string `content`."""
    turns = []
    for index, message in enumerate(as_list(value, field)):
        where = f"{field}[{index}]"
        if not isinstance(message, dict):
            raise RecordError(where, f"expected an object with role and content, got {describe_type(message)}")
        role = require_str(required(message, "role", f"{where}.role"), f"{where}.role")
        if role not in ROLES:
            raise RecordError(f"{where}.role", f"unknown role {role!r}; expected one of {', '.join(ROLES)}")
        content = require_str(required(message, "content", f"{where}.content"), f"{where}.content")
        turns.append(Turn(role, content, f"{where}.role", f"{where}.content"))
    return turns


def text_turn(value: Any, field: str, role: str) -> Turn:
    return Turn(role, require_str(value, field), field, field)


def check_turns(turns: list[Turn], container: str, *, require_assistant: bool) -> None:
    """Conversation-level rules: non-empty, system first, no empty turns, a user turn, and
    (when required) ending with an assistant turn."""
    if not turns:
        raise RecordError(container, "empty conversation")
    for index, turn in enumerate(turns):
        if turn.role == "system" and index != 0:
            raise RecordError(turn.role_field, "a system message must be the first turn")
        if turn.role != "system" and not turn.content.strip():
            raise RecordError(turn.content_field, f"{turn.role} turn is empty")
    if not any(turn.role == "user" for turn in turns):
        raise RecordError(container, "no user turn")
    if require_assistant:
        if not any(turn.role == "assistant" for turn in turns):
            raise RecordError(container, "no assistant turn")
        if turns[-1].role != "assistant":
            raise RecordError(turns[-1].role_field,
                              f"conversation ends with a {turns[-1].role} turn; training needs an assistant turn last")


def turns_to_messages(turns: list[Turn]) -> list[dict]:
    return [{"role": turn.role, "content": turn.content} for turn in turns]


# ---- the formats ----

def _sharegpt_turns(value: Any) -> list[Turn]:
    turns = []
    for index, turn in enumerate(as_list(value, "conversations")):
        where = f"conversations[{index}]"
        if not isinstance(turn, dict):
            raise RecordError(where, f"expected an object with from and value, got {describe_type(turn)}")
        speaker_key, text_key = ("role", "content") if "from" not in turn and "role" in turn else ("from", "value")
        speaker = require_str(required(turn, speaker_key, f"{where}.{speaker_key}"), f"{where}.{speaker_key}")
        if speaker not in SHAREGPT_SPEAKERS:
            raise RecordError(f"{where}.{speaker_key}", f"unknown speaker {speaker!r}; expected one of "
                                                        f"{', '.join(SHAREGPT_SPEAKERS)}")
        text = require_str(required(turn, text_key, f"{where}.{text_key}"), f"{where}.{text_key}")
        turns.append(Turn(SHAREGPT_SPEAKERS[speaker], text, f"{where}.{speaker_key}", f"{where}.{text_key}"))
    return turns


def _alpaca_turns(data: dict, require_assistant: bool) -> list[Turn]:
    turns = []
    if data.get("system") is not None and require_str(data["system"], "system").strip():
        turns.append(text_turn(data["system"], "system", "system"))
    instruction = require_str(required(data, "instruction"), "instruction")
    extra = data.get("input")
    if extra is not None and require_str(extra, "input").strip():
        instruction = f"{instruction}\n\n{extra}" if instruction.strip() else extra
    turns.append(Turn("user", instruction, "instruction", "instruction"))
    if require_assistant or data.get("output") is not None:
        turns.append(text_turn(required(data, "output"), "output", "assistant"))
    return turns


def _prompt_completion_turns(data: dict, require_assistant: bool) -> list[Turn]:
    prompt = required(data, "prompt")
    turns = [text_turn(prompt, "prompt", "user")] if isinstance(prompt, str) else parse_messages(prompt, "prompt")
    if not require_assistant and data.get("completion") is None:
        return turns
    completion = required(data, "completion")
    if isinstance(completion, str):
        return turns + [text_turn(completion, "completion", "assistant")]
    answer = parse_messages(completion, "completion")
    for turn in answer:
        if turn.role != "assistant":
            raise RecordError(turn.role_field, f"completion turns must be assistant turns, got {turn.role!r}")
    return turns + answer

