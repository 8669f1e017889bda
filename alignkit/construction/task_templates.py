"""The task template file: one NLP task, where its data is, and several ways of asking it (FLAN / T0 style).

One YAML file per task (see configs/data/templates/ for five written for this project):

    task: nli                     # the task's name: every row's `task` field, and what heldout_tasks names
    type: nli                     # labelled: nli | sentiment | paraphrase | classification (answer.labels needed);
                                  # free text: extractive_qa (answer.span_of needed) | summarization | generation
    data:
      path: configs/data/tasks/nli.jsonl   # any file alignkit reads, a save_to_disk folder or a hub dataset id
      split_column: split         # a local file: the column naming each record's split; empty: the path holds
                                  # named splits itself (a datasets folder or hub id)
      train: train                # the names of the training and the test split
      test: test
    columns:                      # template variable: the record's column; `answers.text.0` reaches into
      premise: premise            # nested values (a key, then a list index)
      hypothesis: hypothesis
    answer:
      column: label               # where the gold answer is
      labels: {0: entailment, 1: neutral, 2: contradiction}   # the column's value -> the option text
    rationale: rationale          # optional column: a worked explanation, for chain-of-thought targets
    templates:
      - name: options_listed
        prompt: "..."             # jinja2; sees the columns and `options` (labelled tasks: the option texts)
        target: "{{ answer }}"    # sees `answer` too
        cot_prompt: "..."         # optional (default: prompt): asks for reasoning before the answer
        cot_target: "{{ rationale }} So the answer is {{ answer }}."   # optional; sees `rationale` too

Paths in the file are relative to where alignkit runs, as in every config. Templates render in a sandboxed
jinja2 environment with StrictUndefined: a variable no record can give (a typo, or `answer` in a prompt,
which would give the answer away) is a one-line error naming the file, the template and the variable when
the file loads, before any data is read; anything jinja finds undefined while rendering is the same error.

A record that lacks a mapped column, holds a label with no option text, or (extractive QA) an answer that is
not a span of its passage is a `RecordError` at its file and line: the caller raises it or, when skipping
bad records, counts it.
"""
from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cached_property
from typing import Any

from jinja2 import StrictUndefined, TemplateSyntaxError, UndefinedError, meta
from jinja2.sandbox import SandboxedEnvironment

from alignkit.config import ConfigError, read_yaml
from alignkit.data.errors import DataError, RecordError
from alignkit.data.readers import read_records

LABELLED_TYPES = ("nli", "sentiment", "paraphrase", "classification")
FREE_TYPES = ("extractive_qa", "summarization", "generation")
# Variables the file does not map from a column; a column may not take their names.
RESERVED = ("answer", "options", "rationale")
FIELDS = ("prompt", "target", "cot_prompt", "cot_target")

# trim_blocks/lstrip_blocks: a `{% for %}` line in a YAML block leaves no blank line behind.
ENV = SandboxedEnvironment(undefined=StrictUndefined, trim_blocks=True, lstrip_blocks=True, autoescape=False)


@dataclass
class Template:
    name: str
    sources: dict  # field -> jinja2 source, for the fields the file gives
    compiled: dict  # field -> jinja2.Template

    @property
    def has_cot(self) -> bool:
        return "cot_target" in self.compiled


@dataclass
class TaskData:
    path: str
    split_column: str
    train: str
    test: str


@dataclass
class TaskFile:
    file: str  # the template file, named by every error about it
    task: str
    type: str
    data: TaskData
    columns: dict[str, str]  # variable -> column path
    answer_column: str
    labels: dict[str, str]  # label key (see label_key) -> option text; empty for free-text tasks
    span_of: str  # extractive QA: the variable the answer must appear in word for word
    rationale: str  # column path of a worked explanation, or ""
    templates: list[Template]

    @property
    def options(self) -> list[str]:
        return list(dict.fromkeys(self.labels.values()))  # two labels may share a text; list it once


@dataclass
class TaskRecord:
    variables: dict  # the columns, `answer`, `options` (labelled tasks) and `rationale` (None when absent)
    origin: str  # file:line of the record
    index: int  # its position in its split, for the seeded draws

    @cached_property
    def inputs(self) -> str:
        """The record's prompt inputs, to tell an exemplar that repeats the example from a different one."""
        return json.dumps({k: v for k, v in self.variables.items() if k not in RESERVED}, sort_keys=True,
                          ensure_ascii=False, default=str)


# ---- loading a template file ----

def load_task_file(path: str) -> TaskFile:
    tree = read_yaml(path)
    _known(path, "", tree, ("task", "type", "data", "columns", "answer", "rationale", "templates"))
    task = _text(path, "task", tree.get("task"))
    if not re.fullmatch(r"[\w.-]+", task):
        raise ConfigError(f"{path}: task: must be a name of letters, digits, '_', '.' or '-', got {task!r}")
    kind = tree.get("type")
    if kind not in LABELLED_TYPES + FREE_TYPES:
        raise ConfigError(f"{path}: type: must be one of {', '.join(LABELLED_TYPES + FREE_TYPES)}, got {kind!r}")
    data = _mapping(path, "data", tree.get("data"))
    _known(path, "data.", data, ("path", "split_column", "train", "test"))
    task_data = TaskData(_text(path, "data.path", data.get("path")),
                         _text(path, "data.split_column", data.get("split_column", ""), empty=True),
                         _text(path, "data.train", data.get("train", "train")),
                         _text(path, "data.test", data.get("test", "test")))
    if not task_data.split_column and os.path.isfile(os.path.expanduser(task_data.path)):
        raise ConfigError(f"{path}: data.split_column: a local file needs the column that names each record's "
                          "split (only a datasets folder or hub id holds named splits)")
    columns = _mapping(path, "columns", tree.get("columns"))
    if not columns:
        raise ConfigError(f"{path}: columns: must map at least one template variable to a column")
    for name, column in columns.items():
        if not isinstance(name, str) or not name.isidentifier() or name in RESERVED:
            raise ConfigError(f"{path}: columns.{name}: must be a variable name other than {', '.join(RESERVED)}")
        _text(path, f"columns.{name}", column)
    answer = _mapping(path, "answer", tree.get("answer"))
    _known(path, "answer.", answer, ("column", "labels", "span_of"))
    labels = _labels(path, answer.get("labels"))
    if (kind in LABELLED_TYPES) != bool(labels):
        raise ConfigError(f"{path}: answer.labels: a {kind} task must " + ("name" if labels == {} else "not name")
                          + " the option text of each label")
    span_of = _text(path, "answer.span_of", answer.get("span_of", ""), empty=True)
    if (kind == "extractive_qa") != bool(span_of) or (span_of and span_of not in columns):
        raise ConfigError(f"{path}: answer.span_of: an extractive_qa task (only) names the column variable its "
                          f"answer is a span of, one of {', '.join(columns)}; got {span_of!r}")
    rationale = _text(path, "rationale", tree.get("rationale", ""), empty=True)
    task_file = TaskFile(path, task, kind, task_data, dict(columns), _text(path, "answer.column", answer.get("column")),
                         labels, span_of, rationale, [])
    raw_templates = tree.get("templates")
    if not isinstance(raw_templates, list) or not raw_templates:
        raise ConfigError(f"{path}: templates: must be a list of at least one template")
    task_file.templates = [_template(task_file, index, item) for index, item in enumerate(raw_templates)]
    names = [t.name for t in task_file.templates]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ConfigError(f"{path}: templates: names must differ; repeated: {', '.join(repeated)}")
    return task_file


def _template(task: TaskFile, index: int, item: Any) -> Template:
    where = f"templates[{index}]"
    item = _mapping(task.file, where, item)
    _known(task.file, where + ".", item, ("name",) + FIELDS)
    name = _text(task.file, f"{where}.name", item.get("name"))
    sources = {field: _text(task.file, f"{where}.{field}", item[field]) for field in FIELDS if field in item}
    for field in ("prompt", "target"):
        if field not in sources:
            raise ConfigError(f"{task.file}: {where}.{field}: missing (template {name!r})")
    if "cot_prompt" in sources and "cot_target" not in sources:
        raise ConfigError(f"{task.file}: {where}.cot_prompt: given without a cot_target (template {name!r})")
    if "cot_target" in sources and not task.rationale:
        raise ConfigError(f"{task.file}: {where}.cot_target: the file names no rationale column to fill it "
                          f"(template {name!r})")
    compiled = {}
    for field, source in sources.items():
        try:
            parsed = ENV.parse(source)
        except TemplateSyntaxError as error:
            raise ConfigError(f"{task.file}: template {name!r} {field}: jinja2 syntax error at line "
                              f"{error.lineno}: {error.message}") from None
        allowed = variables_for(task, field)
        for variable in sorted(meta.find_undeclared_variables(parsed) - set(ENV.globals)):
            if variable not in allowed:
                why = ("a prompt may not see the answer (it would give it away)"
                       if variable == "answer" and field.endswith("prompt")
                       else f"not a variable {field} can see here; it sees {', '.join(sorted(allowed))}")
                raise ConfigError(f"{task.file}: template {name!r} {field}: names {variable!r}: {why}")
        compiled[field] = ENV.from_string(source)
    return Template(name, sources, compiled)


def variables_for(task: TaskFile, field: str) -> set[str]:
    """What a template field may name: prompts see the inputs (and options), targets the answer too, and
    chain-of-thought targets the rationale too."""
    names = set(task.columns) | ({"options"} if task.labels else set())
    if field in ("target", "cot_target"):
        names.add("answer")
    if field == "cot_target":
        names.add("rationale")
    return names


def _labels(path: str, value: Any) -> dict[str, str]:
    if value is None:
        return {}
    labels: dict[str, str] = {}
    for raw, text in _mapping(path, "answer.labels", value).items():
        key = label_key(raw)
        if key is None or key in labels:
            raise ConfigError(f"{path}: answer.labels: {raw!r} is " + ("repeated" if key else "not a label value"))
        labels[key] = _text(path, f"answer.labels.{raw}", text)
    return labels


def _known(path: str, prefix: str, tree: dict, keys: tuple[str, ...]) -> None:
    unknown = sorted(str(k) for k in tree if k not in keys)
    if unknown:
        raise ConfigError(f"{path}: {prefix}{unknown[0]}: unknown key; valid keys: {', '.join(keys)}")


def _mapping(path: str, key: str, value: Any) -> dict:
    if not isinstance(value, dict):
        raise ConfigError(f"{path}: {key}: must be a mapping, got {value!r}")
    return value


def _text(path: str, key: str, value: Any, *, empty: bool = False) -> str:
    if value is None and empty:
        return ""
    if not isinstance(value, str) or not (empty or value.strip()):
        raise ConfigError(f"{path}: {key}: must be {'a' if empty else 'a non-empty'} string, got {value!r}")
    return value


# ---- one record's variables ----

def label_key(value: Any) -> str | None:
    """The key a label value is looked up by: an int label 0 in a datasets table, 0.0 in Parquet and "0" in a
    CSV cell are the same label."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, (int, str)):
        return str(value).strip()
    return None


def lookup(data: Any, column: str) -> Any:
    """The value at a dotted column path (`answers.text.0`: a key, then a list index); RecordError if absent."""
    value = data
    for part in column.split("."):
        if isinstance(value, dict) and part in value:
            value = value[part]
        elif isinstance(value, list) and part.isdigit() and int(part) < len(value):
            value = value[int(part)]
        else:
            raise RecordError(column, "missing")
    if value is None or (isinstance(value, str) and not value.strip()):
        raise RecordError(column, "missing (null)" if value is None else "empty")
    return value


def record_variables(task: TaskFile, data: dict) -> dict:
    """The template variables of one record (an unplaced RecordError for a bad one)."""
    variables = {name: lookup(data, column) for name, column in task.columns.items()}
    gold = lookup(data, task.answer_column)
    if task.labels:
        key = label_key(gold)
        if key not in task.labels:
            raise RecordError(task.answer_column, f"{gold!r} is not one of the labels {', '.join(task.labels)}")
        variables["answer"] = task.labels[key]
        variables["options"] = task.options
    elif not isinstance(gold, str):
        raise RecordError(task.answer_column, f"must be text, got {type(gold).__name__}")
    else:
        variables["answer"] = gold.strip()
    if task.span_of and variables["answer"] not in str(variables[task.span_of]):
        raise RecordError(task.answer_column, f"not a span of {task.columns[task.span_of]}")
    try:
        rationale = lookup(data, task.rationale) if task.rationale else None
    except RecordError:  # optional: a record without one never gets a chain-of-thought target
        rationale = None
    variables["rationale"] = rationale.strip() if isinstance(rationale, str) else None
    return variables


def render(task: TaskFile, template: Template, field: str, variables: dict) -> str:
    try:
        return template.compiled[field].render(variables).strip()
    except UndefinedError as error:
        raise ConfigError(f"{task.file}: template {template.name!r} {field}: {error.message}") from None


# ---- reading a task's splits ----

def read_task(task: TaskFile, splits: tuple[str, ...], *, skip_bad: bool
              ) -> tuple[dict[str, list[TaskRecord]], list[tuple[str, RecordError]]]:
    """The records of the wanted splits ("train", "test"), and the bad ones skipped as (split, error); a
    record of a local file with no split value is skipped as split "input". Without `skip_bad` the first
    bad record raises its RecordError, placed at its file and line."""
    records: dict[str, list[TaskRecord]] = {split: [] for split in splits}
    dropped: list[tuple[str, RecordError]] = []
    for split, record in _split_records(task, splits, skip_bad, dropped):
        try:
            variables = record_variables(task, record.data)
        except RecordError as error:
            placed = error.located(record.path, record.line, record.unit)
            if not skip_bad:
                raise placed from None
            dropped.append((split, placed))
            continue
        records[split].append(TaskRecord(variables, record.error("", "").where, len(records[split])))  # file:line
    for split, kept in records.items():  # a task with nothing to show for a split would vanish from its output
        if not kept:
            skipped = sum(1 for s, _ in dropped if s == split)
            raise DataError(f"{task.file}: no usable records in the {split} split ({getattr(task.data, split)!r}) "
                            f"of {task.data.path}" + (f"; all {skipped} were bad" if skipped else ""))
    return records, dropped


def _split_records(task: TaskFile, splits: tuple[str, ...], skip_bad: bool,
                   dropped: list[tuple[str, RecordError]]) -> Iterator[tuple[str, Any]]:
    data = task.data
    names = {getattr(data, split): split for split in splits}
    if not data.split_column:
        for name, split in names.items():
            for record in read_records(data.path, split=name):
                yield split, record
        return

    def unreadable(error: RecordError) -> None:  # a line that is not JSON: its split cannot be known
        if not skip_bad:
            raise error
        dropped.append(("input", error))

    for record in read_records(data.path, on_error=unreadable):
        value = record.data.get(data.split_column)
        if value is None:
            error = record.error(data.split_column, "missing: the record's split is unknown")
            if not skip_bad:
                raise error
            dropped.append(("input", error))
        elif str(value) in names:  # records of other splits (a validation split) are not this job's
            yield names[str(value)], record
