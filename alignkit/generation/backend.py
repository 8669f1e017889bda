"""The one interface every text generator implements.

Local transformers models, OpenAI-compatible HTTP endpoints and vLLM all sit behind
`Backend`, so judges, evaluation and online RL never care where text comes from.
"""
from __future__ import annotations

from dataclasses import dataclass, field, asdict
from typing import Protocol, Sequence

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

    def key(self) -> dict:
        """Everything that changes the output; used in cache keys."""
        d = asdict(self)
        d["stop"] = list(self.stop)
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


class Backend(Protocol):
    model_id: str

    def chat(self, conversations: Sequence[list[Message]], params: SamplingParams) -> list[list[Completion]]:
        """One list of `params.n` completions for every conversation, in order."""
        ...

    def complete(self, prompts: Sequence[str], params: SamplingParams) -> list[list[Completion]]:
        """Raw text continuation (no chat template)."""
        ...
