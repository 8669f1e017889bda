"""Streamed answers: deltas from any backend, and the server-sent events that carry them.

A backend with `stream_chat` / `stream_complete` (`StreamingBackend`) hands out text while it
generates. Any other backend is streamed as one delta per sample holding the whole completion,
sent when its call returns: the client still gets a valid stream, only not an incremental one.

`sse_events` turns deltas into OpenAI's chunks: per choice a first chunk with the role (chat),
content deltas, and a chunk with the finish_reason and an empty delta; then, when the request asked
`stream_options.include_usage`, a chunk with the usage and no choices; then `data: [DONE]`. A failure
after the stream began (an exception, or a sample that finished with "error") becomes one
`data: {"error": {...}}` event and ends the stream without [DONE], so a client never takes a cut-off
answer for a whole one.
"""
from __future__ import annotations

import json
import time
import uuid
from typing import AsyncIterator, Awaitable, Callable, Iterator, Literal, Sequence

from alignkit.generation.backend import Backend, SamplingParams, StreamDelta
from alignkit.serving.responses import error_body

Kind = Literal["chat", "complete"]


class StreamEnd:
    """Put after the last delta of a stream that ended normally."""


END = StreamEnd()


def stream_deltas(backend: Backend, kind: Kind, prompts: Sequence, params: SamplingParams) -> Iterator[StreamDelta]:
    """The backend's own stream when it has one, else its whole completions as one delta each."""
    method = getattr(backend, "stream_chat" if kind == "chat" else "stream_complete", None)
    if method is not None:
        return method(prompts, params)
    return _whole_completions(backend, kind, prompts, params)


def _whole_completions(backend: Backend, kind: Kind, prompts: Sequence, params: SamplingParams) -> Iterator[StreamDelta]:
    call = backend.chat if kind == "chat" else backend.complete
    results = call(prompts, params)
    if len(results) != len(prompts):
        raise RuntimeError(f"backend returned {len(results)} results for {len(prompts)} prompts")
    for i, samples in enumerate(results):
        for j, completion in enumerate(samples):
            text = completion.text if completion.finish_reason != "error" else ""
            yield StreamDelta(i, j, text, completion.finish_reason, completion.prompt_tokens,
                              completion.completion_tokens, completion.error)


def sse(payload: dict | str) -> str:
    data = payload if isinstance(payload, str) else json.dumps(payload, ensure_ascii=False, separators=(",", ":"))
    return f"data: {data}\n\n"


class _Chunks:
    """OpenAI's chunk objects for one streamed response (chat.completion.chunk or text_completion)."""

    def __init__(self, kind: Kind, model: str, include_usage: bool):
        self.kind, self.model, self.include_usage = kind, model, include_usage
        self.id = f"chatcmpl-{uuid.uuid4().hex}" if kind == "chat" else f"cmpl-{uuid.uuid4().hex}"
        self.created = int(time.time())

    def chunk(self, choices: list[dict], usage: dict | None = None) -> dict:
        body = {"id": self.id, "object": "chat.completion.chunk" if self.kind == "chat" else "text_completion",
                "created": self.created, "model": self.model, "choices": choices}
        if self.include_usage:  # as OpenAI does: null on every chunk but the last
            body["usage"] = usage
        return body

    def choice(self, index: int, text: str | None = None, finish_reason: str | None = None,
               role: bool = False) -> dict:
        if self.kind == "complete":
            return {"index": index, "text": text or "", "logprobs": None, "finish_reason": finish_reason}
        delta: dict = {}
        if role:
            delta = {"role": "assistant", "content": ""}
        elif text is not None:
            delta = {"content": text}
        return {"index": index, "delta": delta, "logprobs": None, "finish_reason": finish_reason}


async def sse_events(kind: Kind, model: str, choices: int, n: int, include_usage: bool, first: object,
                     next_item: Callable[[], Awaitable[object]]) -> AsyncIterator[str]:
    """The SSE text of one streamed response.

    `choices`: how many the response has (n x prompts); `first` and then `next_item()` give the
    stream's items: StreamDeltas, then END, or an exception where it failed. A delta of prompt i,
    sample j is choice i * n + j, as in the non-streamed completions response.
    """
    chunks = _Chunks(kind, model, include_usage)
    if kind == "chat":
        for index in range(choices):
            yield sse(chunks.chunk([chunks.choice(index, role=True)]))
    prompt_tokens: dict[int, int] = {}
    completion_tokens = 0
    finished: set[int] = set()
    item = first
    while not isinstance(item, StreamEnd):
        if isinstance(item, BaseException):
            yield sse(error_body(f"generation failed: {type(item).__name__}: {item}", "server_error"))
            return
        delta: StreamDelta = item
        index = delta.prompt * n + delta.sample
        if delta.text:
            yield sse(chunks.chunk([chunks.choice(index, delta.text)]))
        if delta.finish_reason == "error":
            yield sse(error_body(f"the backend failed to answer: {delta.error or 'unknown error'}", "server_error"))
            return
        if delta.finish_reason is not None:
            finished.add(index)
            prompt_tokens[delta.prompt] = max(prompt_tokens.get(delta.prompt, 0), delta.prompt_tokens)
            completion_tokens += delta.completion_tokens
            yield sse(chunks.chunk([chunks.choice(index, None, delta.finish_reason)]))
        item = await next_item()
    if len(finished) < choices:
        missing = sorted(set(range(choices)) - finished)
        yield sse(error_body(f"the backend ended the stream before choice(s) {missing} finished", "server_error"))
        return
    if include_usage:
        prompt_total = sum(prompt_tokens.values())  # the prompt is read once, however many samples
        yield sse(chunks.chunk([], {"prompt_tokens": prompt_total, "completion_tokens": completion_tokens,
                                    "total_tokens": prompt_total + completion_tokens}))
    yield sse("[DONE]")
