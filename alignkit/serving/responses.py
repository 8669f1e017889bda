"""OpenAI response bodies built from our `Completion`s.

Backends put the generated token first in each `top_logprobs` dict, followed by the most
likely tokens; OpenAI reports them separately, so the split happens here.
"""
from __future__ import annotations

import time
import uuid

from alignkit.generation.backend import Completion


def _top(step: dict[str, float], count: int) -> list[tuple[str, float]]:
    return sorted(step.items(), key=lambda item: item[1], reverse=True)[:count]


def _chat_logprobs(completion: Completion, count: int) -> dict:
    content = []
    for step in completion.top_logprobs or []:
        token, logprob = next(iter(step.items()))
        content.append({"token": token, "logprob": logprob, "bytes": list(token.encode()),
                        "top_logprobs": [{"token": t, "logprob": lp, "bytes": list(t.encode())}
                                         for t, lp in _top(step, count)]})
    return {"content": content, "refusal": None}


def _completion_logprobs(completion: Completion, count: int) -> dict:
    tokens, token_logprobs, top_logprobs, text_offset = [], [], [], []
    offset = 0
    for step in completion.top_logprobs or []:
        token, logprob = next(iter(step.items()))
        tokens.append(token)
        token_logprobs.append(logprob)
        top_logprobs.append(dict(_top(step, count)))
        text_offset.append(offset)
        offset += len(token)
    return {"tokens": tokens, "token_logprobs": token_logprobs, "top_logprobs": top_logprobs,
            "text_offset": text_offset}


def _usage(per_prompt: list[list[Completion]]) -> dict:
    # The prompt is read once per prompt, however many samples (n) were drawn from it.
    prompt_tokens = sum(samples[0].prompt_tokens for samples in per_prompt if samples)
    completion_tokens = sum(c.completion_tokens for samples in per_prompt for c in samples)
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def chat_response(model: str, samples: list[Completion], top_logprobs: int | None) -> dict:
    """`top_logprobs`: None when logprobs were not requested, else how many alternatives to list."""
    choices = [{"index": i, "message": {"role": "assistant", "content": c.text},
                "finish_reason": c.finish_reason,
                "logprobs": _chat_logprobs(c, top_logprobs) if top_logprobs is not None else None}
               for i, c in enumerate(samples)]
    return {"id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion", "created": int(time.time()),
            "model": model, "choices": choices, "usage": _usage([samples])}


def completion_response(model: str, per_prompt: list[list[Completion]], logprobs: int | None) -> dict:
    """Choices are numbered prompt by prompt: prompt i, sample j is choice i * n + j."""
    flat = [c for samples in per_prompt for c in samples]
    choices = [{"index": i, "text": c.text, "finish_reason": c.finish_reason,
                "logprobs": _completion_logprobs(c, logprobs) if logprobs is not None else None}
               for i, c in enumerate(flat)]
    return {"id": f"cmpl-{uuid.uuid4().hex}", "object": "text_completion", "created": int(time.time()),
            "model": model, "choices": choices, "usage": _usage(per_prompt)}


def error_body(message: str, error_type: str, code: str | None = None, param: str | None = None) -> dict:
    return {"error": {"message": message, "type": error_type, "param": param, "code": code}}
