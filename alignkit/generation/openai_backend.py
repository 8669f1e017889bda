"""Generation through any OpenAI-compatible HTTP endpoint (OpenAI, vLLM, our own server).

Requests run in a bounded thread pool. Retrying is ours, not the client's (its own
max_retries is 0), so that it is visible in `usage` and testable: 429, 5xx, 408/409,
connection errors and timeouts are retried with exponential backoff and jitter. A prompt
that still fails comes back as `Completion(finish_reason="error", error=...)` rather than an
exception, so one bad request never sinks a batch, and never as an empty "answer".

With `params.return_tokens` (best effort; a server that sends less leaves the fields None):
`token_ids` are filled when the server sends the sampled ids, as a `token_ids` list on each choice
(vLLM with `extra_body={"return_token_ids": True}`) or as tokens spelled `token_id:<id>` (vLLM with
`return_tokens_as_token_ids`); OpenAI itself sends neither. `logprobs` are the server's reported
log-probs of the sampled tokens, filled only where those are what `Completion.logprobs` means
(`samples_from_model_distribution`: greedy, or temperature 1 without top-k/top-p).

`stream_chat` / `stream_complete` ask the server with `stream=True` (and
`stream_options={"include_usage": True}` for the token counts) and pass each text delta on as it
arrives, one prompt after another. Retries happen only before the first chunk: once text has been
handed out, a failure ends the unfinished samples with finish_reason "error", never a silently
shorter answer. The finishing deltas come after the stream's last chunk, which carries the usage.
"""
from __future__ import annotations

import os
import random
import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Sequence

import httpx
import openai

from alignkit.generation.backend import (Completion, Message, SamplingParams, StreamDelta, check_conversation,
                                         check_sampling_params, samples_from_model_distribution)

_RETRYABLE_STATUS = {408, 409, 429}
_TOKEN_ID = re.compile(r"token_id:(\d+)")


@dataclass
class Usage:
    requests: int = 0  # HTTP requests sent, retries included
    prompt_tokens: int = 0
    completion_tokens: int = 0
    retries: int = 0
    failures: int = 0  # prompts whose completions came back as errors


def _is_retryable(error: openai.OpenAIError) -> bool:
    if isinstance(error, openai.APIConnectionError):  # includes APITimeoutError
        return True
    if isinstance(error, openai.APIStatusError):
        return error.status_code in _RETRYABLE_STATUS or error.status_code >= 500
    return False


def _retry_after_seconds(error: openai.OpenAIError) -> float | None:
    """The server's own wait hint (Retry-After header), if it sent one in seconds."""
    response = getattr(error, "response", None)
    if response is None:
        return None
    try:
        return float(response.headers.get("retry-after", ""))
    except ValueError:
        return None


def _error_completions(n: int, message: str) -> list[Completion]:
    return [Completion(text="", finish_reason="error", error=message) for _ in range(n)]


def _finish(reason: str | None) -> tuple[str, str | None]:
    """Our finish_reason and error for the server's; anything but stop/length is a failure to answer."""
    if reason in ("stop", "length"):
        return reason, None
    return "error", f"the server ended the answer with finish_reason={reason!r}"


def _wants_sampled_logprobs(params: SamplingParams) -> bool:
    """Whether to ask the server for log-probs only to fill `Completion.logprobs`."""
    return params.logprobs is None and params.return_tokens and samples_from_model_distribution(params)


def _token_ids(choice: Any, tokens: list[str] | None) -> list[int] | None:
    """The sampled ids, where the server sent them (see the module docstring), else None."""
    ids = getattr(choice, "token_ids", None)
    if isinstance(ids, list) and all(isinstance(i, int) for i in ids):
        return ids
    matches = [_TOKEN_ID.fullmatch(token) for token in tokens or []]
    if matches and all(matches):
        return [int(match.group(1)) for match in matches]
    return None


def _split(total: int, parts: int, index: int) -> int:
    # The API reports completion tokens per request only; with n > 1 we share them out evenly.
    return total // parts + (1 if index < total % parts else 0)


class OpenAIBackend:
    """`Backend` over the official `openai` client."""

    def __init__(self, base_url: str | None = None, api_key: str | None = None, *, model: str,
                 max_concurrency: int = 8, timeout: float = 60.0, max_retries: int = 5,
                 backoff_base: float = 0.5, backoff_max: float = 30.0,
                 max_tokens_field: str = "max_tokens", extra_body: dict[str, Any] | None = None):
        """`max_tokens_field`: "max_completion_tokens" for OpenAI reasoning models.
        `extra_body`: extra JSON fields for every request (server-specific options)."""
        if max_concurrency < 1 or max_retries < 0:
            raise ValueError(f"need max_concurrency >= 1 and max_retries >= 0, got {max_concurrency}, {max_retries}")
        base_url = base_url or os.environ.get("OPENAI_BASE_URL")
        api_key = api_key or os.environ.get("OPENAI_API_KEY")
        if api_key is None:
            if base_url is None:
                raise ValueError("no API key: pass api_key= or set OPENAI_API_KEY")
            api_key = "EMPTY"  # local OpenAI-compatible servers accept any key
        self.model_id = model
        self.base_url = base_url
        self.max_concurrency = max_concurrency
        self.timeout = timeout
        self.max_retries = max_retries
        self.backoff_base = backoff_base
        self.backoff_max = backoff_max
        self.max_tokens_field = max_tokens_field
        self.extra_body = dict(extra_body or {})
        self.usage = Usage()
        self._client = openai.OpenAI(base_url=base_url, api_key=api_key, timeout=timeout, max_retries=0)
        self._usage_lock = threading.Lock()
        # Shared by all callers, so concurrent chat() calls together stay within max_concurrency.
        self._slots = threading.BoundedSemaphore(max_concurrency)

    # ----- Backend interface -----

    def chat(self, conversations: Sequence[list[Message]], params: SamplingParams) -> list[list[Completion]]:
        check_sampling_params(params)
        for index, conversation in enumerate(conversations):
            check_conversation(conversation, index)
        request = self._common_fields(params)
        if params.logprobs is not None:
            request.update(logprobs=True, top_logprobs=params.logprobs)
        elif _wants_sampled_logprobs(params):
            request["logprobs"] = True
        return self._run_all(
            [lambda c=c: self._request(self._client.chat.completions.create, {**request, "messages": c},
                                       params, self._parse_chat)
             for c in conversations])

    def complete(self, prompts: Sequence[str], params: SamplingParams) -> list[list[Completion]]:
        check_sampling_params(params)
        for index, prompt in enumerate(prompts):
            if not isinstance(prompt, str):
                raise ValueError(f"prompt {index}: expected a string, got {type(prompt).__name__}")
        request = self._common_fields(params)
        if params.logprobs is not None:
            request["logprobs"] = params.logprobs
        elif _wants_sampled_logprobs(params):
            request["logprobs"] = 0  # the sampled tokens' log-probs, no alternatives
        return self._run_all(
            [lambda p=p: self._request(self._client.completions.create, {**request, "prompt": p},
                                       params, self._parse_completion)
             for p in prompts])

    def stream_chat(self, conversations: Sequence[list[Message]], params: SamplingParams) -> Iterator[StreamDelta]:
        """`chat` with the server's streaming (see the module docstring); input is checked before this returns."""
        self._check_streamable(params)
        for index, conversation in enumerate(conversations):
            check_conversation(conversation, index)
        request = self._common_fields(params)
        return self._stream_all(self._client.chat.completions.create,
                                [{**request, "messages": c} for c in conversations], params, chat=True)

    def stream_complete(self, prompts: Sequence[str], params: SamplingParams) -> Iterator[StreamDelta]:
        """`complete` with the server's streaming; input is checked before this returns."""
        self._check_streamable(params)
        for index, prompt in enumerate(prompts):
            if not isinstance(prompt, str):
                raise ValueError(f"prompt {index}: expected a string, got {type(prompt).__name__}")
        request = self._common_fields(params)
        return self._stream_all(self._client.completions.create, [{**request, "prompt": p} for p in prompts],
                                params, chat=False)

    # ----- requests -----

    def _common_fields(self, params: SamplingParams) -> dict[str, Any]:
        request: dict[str, Any] = {"model": self.model_id, "n": params.n, "temperature": params.temperature,
                                   "top_p": params.top_p, self.max_tokens_field: params.max_tokens}
        if params.seed is not None:
            request["seed"] = params.seed
        if params.stop:
            request["stop"] = list(params.stop)
        extra = dict(self.extra_body)
        if params.top_k:  # not an OpenAI field; vLLM and others read it from the body
            extra["top_k"] = params.top_k
        if extra:
            request["extra_body"] = extra
        return request

    def _run_all(self, calls: list[Callable[[], list[Completion]]]) -> list[list[Completion]]:
        if not calls:
            return []
        with ThreadPoolExecutor(max_workers=min(self.max_concurrency, len(calls))) as pool:
            return list(pool.map(lambda call: call(), calls))

    def _request(self, create: Callable[..., Any], request: dict[str, Any], params: SamplingParams,
                 parse: Callable[[Any, SamplingParams], list[Completion]]) -> list[Completion]:
        def call():
            with self._slots:
                return create(**request)

        response, failure = self._with_retries(call)
        if failure is not None:
            self._count(failures=1)
            return _error_completions(params.n, failure)
        if response.usage is not None:
            self._count(prompt_tokens=response.usage.prompt_tokens,
                        completion_tokens=response.usage.completion_tokens)
        completions = parse(response, params)
        if any(c.finish_reason == "error" for c in completions):
            self._count(failures=1)
        return completions

    def _with_retries(self, call: Callable[[], Any]) -> tuple[Any, str | None]:
        """(call's result, None), or (None, why) once it failed for good: a retryable error (429, 5xx, a
        timeout) waits with backoff and tries again, up to max_retries times."""
        for attempt in range(self.max_retries + 1):
            self._count(requests=1)
            try:
                return call(), None
            except openai.OpenAIError as error:
                retryable = _is_retryable(error)
                if retryable and attempt < self.max_retries:
                    self._count(retries=1)
                    time.sleep(self._backoff(attempt, error))
                    continue
                tries = f" after {attempt + 1} attempts" if retryable else ""
                return None, f"{type(error).__name__}{tries}: {error}"
        raise AssertionError("unreachable: the loop returns on its last attempt")

    @staticmethod
    def _check_streamable(params: SamplingParams) -> None:
        check_sampling_params(params)
        if params.logprobs is not None or params.return_tokens:
            raise ValueError("streamed deltas carry text only: SamplingParams.logprobs must be None and "
                             "return_tokens False")

    def _stream_all(self, create: Callable[..., Any], requests: list[dict[str, Any]], params: SamplingParams, *,
                    chat: bool) -> Iterator[StreamDelta]:
        for index, request in enumerate(requests):
            yield from self._stream_one(index, create, request, params, chat)

    def _open_stream(self, create: Callable[..., Any], request: dict[str, Any]) -> tuple[Any, str | None]:
        """(the open stream, None), or (None, why) once retries are spent. `create` returns once the response
        headers are in; the body streams after, so only the opening is retried."""
        return self._with_retries(lambda: create(**request))

    def _stream_one(self, prompt: int, create: Callable[..., Any], request: dict[str, Any], params: SamplingParams,
                    chat: bool) -> Iterator[StreamDelta]:
        request = {**request, "stream": True, "stream_options": {"include_usage": True}}
        with self._slots:  # a streamed request is in flight until its last chunk
            stream, failure = self._open_stream(create, request)
            if stream is None:
                self._count(failures=1)
                for sample in range(params.n):
                    yield StreamDelta(prompt, sample, finish_reason="error", error=failure)
                return
            reasons: dict[int, str] = {}
            usage = None
            try:
                for chunk in stream:
                    if getattr(chunk, "usage", None) is not None:
                        usage = chunk.usage
                    for choice in chunk.choices or ():
                        if not 0 <= choice.index < params.n:
                            continue
                        text = (choice.delta.content if chat else choice.text) or ""
                        if text:
                            yield StreamDelta(prompt, choice.index, text)
                        if choice.finish_reason is not None:
                            reasons[choice.index] = choice.finish_reason
            except (openai.OpenAIError, httpx.HTTPError) as error:
                failure = f"the stream broke off: {type(error).__name__}: {error}"
            finally:
                stream.close()
        if usage is not None:
            self._count(prompt_tokens=usage.prompt_tokens, completion_tokens=usage.completion_tokens)
        failed = False
        for sample in range(params.n):
            if sample in reasons:
                finish_reason, error = _finish(reasons[sample])
            else:
                finish_reason = "error"
                error = failure or f"the stream ended without a finish_reason for choice {sample}"
            failed |= finish_reason == "error"
            yield StreamDelta(prompt, sample, finish_reason=finish_reason,
                              prompt_tokens=usage.prompt_tokens if usage is not None else 0,
                              completion_tokens=_split(usage.completion_tokens, params.n, sample) if usage else 0,
                              error=error)
        if failed:
            self._count(failures=1)

    def _backoff(self, attempt: int, error: openai.OpenAIError) -> float:
        delay = min(self.backoff_max, self.backoff_base * 2 ** attempt) * random.uniform(0.5, 1.0)
        hinted = _retry_after_seconds(error)
        return min(self.backoff_max, max(delay, hinted)) if hinted is not None else delay

    def _count(self, **increments: int) -> None:
        with self._usage_lock:
            for name, value in increments.items():
                setattr(self.usage, name, getattr(self.usage, name) + value)

    # ----- responses -----

    def _parse_chat(self, response: Any, params: SamplingParams) -> list[Completion]:
        completions = []
        choices = sorted(response.choices, key=lambda choice: choice.index)[:params.n]
        for index, choice in enumerate(choices):
            entries = choice.logprobs.content if choice.logprobs is not None else None
            top = None
            if entries is not None and params.logprobs is not None:
                top = [{entry.token: entry.logprob, **{alt.token: alt.logprob for alt in entry.top_logprobs or []
                                                       if alt.token != entry.token}}
                       for entry in entries]
            content = choice.message.content
            if content is None:
                error = (f"the response has no text (finish_reason={choice.finish_reason!r}, "
                         f"refusal={getattr(choice.message, 'refusal', None)!r})")
                completions.append(Completion(text="", finish_reason="error", error=error))
                continue
            completion = self._completion(response, params, index, content, choice.finish_reason, top)
            tokens, sampled = ([e.token for e in entries], [e.logprob for e in entries]) if entries is not None \
                else (None, None)
            self._add_tokens(completion, params, choice, tokens, sampled)
            completions.append(completion)
        return completions + self._missing(len(completions), params)

    def _parse_completion(self, response: Any, params: SamplingParams) -> list[Completion]:
        completions = []
        choices = sorted(response.choices, key=lambda choice: choice.index)[:params.n]
        for index, choice in enumerate(choices):
            top = None
            logprobs = choice.logprobs
            tokens = logprobs.tokens if logprobs is not None else None
            if tokens is not None and params.logprobs is not None:
                alternatives = logprobs.top_logprobs or [{} for _ in tokens]
                top = [{token: logprob, **{t: lp for t, lp in (alts or {}).items() if t != token}}
                       for token, logprob, alts in zip(tokens, logprobs.token_logprobs, alternatives)]
            completion = self._completion(response, params, index, choice.text, choice.finish_reason, top)
            sampled = logprobs.token_logprobs if tokens is not None else None
            self._add_tokens(completion, params, choice, tokens, sampled)
            completions.append(completion)
        return completions + self._missing(len(completions), params)

    def _completion(self, response: Any, params: SamplingParams, index: int, text: str, reason: str | None,
                    top: list[dict[str, float]] | None) -> Completion:
        finish_reason, error = _finish(reason)
        if params.logprobs is not None and top is None and error is None:
            finish_reason, error = "error", "logprobs were requested but the server returned none"
        usage = response.usage
        prompt_tokens = usage.prompt_tokens if usage is not None else 0
        if top is not None:
            completion_tokens = len(top)
        else:
            completion_tokens = _split(usage.completion_tokens, params.n, index) if usage is not None else 0
        return Completion(text=text, finish_reason=finish_reason, prompt_tokens=prompt_tokens,
                          completion_tokens=completion_tokens, top_logprobs=top, error=error)

    @staticmethod
    def _add_tokens(completion: Completion, params: SamplingParams, choice: Any, tokens: list[str] | None,
                    sampled_logprobs: list[float] | None) -> None:
        """Fills `token_ids` and `logprobs` as far as the server's reply allows (see the module docstring)."""
        if not params.return_tokens or completion.finish_reason == "error":
            return
        completion.token_ids = _token_ids(choice, tokens)
        if sampled_logprobs is not None and samples_from_model_distribution(params):
            completion.logprobs = list(sampled_logprobs)

    @staticmethod
    def _missing(returned: int, params: SamplingParams) -> list[Completion]:
        # Some servers ignore n; say so instead of handing back fewer answers than asked for.
        return _error_completions(params.n - returned, f"the server returned {returned} choices for n={params.n}")
