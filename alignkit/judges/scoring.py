"""Numeric scores from a judge: each reply must hold one `Rating: N` or `Score: N` line on a fixed scale.

The prompts that ask for these lines are `single_grade_prompt` (Rating, 1-10) and `rubric_prompt`
(Score, 1-5) in `prompts.py`. A reply that cannot be read, or a backend error, is a failure with its
reason, never a score.
"""
from __future__ import annotations

from typing import Callable, Sequence

from alignkit.generation.backend import Backend, Completion, Message, SamplingParams
from alignkit.judges.calls import Asked, ask_parsed, completion_failure
from alignkit.judges.verdicts import ParsedScore, parse_score

SINGLE_SCALE = (1, 10)  # "Rating: N", MT-Bench style single-answer grading
RUBRIC_SCALE = (1, 5)  # "Score: N", grading against a rubric


def _score_parser(label: str, scale: tuple[int, int], quoted: Sequence[str]) -> Callable[[Completion], ParsedScore]:
    def parse(completion: Completion) -> ParsedScore:
        failure = completion_failure(completion)
        if failure:
            return ParsedScore(None, failure)
        result = parse_score(completion.text, label, *scale, quoted=quoted)
        if result.failure and completion.finish_reason == "length":
            return ParsedScore(None, result.failure + " (reply cut off at max_tokens)")
        return result
    return parse


def ask_scores(backend: Backend, prompts: Sequence[list[Message]], shown: Sequence[Sequence[str]], label: str,
               scale: tuple[int, int], params: SamplingParams, max_parse_retries: int = 0,
               batch_size: int = 64) -> list[Asked[ParsedScore]]:
    """Send each prompt and read a `label: N` score within `scale` from its reply, re-asking failures.

    `shown[i]` holds the texts prompt i shows the judge: a score line copied from them is no verdict.
    """
    if len(shown) != len(prompts):
        raise ValueError(f"ask_scores: {len(prompts)} prompts but {len(shown)} lists of shown texts")
    return ask_parsed(backend, prompts, params, [_score_parser(label, scale, list(q)) for q in shown],
                      max_parse_retries, batch_size)
