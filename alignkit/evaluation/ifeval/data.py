"""Reading IFEval prompt files and model response files (JSONL, or any format the record reader takes), with file:line:field errors."""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Iterator

from alignkit.data.readers import read_records
from alignkit.evaluation.ifeval.registry import InstructionError, validate_kwargs


class IFEvalFormatError(ValueError):
    """A malformed line in a prompt or response file; the message starts with "file:line:"."""


@dataclass(frozen=True)
class IFEvalPrompt:
    key: int | str
    prompt: str
    instruction_ids: tuple[str, ...]
    # One dict per instruction id, validated, with null entries dropped and defaults filled in.
    kwargs: tuple[dict[str, Any], ...]

    def __post_init__(self) -> None:
        if len(self.instruction_ids) != len(self.kwargs):
            raise ValueError(
                f"prompt {self.key!r}: {len(self.instruction_ids)} instruction ids but {len(self.kwargs)} kwargs"
            )


def _json_lines(path: str | os.PathLike[str]) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, object) per record; bad JSON or a non-object raises the reader's RecordError."""
    for record in read_records(path):
        yield record.line, record.data


def _field(record: dict[str, Any], name: str, kind: type | tuple[type, ...], where: str) -> Any:
    if name not in record:
        raise IFEvalFormatError(f"{where}: missing field {name!r}")
    value = record[name]
    if not isinstance(value, kind) or isinstance(value, bool):
        expected = " or ".join(k.__name__ for k in (kind if isinstance(kind, tuple) else (kind,)))
        raise IFEvalFormatError(f"{where}: field {name!r} must be {expected}, got {value!r}")
    return value


def load_ifeval_prompts(path: str | os.PathLike[str]) -> list[IFEvalPrompt]:
    """Every prompt of an IFEval `input_data.jsonl`, with each instruction's parameters validated."""
    prompts: list[IFEvalPrompt] = []
    first_line_of_key: dict[int | str, int] = {}
    for line_number, record in _json_lines(path):
        where = f"{path}:{line_number}"
        key = _field(record, "key", (int, str), where)
        prompt = _field(record, "prompt", str, where)
        ids = _field(record, "instruction_id_list", list, where)
        kwargs_list = _field(record, "kwargs", list, where)
        if key in first_line_of_key:
            raise IFEvalFormatError(f"{where}: field 'key': {key!r} already used on line {first_line_of_key[key]}")
        first_line_of_key[key] = line_number
        if not prompt.strip():
            raise IFEvalFormatError(f"{where}: field 'prompt' is empty")
        if not ids:
            raise IFEvalFormatError(f"{where}: field 'instruction_id_list' is empty")
        if len(ids) != len(kwargs_list):
            raise IFEvalFormatError(
                f"{where}: field 'kwargs' has {len(kwargs_list)} entries for {len(ids)} instruction ids"
            )
        cleaned = []
        for index, (instruction_id, kwargs) in enumerate(zip(ids, kwargs_list)):
            try:
                cleaned.append(validate_kwargs(instruction_id, kwargs, prompt))
            except InstructionError as error:
                place = f"kwargs[{index}].{error.field}" if error.field else f"instruction_id_list[{index}]"
                raise IFEvalFormatError(f"{where}: field {place!r}: {error}") from None
        prompts.append(IFEvalPrompt(key, prompt, tuple(ids), tuple(cleaned)))
    if not prompts:
        raise IFEvalFormatError(f"{path}: no prompts found")
    return prompts


def read_responses(path: str | os.PathLike[str]) -> dict[str, str]:
    """Responses keyed by prompt text from a JSONL of {"prompt": ..., "response": ...} lines.

    Other fields (a model name, timings) are ignored. A prompt answered twice is an error, since
    either answer could be the one scored.
    """
    responses: dict[str, str] = {}
    first_line_of_prompt: dict[str, int] = {}
    for line_number, record in _json_lines(path):
        where = f"{path}:{line_number}"
        prompt = _field(record, "prompt", str, where)
        response = _field(record, "response", str, where)
        if prompt in first_line_of_prompt:
            raise IFEvalFormatError(
                f"{where}: field 'prompt': already answered on line {first_line_of_prompt[prompt]}"
            )
        first_line_of_prompt[prompt] = line_number
        responses[prompt] = response
    return responses
