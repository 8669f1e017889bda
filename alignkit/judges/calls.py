"""Asking a judge: batched calls, a parser per reply, re-asks after parse failures, and a log of every call.

Shared by every kind of judgment (pairwise verdicts, scores), so each keeps the same retry and
failure rules: a backend error is a failure, never an answer.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Callable, Generic, Sequence, TypeVar

from alignkit.generation.backend import Backend, Completion, Message, SamplingParams


@dataclass
class CallLog:
    """One logical judge call: its prompt, the raw reply of every attempt, and the final failure."""

    prompt: list[Message]
    outputs: list[str] = field(default_factory=list)
    failure: str | None = None


P = TypeVar("P")


@dataclass
class Asked(Generic[P]):
    parsed: P
    log: CallLog


def completion_failure(completion: Completion) -> str | None:
    """Why a completion cannot be used at all (backend error), or None."""
    if completion.finish_reason == "error":
        return f"backend error: {completion.error or 'no detail given'}"
    return None


def ask_parsed(backend: Backend, prompts: Sequence[list[Message]], params: SamplingParams,
               parse: Callable[[Completion], P] | Sequence[Callable[[Completion], P]], max_parse_retries: int = 0,
               batch_size: int = 64) -> list[Asked[P]]:
    """Send each prompt, parse each reply, and re-ask failed ones with a new seed up to `max_parse_retries` times.

    `parse` (one for all replies, or a sequence with one per prompt) must return an object with a
    `failure` attribute (None on success). Retry k uses seed
    `params.seed + k` (or k when unseeded); with greedy decoding a deterministic backend will often
    repeat itself, so retries help most with temperature > 0.
    """
    logs = [CallLog(prompt=list(prompt)) for prompt in prompts]
    parsers = list(parse) if isinstance(parse, Sequence) else [parse] * len(prompts)
    parsed: list = [None] * len(prompts)
    pending = list(range(len(prompts)))
    for attempt in range(max_parse_retries + 1):
        if not pending:
            break
        attempt_params = params if attempt == 0 else replace(params, seed=(params.seed or 0) + attempt)
        failed = []
        for start in range(0, len(pending), batch_size):
            chunk = pending[start:start + batch_size]
            replies = backend.chat([logs[i].prompt for i in chunk], attempt_params)
            if len(replies) != len(chunk) or any(not reply for reply in replies):
                raise RuntimeError(f"backend {backend.model_id!r} returned {len(replies)} replies "
                                   f"(some may be empty) for {len(chunk)} conversations")
            for i, reply in zip(chunk, replies):
                logs[i].outputs.append(reply[0].text)
                parsed[i] = parsers[i](reply[0])
                logs[i].failure = parsed[i].failure
                if parsed[i].failure is not None:
                    failed.append(i)
        pending = failed
    return [Asked(result, log) for result, log in zip(parsed, logs)]
