"""The one interface every text generator implements.

Local transformers models, OpenAI-compatible HTTP endpoints and vLLM all sit behind
`Backend`, so judges, evaluation and online RL never care where text comes from.
"""
from __future__ import annotations

from dataclasses import dataclass, asdict
from typing import Iterator, Protocol, Sequence

Message = dict  # {"role": "system"|"user"|"assistant", "content": str}


@dataclass(frozen=True)
class SamplingParams:
    max_tokens: int = 256
    temperature: float = 0.0  # 0 means greedy
    top_p: float = 1.0
    top_k: int = 0  # 0 means no top-k filter
    n: int = 1
    seed: int | None = None
    stop: tuple[str, ...] = ()
    logprobs: int | None = None  # how many top log-probabilities to return for each generated token
    return_tokens: bool = False  # fill Completion.token_ids and Completion.logprobs (rollouts need them)

    def key(self) -> dict:
        """Everything that changes the output; used in cache keys."""
        d = asdict(self)
        d["stop"] = list(self.stop)
        # Left out unless set, so calls that do not ask for tokens keep the cache keys they always had.
        if not self.return_tokens:
            del d["return_tokens"]
        return d


@dataclass
class Completion:
    text: str
    finish_reason: str = "stop"  # "stop" | "length" | "error"
    prompt_tokens: int = 0
    completion_tokens: int = 0
    # One dict per generated token: token string -> log-probability (top `logprobs` entries).
    top_logprobs: list[dict[str, float]] | None = None
    error: str | None = None
    # With `SamplingParams.return_tokens`: every token the model generated, the one that ended the
    # answer (EOS, or the last token of a stop string) included, so a trainer sees the stop it must
    # learn; the text leaves stop strings and special tokens out, so it can be shorter than their decoding.
    token_ids: list[int] | None = None
    # One per token of `token_ids`: its log-probability under the distribution it was drawn from,
    # i.e. log_softmax(logits / temperature) after the top-k / top-p filter, renormalised over the
    # tokens the filter kept. This is the behaviour policy's probability that importance ratios
    # (PPO, GRPO) divide by; a trainer comparing against it must apply the same temperature and
    # filter. Greedy decoding (temperature 0) draws from no distribution (all mass on one token), so
    # there it is the model's own log_softmax(logits), as at temperature 1. Backends that cannot
    # report either leave it None; see each backend for what it fills.
    logprobs: list[float] | None = None


def samples_from_model_distribution(params: SamplingParams) -> bool:
    """True when the log-probs of the model's own distribution are those of the one sampled from.

    Servers report the model's raw log-probs (vLLM's default since its V1 engine; earlier ones and
    other servers may differ), so a backend that cannot compute `Completion.logprobs` itself fills
    them from those only in these cases: greedy decoding, or temperature 1 with no top-k/top-p.
    """
    return params.temperature == 0 or (params.temperature == 1 and params.top_p == 1 and params.top_k == 0)


class Backend(Protocol):
    model_id: str

    def chat(self, conversations: Sequence[list[Message]], params: SamplingParams) -> list[list[Completion]]:
        """One list of `params.n` completions for every conversation, in order."""
        ...

    def complete(self, prompts: Sequence[str], params: SamplingParams) -> list[list[Completion]]:
        """Raw text continuation (no chat template)."""
        ...


@dataclass(frozen=True)
class StreamDelta:
    """A piece of one sample's text as it is generated: sample `sample` of prompt `prompt`.

    A sample's deltas arrive in order, and joined they are exactly the text its non-streamed
    `Completion` would hold. Its last delta carries `finish_reason` ("stop" | "length" | "error",
    with `error` then saying why), `prompt_tokens` and `completion_tokens`; that delta may carry
    text too, which comes before the finish.
    """
    prompt: int
    sample: int
    text: str = ""
    finish_reason: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    error: str | None = None


class StreamingBackend(Backend, Protocol):
    """A backend that can hand out text while it generates (optional; the server streams any other
    backend as one delta per sample, sent when the whole completion is ready).

    Both methods take what `chat` / `complete` take and yield `StreamDelta`s, every sample of every
    prompt ending with one finishing delta. Invalid input raises ValueError by the first delta at the
    latest. Closing the iterator early (a client went away) stops the generation. Deltas carry text
    only: `params.logprobs` and `params.return_tokens` are refused.
    """

    def stream_chat(self, conversations: Sequence[list[Message]], params: SamplingParams) -> Iterator[StreamDelta]:
        ...

    def stream_complete(self, prompts: Sequence[str], params: SamplingParams) -> Iterator[StreamDelta]:
        ...


def check_sampling_params(params: SamplingParams) -> None:
    """Raises ValueError naming the first field of `params` that no backend can honour."""
    if params.max_tokens < 1:
        raise ValueError(f"SamplingParams.max_tokens must be >= 1, got {params.max_tokens}")
    if params.n < 1:
        raise ValueError(f"SamplingParams.n must be >= 1, got {params.n}")
    if params.temperature < 0:
        raise ValueError(f"SamplingParams.temperature must be >= 0, got {params.temperature}")
    if not 0 < params.top_p <= 1:
        raise ValueError(f"SamplingParams.top_p must be in (0, 1], got {params.top_p}")
    if params.top_k < 0:
        raise ValueError(f"SamplingParams.top_k must be >= 0 (0 disables it), got {params.top_k}")
    if params.logprobs is not None and params.logprobs < 0:
        raise ValueError(f"SamplingParams.logprobs must be >= 0 or None, got {params.logprobs}")
    # A bare string would be iterated character by character and stop at every one of them.
    if isinstance(params.stop, str) or not all(isinstance(s, str) and s for s in params.stop):
        raise ValueError(f"SamplingParams.stop must be a tuple of non-empty strings, got {params.stop!r}")


def check_conversation(conversation: object, index: int) -> None:
    """Raises ValueError naming conversation `index` and the message that is malformed."""
    if not isinstance(conversation, list) or not conversation:
        raise ValueError(f"conversation {index}: expected a non-empty list of messages, got {conversation!r:.200}")
    for position, message in enumerate(conversation):
        if not isinstance(message, dict):
            raise ValueError(f"conversation {index}, message {position}: expected a dict, got {message!r:.200}")
        if message.get("role") not in ("system", "user", "assistant"):
            raise ValueError(f"conversation {index}, message {position}: field 'role' must be system, user or "
                             f"assistant, got {message.get('role')!r}")
        if not isinstance(message.get("content"), str):
            raise ValueError(f"conversation {index}, message {position}: field 'content' must be a string, "
                             f"got {type(message.get('content')).__name__}")
