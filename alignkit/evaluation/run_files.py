"""Files of an evaluation run: model outputs in, results out (written with alignkit.atomic_write).

Model outputs are JSONL, one answer per line, in any of the layouts people already have:
`alignkit generate` ({"prompt", "response", "model"}), AlpacaEval ({"instruction", "output",
"generator"}) or chat records ({"messages": [...], "response"}). An optional "id" names the item.

A results file (`results.json`) is what every evaluation command writes:

    {"format": "alignkit-eval-results", "version": 1, "command": str,
     "meta": {str: scalar}, "sections": {report section: ...}, "details": {...}}

`sections` follows the schema of `report.write_report`, so `alignkit report` can merge any results
files into one page; `details` holds everything else (per-item verdicts stay in JSONL beside it).
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from alignkit.data.errors import DataError, RecordError, describe_type
from alignkit.data.readers import located_records, read_text
from alignkit.evaluation.report import SECTIONS

RESULTS_FORMAT = "alignkit-eval-results"
RESULTS_VERSION = 1
_SHOWN_KEYS = 10  # how many unmatched keys an error message lists


@dataclass(frozen=True)
class OutputRecord:
    prompt: str  # the instruction the response answers
    response: str
    id: str | None
    model: str | None
    where: str  # "file:line", for error messages


def _text_field(record: dict, names: Sequence[str], at: dict, what: str) -> tuple[str, str]:
    for name in names:
        if name in record:
            if not isinstance(record[name], str):
                raise RecordError(name, f"must be a string, got {describe_type(record[name])}", **at)
            return name, record[name]
    raise RecordError(names[0], f"missing: each line needs the {what} as one of {list(names)}", **at)


def _last_user_turn(record: dict, at: dict) -> str:
    messages = record["messages"]
    if not isinstance(messages, list):
        raise RecordError("messages", f"must be a list, got {describe_type(messages)}", **at)
    users = [m.get("content") for m in messages if isinstance(m, dict) and m.get("role") == "user"]
    if not users or not isinstance(users[-1], str):
        raise RecordError("messages", "holds no user turn with string content", **at)
    return users[-1]


def load_outputs(path: str | os.PathLike) -> list[OutputRecord]:
    """Read a model-outputs JSONL; a missing or mistyped field raises a RecordError naming file, line and field."""
    records = []
    for at, record in located_records(path):
        if "prompt" in record or "instruction" in record or "messages" not in record:
            _, prompt = _text_field(record, ("prompt", "instruction"), at, "instruction")
        else:
            prompt = _last_user_turn(record, at)
        _, response = _text_field(record, ("response", "output"), at, "model's answer")
        item_id = record.get("id")
        if item_id is not None and (isinstance(item_id, bool) or not isinstance(item_id, (str, int)) or item_id == ""):
            raise RecordError("id", f"must be a non-empty string or an integer, got {describe_type(item_id)}", **at)
        model = record.get("model", record.get("generator"))
        if model is not None and not isinstance(model, str):
            raise RecordError("model", f"must be a string, got {describe_type(model)}", **at)
        records.append(OutputRecord(prompt, response, None if item_id is None else str(item_id), model,
                                    f"{at['path']}:{at['line']}"))
    return records


def _keyed(records: Sequence[OutputRecord], by_id: bool, path: str) -> dict[str, OutputRecord]:
    keyed: dict[str, OutputRecord] = {}
    for record in records:
        key = record.id if by_id else record.prompt
        if key in keyed:
            what = f"id {key!r}" if by_id else f"prompt {key[:60]!r}"
            raise DataError(f"{record.where}: {what} appears twice in {path} (first at {keyed[key].where}); "
                            "each item must be answered once")
        keyed[key] = record
    return keyed


def match_by_key(files: dict[str, Sequence[OutputRecord]]) -> tuple[str, list[str], list[dict[str, OutputRecord]]]:
    """Pair the answers of several output files item by item.

    Items are matched by "id" when every record of every file has one, else by prompt text. Every
    file must cover the same items: a mismatch raises, listing the keys found in one file only.
    Returns (key kind, keys in the first file's order, one {file: record} per key).
    """
    by_id = all(record.id is not None for records in files.values() for record in records)
    keyed = {path: _keyed(records, by_id, path) for path, records in files.items()}
    paths = list(keyed)
    first = keyed[paths[0]]
    for path in paths[1:]:
        only_first = [k for k in first if k not in keyed[path]]
        only_other = [k for k in keyed[path] if k not in first]
        if only_first or only_other:
            kind = "ids" if by_id else "prompts"

            def listing(keys: list[str]) -> str:
                shown = ", ".join(repr(k[:60]) for k in keys[:_SHOWN_KEYS])
                return shown + (f" and {len(keys) - _SHOWN_KEYS} more" if len(keys) > _SHOWN_KEYS else "")
            raise DataError(f"{paths[0]} and {path} do not answer the same items (matched by {kind}): "
                            f"{len(only_first)} only in {paths[0]} [{listing(only_first)}]; "
                            f"{len(only_other)} only in {path} [{listing(only_other)}]")
    keys = list(first)
    return ("id" if by_id else "prompt"), keys, [{path: keyed[path][key] for path in paths} for key in keys]


def model_name(records: Sequence[OutputRecord], path: str | os.PathLike, given: str | None = None) -> str:
    """`given`, else the one model name the records carry, else the file's stem."""
    if given:
        return given
    names = {record.model for record in records if record.model}
    return names.pop() if len(names) == 1 else Path(path).stem


# ----------------------------------------------------------------------------- the results document

def results_document(command: str, meta: dict, sections: dict, details: dict) -> dict:
    unknown = sorted(set(sections) - set(SECTIONS))
    if unknown:
        raise ValueError(f"results sections {unknown} are not report sections {list(SECTIONS)}")
    return {"format": RESULTS_FORMAT, "version": RESULTS_VERSION, "command": command, "meta": meta,
            "sections": sections, "details": details}


# ----------------------------------------------------------------------------- reading results

def _ifeval_entry(data: dict, path: Path) -> dict:
    """`alignkit eval ifeval --out` writes IFEvalResult.to_dict(); turn it into one "ifeval" report row."""
    return {"model": path.stem, "prompt_strict": data["prompt_level_strict"], "prompt_loose": data["prompt_level_loose"],
            "instruction_strict": data["instruction_level_strict"],
            "instruction_loose": data["instruction_level_loose"], "n_prompts": data["prompts"]["total"]}


def read_sections(path: str | os.PathLike) -> tuple[dict, dict]:
    """(meta, report sections) of a results file, a report JSON file, or an `eval ifeval --out` file."""
    path = Path(path)
    try:
        data = json.loads(read_text(path))
    except json.JSONDecodeError as error:
        raise DataError(f"{path}:{error.lineno}: invalid JSON: {error.msg} at column {error.colno}") from None
    if not isinstance(data, dict):
        raise DataError(f"{path}: expected a JSON object, got {describe_type(data)}")
    if data.get("format") == RESULTS_FORMAT:
        if data.get("version") != RESULTS_VERSION:
            raise DataError(f"{path}: results format version {data.get('version')!r}; this alignkit reads "
                            f"version {RESULTS_VERSION}")
        for name in ("meta", "sections"):
            if not isinstance(data.get(name), dict):
                raise DataError(f"{path}: field {name!r} must be an object, got {describe_type(data.get(name))}")
        return data["meta"], data["sections"]
    if "prompt_level_strict" in data and "instruction_level_loose" in data:
        return {}, {"ifeval": [_ifeval_entry(data, path)]}
    if "format_version" in data:  # a report.json written by write_report
        return data.get("meta", {}), {k: v for k, v in data.items() if k in SECTIONS}
    from alignkit.reward_sampling.report_sections import report_sections

    sections = report_sections(data)  # a best-of-n, expert-iteration, iterative-DPO or RSO report.json
    if sections is not None:
        return {"method": data["method"]}, sections
    raise DataError(f"{path}: not an alignkit results file (no \"format\": \"{RESULTS_FORMAT}\"), report JSON, "
                    "IFEval result or best-of-n / expert-iteration / iterative-DPO / RSO report")


def merge_sections(files: Sequence[str | os.PathLike]) -> tuple[dict, dict]:
    """Meta and sections of several files together: lists are concatenated, meta keys get the file's stem.

    The report draws one leaderboard; two files with one each is an error rather than a silent pick.
    """
    meta: dict = {}
    merged: dict = {}
    leaderboard_from = None
    for path in files:
        file_meta, sections = read_sections(path)
        stem = Path(path).parent.name if Path(path).stem in ("results", "report") else Path(path).stem
        for key, value in file_meta.items():
            meta[f"{stem}: {key}" if len(files) > 1 else key] = value
        for name, value in sections.items():
            if name == "leaderboard":
                if leaderboard_from is not None:
                    raise DataError(f"{leaderboard_from} and {path} both hold a leaderboard; a report shows one")
                leaderboard_from, merged[name] = path, value
            elif name == "score_vs_length":
                merged.setdefault(name, {"length_unit": value.get("length_unit"), "series": []})
                merged[name]["series"].extend(value.get("series", []))
            elif isinstance(value, list):
                merged.setdefault(name, []).extend(value)
            else:
                raise DataError(f"{path}: section {name!r} must be a list, got {describe_type(value)}")
    if not merged:
        raise DataError(f"no report sections in {', '.join(str(f) for f in files)}")
    return meta, merged
