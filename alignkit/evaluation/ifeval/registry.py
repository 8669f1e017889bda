"""The 25 IFEval instruction types, their parameters, and `check_instruction`.

Parameters arrive as IFEval's `kwargs` dicts. A null value means "not given" (the Hugging Face
copy of IFEval lists every parameter of every type, mostly as null), so nulls are dropped before
validation; a non-null parameter the type does not take is an error, because it is almost always
a misspelt name whose constraint would otherwise be silently ignored.
"""
from __future__ import annotations

import difflib
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

from alignkit.evaluation.ifeval import checkers
from alignkit.evaluation.ifeval.language import supported_languages
from alignkit.evaluation.ifeval.text import REFERENCE, check_rules
from alignkit.evaluation.ifeval.variants import response_variants


class InstructionError(ValueError):
    """An unknown instruction id or bad parameters; `field` names the offending parameter, if any."""

    def __init__(self, message: str, field: str | None = None):
        super().__init__(message)
        self.field = field


# --- parameter validators: each returns the cleaned value or raises ValueError -------------------

def _count(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != int(value):
        raise ValueError(f"expected a whole number, got {value!r}")
    if value < 0:
        raise ValueError(f"expected a number >= 0, got {value!r}")
    return int(value)


def _positive(value: Any) -> int:
    number = _count(value)
    if number < 1:
        raise ValueError(f"expected a number >= 1, got {value!r}")
    return number


def _text(value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"expected a non-empty string, got {value!r}")
    return value.strip()


def _words(value: Any) -> list[str]:
    if not isinstance(value, list) or not value:
        raise ValueError(f"expected a non-empty list of strings, got {value!r}")
    return [_text(item) for item in value]


def _relation(value: Any) -> str:
    relation = value.strip().lower() if isinstance(value, str) else value
    if relation not in checkers.RELATIONS:
        raise ValueError(f"expected one of {list(checkers.RELATIONS)}, got {value!r}")
    return relation


def _letter(value: Any) -> str:
    if not isinstance(value, str) or len(value) != 1:
        raise ValueError(f"expected a single character, got {value!r}")
    return value


def _language(value: Any) -> str:
    code = _text(value).strip().lower()
    if code not in supported_languages():
        raise ValueError(f"unsupported language code {value!r}; known: {sorted(supported_languages())}")
    return code


_REQUIRED = object()


@dataclass(frozen=True)
class Param:
    validate: Callable[[Any], Any]
    default: Any = _REQUIRED


@dataclass(frozen=True)
class InstructionType:
    instruction_id: str
    check: Callable[..., bool]
    params: dict[str, Param] = field(default_factory=dict)
    needs_prompt: bool = False  # the default of a parameter is derived from the prompt text


def _spec(instruction_id: str, check: Callable[..., bool], needs_prompt: bool = False, **params: Param):
    return InstructionType(instruction_id, check, params, needs_prompt)


INSTRUCTION_TYPES: dict[str, InstructionType] = {spec.instruction_id: spec for spec in [
    _spec("keywords:existence", checkers.keywords_existence, keywords=Param(_words)),
    _spec("keywords:frequency", checkers.keyword_frequency,
          keyword=Param(_text), frequency=Param(_count), relation=Param(_relation)),
    _spec("keywords:forbidden_words", checkers.forbidden_words, forbidden_words=Param(_words)),
    _spec("keywords:letter_frequency", checkers.letter_frequency,
          letter=Param(_letter), let_frequency=Param(_count), let_relation=Param(_relation)),
    _spec("language:response_language", checkers.response_language, language=Param(_language)),
    _spec("length_constraints:number_sentences", checkers.number_sentences,
          num_sentences=Param(_count), relation=Param(_relation)),
    _spec("length_constraints:number_paragraphs", checkers.number_paragraphs, num_paragraphs=Param(_positive)),
    _spec("length_constraints:number_words", checkers.number_words,
          num_words=Param(_count), relation=Param(_relation)),
    _spec("length_constraints:nth_paragraph_first_word", checkers.nth_paragraph_first_word,
          num_paragraphs=Param(_positive), nth_paragraph=Param(_positive), first_word=Param(_text)),
    _spec("detectable_content:number_placeholders", checkers.number_placeholders,
          num_placeholders=Param(_count)),
    _spec("detectable_content:postscript", checkers.postscript, postscript_marker=Param(_text, "P.S.")),
    _spec("detectable_format:number_bullet_lists", checkers.number_bullet_lists, num_bullets=Param(_count)),
    _spec("detectable_format:constrained_response", checkers.constrained_response),
    _spec("detectable_format:number_highlighted_sections", checkers.number_highlighted_sections,
          num_highlights=Param(_count)),
    _spec("detectable_format:multiple_sections", checkers.multiple_sections,
          section_spliter=Param(_text, "Section"), num_sections=Param(_count)),
    _spec("detectable_format:json_format", checkers.json_format),
    _spec("detectable_format:title", checkers.title),
    _spec("combination:two_responses", checkers.two_responses),
    _spec("combination:repeat_prompt", checkers.repeat_prompt, needs_prompt=True,
          prompt_to_repeat=Param(_text)),
    _spec("startend:end_checker", checkers.end_checker, end_phrase=Param(_text)),
    _spec("startend:quotation", checkers.quotation),
    _spec("change_case:capital_word_frequency", checkers.capital_word_frequency,
          capital_frequency=Param(_count), capital_relation=Param(_relation)),
    _spec("change_case:english_capital", checkers.english_capital),
    _spec("change_case:english_lowercase", checkers.english_lowercase),
    _spec("punctuation:no_comma", checkers.no_comma),
]}

# IFEval's repeat-the-request prompts end with this instruction, which is not part of the request.
_REPEAT_INSTRUCTION = re.compile(r"\s*First repeat the request word for word without change.*\Z",
                                 flags=re.IGNORECASE | re.DOTALL)


def instruction_type(instruction_id: Any) -> InstructionType:
    if not isinstance(instruction_id, str) or instruction_id not in INSTRUCTION_TYPES:
        close = difflib.get_close_matches(str(instruction_id), INSTRUCTION_TYPES, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise InstructionError(f"unknown instruction id {instruction_id!r}{hint}")
    return INSTRUCTION_TYPES[instruction_id]


def validate_kwargs(instruction_id: str, kwargs: Mapping[str, Any] | None, prompt: str = "") -> dict[str, Any]:
    """The cleaned parameters `check_instruction` passes to the checker; raises InstructionError."""
    spec = instruction_type(instruction_id)
    if kwargs is not None and not isinstance(kwargs, Mapping):
        raise InstructionError(f"{instruction_id}: kwargs must be an object, got {kwargs!r}")
    given = {name: value for name, value in (kwargs or {}).items() if value is not None}
    for name in given:
        if name not in spec.params:
            expected = ", ".join(spec.params) or "no parameters"
            raise InstructionError(f"{instruction_id} takes {expected}; got unexpected {name!r}", name)
    if spec.needs_prompt and "prompt_to_repeat" not in given and prompt.strip():
        given["prompt_to_repeat"] = _REPEAT_INSTRUCTION.sub("", prompt)
    cleaned: dict[str, Any] = {}
    for name, param in spec.params.items():
        if name not in given:
            if param.default is _REQUIRED:
                raise InstructionError(f"{instruction_id} requires parameter {name!r}", name)
            cleaned[name] = param.default
            continue
        try:
            cleaned[name] = param.validate(given[name])
        except ValueError as error:
            raise InstructionError(f"{instruction_id}: {name}: {error}", name) from None
    if "nth_paragraph" in cleaned and cleaned["nth_paragraph"] > cleaned["num_paragraphs"]:
        raise InstructionError(
            f"{instruction_id}: nth_paragraph {cleaned['nth_paragraph']} exceeds "
            f"num_paragraphs {cleaned['num_paragraphs']}", "nth_paragraph")
    return cleaned


def check_instruction(
    instruction_id: str, kwargs: Mapping[str, Any] | None, response: str, prompt: str = "", *, loose: bool = False,
    rules: str = REFERENCE,
) -> bool:
    """Whether `response` follows one instruction; `loose` also tries IFEval's relaxed variants.

    `rules="reference"` decides as the IFEval reference checker does, so scores are comparable
    with published ones; `rules="alignkit"` uses alignkit's more forgiving readings where it has
    one (`checkers.LENIENT`: sentences, paragraphs, bullets, highlights, quotes, fences, ...).
    An empty or whitespace-only response follows no instruction, even "no commas".
    """
    cleaned = validate_kwargs(instruction_id, kwargs, prompt)
    check = INSTRUCTION_TYPES[instruction_id].check
    if check_rules(rules) != REFERENCE:
        check = checkers.LENIENT.get(instruction_id, check)
    candidates = response_variants(response) if loose else [response]
    return any(candidate.strip() and check(candidate, **cleaned) for candidate in candidates)
