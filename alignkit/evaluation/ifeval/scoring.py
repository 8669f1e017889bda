"""IFEval accuracies: prompt level and instruction level, strict and loose, with breakdowns.

A prompt passes when every one of its instructions passes; instruction level counts each
instruction of each prompt separately. A prompt without a response is listed in `missing` and all
its instructions count as failed, so accuracy is always over the whole prompt set; `n_answered`
says how many of those prompts had a response, and `coverage_note` turns that into the line
every command prints (or the error, when no prompt had one).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Mapping, Sequence

from alignkit.data.errors import DataError
from alignkit.evaluation.ifeval.data import IFEvalPrompt
from alignkit.evaluation.ifeval.registry import check_instruction
from alignkit.evaluation.ifeval.text import REFERENCE, check_rules


@dataclass
class PromptOutcome:
    key: int | str
    instruction_ids: list[str]
    strict: list[bool]  # one per instruction
    loose: list[bool]
    missing: bool = False

    @property
    def passed_strict(self) -> bool:
        return all(self.strict)

    @property
    def passed_loose(self) -> bool:
        return all(self.loose)


@dataclass
class Tally:
    """Pass counts for one instruction type or category."""
    total: int = 0
    passed_strict: int = 0
    passed_loose: int = 0

    @property
    def accuracy_strict(self) -> float:
        return self.passed_strict / self.total if self.total else 0.0

    @property
    def accuracy_loose(self) -> float:
        return self.passed_loose / self.total if self.total else 0.0

    def to_dict(self) -> dict[str, float | int]:
        return {**asdict(self), "accuracy_strict": self.accuracy_strict, "accuracy_loose": self.accuracy_loose}


@dataclass
class IFEvalResult:
    prompts: Tally  # prompt-level counts
    instructions: Tally  # instruction-level counts
    per_instruction: dict[str, Tally]  # by instruction id, e.g. "punctuation:no_comma"
    per_category: dict[str, Tally]  # by the id's prefix, e.g. "punctuation"
    outcomes: list[PromptOutcome]
    missing: list[int | str] = field(default_factory=list)  # keys of prompts without a response
    unmatched_responses: list[str] = field(default_factory=list)  # responses to prompts not in the set

    @property
    def n_answered(self) -> int:
        """Prompts that had a response; the accuracies are over all `prompts.total` of them."""
        return self.prompts.total - len(self.missing)

    @property
    def prompt_level_strict(self) -> float:
        return self.prompts.accuracy_strict

    @property
    def prompt_level_loose(self) -> float:
        return self.prompts.accuracy_loose

    @property
    def instruction_level_strict(self) -> float:
        return self.instructions.accuracy_strict

    @property
    def instruction_level_loose(self) -> float:
        return self.instructions.accuracy_loose

    def to_dict(self) -> dict[str, Any]:
        return {
            "prompt_level_strict": self.prompt_level_strict,
            "prompt_level_loose": self.prompt_level_loose,
            "instruction_level_strict": self.instruction_level_strict,
            "instruction_level_loose": self.instruction_level_loose,
            "n_prompts": self.prompts.total,
            "n_answered": self.n_answered,
            "prompts": self.prompts.to_dict(),
            "instructions": self.instructions.to_dict(),
            "per_instruction": {name: tally.to_dict() for name, tally in self.per_instruction.items()},
            "per_category": {name: tally.to_dict() for name, tally in self.per_category.items()},
            "missing": list(self.missing),
            "unmatched_responses": list(self.unmatched_responses),
            "outcomes": [asdict(outcome) for outcome in self.outcomes],
        }


def score_prompt(prompt: IFEvalPrompt, response: str | None, rules: str = REFERENCE) -> PromptOutcome:
    """Strict and loose verdicts for each instruction of one prompt; None means no response.
    `rules`: "reference" (the IFEval reference checker's verdicts) or "alignkit" (see `check_instruction`)."""
    ids = list(prompt.instruction_ids)
    if response is None:
        return PromptOutcome(prompt.key, ids, [False] * len(ids), [False] * len(ids), missing=True)
    if not isinstance(response, str):
        raise TypeError(f"response to prompt {prompt.key!r} must be a string, got {type(response).__name__}")
    strict, loose = [], []
    for instruction_id, kwargs in zip(prompt.instruction_ids, prompt.kwargs):
        strict.append(check_instruction(instruction_id, kwargs, response, prompt.prompt, rules=rules))
        # The response itself is the first loose variant, so a strict pass is always a loose pass.
        loose.append(strict[-1] or check_instruction(instruction_id, kwargs, response, prompt.prompt, loose=True,
                                                     rules=rules))
    return PromptOutcome(prompt.key, ids, strict, loose)


def score_ifeval(prompts: Sequence[IFEvalPrompt], responses: Mapping[str, str], rules: str = REFERENCE) -> IFEvalResult:
    """Score responses (keyed by exact prompt text) against the prompts' instructions, by the
    reference checker's `rules` (default) or alignkit's ("alignkit", see `check_instruction`)."""
    if not prompts:
        raise ValueError("score_ifeval needs at least one prompt")
    check_rules(rules)
    outcomes = [score_prompt(prompt, responses.get(prompt.prompt), rules) for prompt in prompts]
    prompt_tally, instruction_tally = Tally(), Tally()
    per_instruction: dict[str, Tally] = {}
    per_category: dict[str, Tally] = {}
    for outcome in outcomes:
        _add(prompt_tally, outcome.passed_strict, outcome.passed_loose)
        for instruction_id, strict, loose in zip(outcome.instruction_ids, outcome.strict, outcome.loose):
            _add(instruction_tally, strict, loose)
            _add(per_instruction.setdefault(instruction_id, Tally()), strict, loose)
            _add(per_category.setdefault(instruction_id.split(":")[0], Tally()), strict, loose)
    known_prompts = {prompt.prompt for prompt in prompts}
    return IFEvalResult(
        prompts=prompt_tally,
        instructions=instruction_tally,
        per_instruction=dict(sorted(per_instruction.items())),
        per_category=dict(sorted(per_category.items())),
        outcomes=outcomes,
        missing=[outcome.key for outcome in outcomes if outcome.missing],
        unmatched_responses=[text for text in responses if text not in known_prompts],
    )


def coverage_note(result: IFEvalResult, responses_path: str) -> str | None:
    """A console line when responses and prompts do not match one to one, else None.

    Raises DataError when no prompt has a response: accuracies of nothing but failures would read
    as a model that follows no instruction, when the responses are for other prompts.
    """
    if result.n_answered == 0:
        raise DataError(f"{responses_path}: no response matches any of the {result.prompts.total} prompts "
                        f"({len(result.unmatched_responses)} responses; a response is matched by the exact "
                        "prompt text)")
    parts = []
    if result.missing:
        parts.append(f"scored {result.n_answered} of {result.prompts.total} prompts; {len(result.missing)} "
                     f"prompts had no response in {responses_path} and count as failed")
    if result.unmatched_responses:
        parts.append(f"{len(result.unmatched_responses)} responses in {responses_path} match no prompt "
                     "and were not scored")
    return "; ".join(parts) or None


def _add(tally: Tally, strict: bool, loose: bool) -> None:
    tally.total += 1
    tally.passed_strict += strict
    tally.passed_loose += loose
