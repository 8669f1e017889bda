"""`alignkit eval ifeval` as one call: read the prompts, answer them (or read answers), score, write."""
from __future__ import annotations

import os
from typing import Callable

from alignkit.evaluation.ifeval.data import load_ifeval_prompts, read_responses
from alignkit.evaluation.ifeval.scoring import IFEvalResult, coverage_note, score_ifeval
from alignkit.evaluation.ifeval.text import REFERENCE, check_rules
from alignkit.generation.backend import Backend, SamplingParams


def run_ifeval(prompts_path: str | os.PathLike, out: str | os.PathLike | None = None, *,
               responses: str | os.PathLike | None = None, load_backend: Callable[[], Backend] | None = None,
               params: SamplingParams = SamplingParams(), limit: int = 0,
               rules: str = REFERENCE) -> tuple[IFEvalResult, str | None]:
    """Score the first `limit` (0: all) IFEval prompts of `prompts_path`; returns the result and the
    coverage note (`coverage_note`: prompts without a response, responses matching no prompt; None
    when they match one to one, or when the responses were generated here).

    The answers come from the `responses` file, or else from the backend `load_backend()` returns,
    called only once the prompts are read, so a bad prompts file costs no model load. Every number
    is written to `out` as JSON when given; nothing is written when no response matches a prompt
    (the DataError `coverage_note` raises). `rules`: "reference" (the IFEval reference checker's
    verdicts) or "alignkit" (its more forgiving readings, see `check_instruction`).
    """
    check_rules(rules)  # before any model loads
    prompts = load_ifeval_prompts(prompts_path)
    if limit:
        prompts = prompts[:limit]
    if responses:
        answers = read_responses(responses)
    else:
        if load_backend is None:
            raise ValueError("run_ifeval needs responses (a file) or load_backend (a model to answer with)")
        from alignkit.generation.local import generate_texts

        outs = generate_texts(load_backend(), [[{"role": "user", "content": p.prompt}] for p in prompts], params)
        answers = {p.prompt: o[0].text for p, o in zip(prompts, outs)}
    result = score_ifeval(prompts, answers, rules)
    note = coverage_note(result, str(responses)) if responses else None  # raises when nothing matched
    if out:
        from alignkit.atomic_write import write_json_atomic

        write_json_atomic(out, result.to_dict())
    return result, note
