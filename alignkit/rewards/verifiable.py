"""Rewards that check a fact about the completion: IFEval instructions, a format, a reference answer,
a regular expression, or a user's own Python function.

Each reads what it needs from the sample's metadata (the prompt record's extra fields); a sample
whose metadata lacks it, or holds it malformed, is a failure with the reward's `failure_reward`,
since a missing constraint is neither followed nor broken.
"""
from __future__ import annotations

import importlib
import math
import numbers
import re
from typing import Any, Callable, Sequence

from alignkit.rewards.formats import CLOSING_PHRASE, FORMATS, follows_format
from alignkit.rewards.interface import RewardResult, Sample, from_outcomes

Outcome = tuple[float | None, str | None]


class _PerSample:
    """A reward computed one sample at a time by `outcome(sample) -> (score, failure reason)`."""

    name: str
    failure_reward: float

    def outcome(self, sample: Sample) -> Outcome:
        raise NotImplementedError

    def score(self, samples: Sequence[Sample]) -> RewardResult:
        return from_outcomes([self.outcome(sample) for sample in samples], self.failure_reward)


class IFEvalReward(_PerSample):
    """IFEval's checkers on the instructions in metadata `instruction_id_list` / `kwargs`: the fraction
    followed (`mode="fraction"`) or 1 only when all are (`mode="all"`); `loose` tries IFEval's relaxed
    variants of the response too."""

    def __init__(self, name: str = "ifeval", *, mode: str = "fraction", loose: bool = False,
                 failure_reward: float = 0.0):
        if mode not in ("fraction", "all"):
            raise ValueError(f"IFEvalReward mode must be fraction or all, got {mode!r}")
        self.name, self.mode, self.loose, self.failure_reward = name, mode, loose, failure_reward

    def outcome(self, sample: Sample) -> Outcome:
        from alignkit.evaluation.ifeval.registry import InstructionError, check_instruction

        ids, kwargs = sample.metadata.get("instruction_id_list"), sample.metadata.get("kwargs")
        if not isinstance(ids, list) or not ids:
            return None, "metadata has no instruction_id_list"
        if kwargs is None:
            kwargs = [None] * len(ids)
        if not isinstance(kwargs, list) or len(kwargs) != len(ids):
            return None, "metadata kwargs must be a list with one entry per instruction id"
        try:
            passed = [check_instruction(i, k, sample.completion, sample.last_user_text(), loose=self.loose)
                      for i, k in zip(ids, kwargs)]
        except InstructionError as error:
            return None, f"bad instruction in metadata: {error}"
        if self.mode == "all":
            return float(all(passed)), None
        return sum(passed) / len(passed), None


class FormatReward(_PerSample):
    """1 when the completion follows a format (see `formats.follows_format`), else 0. The format is
    `fmt`, or each sample's metadata `format` when `fmt` is empty (the demo's records carry one)."""

    def __init__(self, name: str = "format", *, fmt: str = "", json_key: str = "answer",
                 ending: str = CLOSING_PHRASE, failure_reward: float = 0.0):
        if fmt and fmt not in FORMATS:
            raise ValueError(f"unknown format {fmt!r}; use one of {', '.join(FORMATS)}")
        self.name, self.fmt, self.json_key, self.ending = name, fmt, json_key, ending
        self.failure_reward = failure_reward

    def outcome(self, sample: Sample) -> Outcome:
        fmt = self.fmt or sample.metadata.get("format")
        if fmt not in FORMATS:
            return None, f"metadata format {fmt!r} is not one of {', '.join(FORMATS)}"
        return float(follows_format(fmt, sample.completion, json_key=self.json_key, ending=self.ending)), None


def normalize_answer(text: str) -> str:
    """Whitespace runs collapsed to one space, ends trimmed, case folded."""
    return " ".join(text.split()).casefold()


class ExactMatchReward(_PerSample):
    """1 when the completion equals the metadata's reference answer (or any of a list of them), else 0.
    With `normalize`, whitespace and case are ignored; otherwise only the ends are trimmed."""

    def __init__(self, name: str = "exact", *, reference_key: str = "answer", normalize: bool = True,
                 failure_reward: float = 0.0):
        self.name, self.reference_key, self.normalize = name, reference_key, normalize
        self.failure_reward = failure_reward

    def outcome(self, sample: Sample) -> Outcome:
        reference = sample.metadata.get(self.reference_key)
        references = reference if isinstance(reference, list) else [reference]
        if not references or not all(isinstance(r, str) for r in references):
            return None, f"metadata {self.reference_key!r} is not a string or a list of strings"
        clean = normalize_answer if self.normalize else str.strip
        return float(clean(sample.completion) in {clean(r) for r in references}), None


REGEX_MODES = ("search", "match", "fullmatch")


class RegexReward(_PerSample):
    """1 when `pattern` is found in the completion (`mode="search"`), matches at its start ("match") or
    matches all of it ("fullmatch"), else 0. Flags go inline, e.g. `(?i)`."""

    def __init__(self, name: str = "regex", *, pattern: str, mode: str = "search", failure_reward: float = 0.0):
        if mode not in REGEX_MODES:
            raise ValueError(f"RegexReward mode must be one of {', '.join(REGEX_MODES)}, got {mode!r}")
        self.name, self.pattern, self.mode = name, re.compile(pattern), mode
        self.failure_reward = failure_reward

    def outcome(self, sample: Sample) -> Outcome:
        return float(getattr(self.pattern, self.mode)(sample.completion) is not None), None


def import_function(path: str) -> Callable[..., Any]:
    """The callable named "package.module:function"; ValueError with a one-line reason otherwise."""
    module_name, colon, attr = path.partition(":") if isinstance(path, str) else ("", "", "")
    if not colon or not module_name or not attr:
        raise ValueError(f"{path!r} is not of the form 'package.module:function'")
    try:
        module = importlib.import_module(module_name)
    except Exception as error:  # a broken module raises anything; the user needs the one-line reason
        raise ValueError(f"cannot import module {module_name!r} for {path!r}: "
                         f"{type(error).__name__}: {' '.join(str(error).split())}") from None
    found = module
    for part in attr.split("."):
        found = getattr(found, part, None)
        if found is None:
            raise ValueError(f"module {module_name!r} has no {attr!r} (from {path!r})")
    if not callable(found):
        raise ValueError(f"{path!r} is not callable")
    return found


class FunctionReward(_PerSample):
    """A user's function `fn(prompt, completion, metadata) -> float` named "package.module:function".

    Returning None (or a non-finite number) means "could not score": a failure with `failure_reward`.
    An exception inside the function is a bug in it and is raised, not hidden as a failure.
    """

    def __init__(self, name: str = "python", *, function: str | Callable[..., Any], failure_reward: float = 0.0):
        self.fn = import_function(function) if isinstance(function, str) else function
        self.label = function if isinstance(function, str) else getattr(function, "__name__", repr(function))
        self.name, self.failure_reward = name, failure_reward

    def outcome(self, sample: Sample) -> Outcome:
        value = self.fn(sample.prompt, sample.completion, dict(sample.metadata))
        if value is None:
            return None, f"{self.label} returned None"
        if isinstance(value, bool):
            value = float(value)
        if not isinstance(value, numbers.Real):
            raise TypeError(f"reward function {self.label} returned {type(value).__name__}, expected a number")
        if not math.isfinite(float(value)):
            return None, f"{self.label} returned {value}"
        return float(value), None
