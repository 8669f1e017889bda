"""The blind arena: two models answer the annotator's own prompt; the vote comes before their names.

Any backend alignkit can call serves as a contestant (`embedded`, a model folder, `openai:<model>@<url>`,
`vllm:<model>`). Each battle draws two different models at random and which of them is shown as A;
both are stored with the battle, so `export --what battles` feeds `alignkit leaderboard` directly.
"""
from __future__ import annotations

import random
import threading
from dataclasses import dataclass, field
from typing import Mapping

from alignkit.generation.backend import Backend, SamplingParams

MAX_PROMPT = 8000


class ArenaError(ValueError):
    """A prompt the arena cannot send, or a contestant that failed to answer."""


@dataclass
class Arena:
    backends: Mapping[str, Backend]  # contestant name -> backend
    params: SamplingParams = SamplingParams(max_tokens=512, temperature=0.7)
    rng: random.Random = field(default_factory=random.SystemRandom)
    # A local model is not safe to call from two request threads at once.
    _locks: dict[str, threading.Lock] = field(default_factory=dict, init=False, repr=False)

    def __post_init__(self) -> None:
        if len(self.backends) < 2:
            raise ArenaError(f"the arena needs at least two models, got {len(self.backends)}")
        self._locks = {name: threading.Lock() for name in self.backends}

    def pick(self) -> tuple[str, str]:
        """Two different contestants, in the order they are shown (A, B)."""
        first, second = self.rng.sample(sorted(self.backends), 2)
        return first, second

    def answer(self, name: str, prompt: str) -> str:
        with self._locks[name]:
            completion = self.backends[name].chat([[{"role": "user", "content": prompt}]], self.params)[0][0]
        if completion.finish_reason == "error":
            raise ArenaError(f"model {name} failed to answer: {completion.error or 'error'}")
        return completion.text

    def battle(self, prompt: str) -> tuple[str, str, str, str]:
        """(model A, model B, A's answer, B's answer) for one prompt."""
        if not prompt.strip():
            raise ArenaError("the prompt is empty")
        if len(prompt) > MAX_PROMPT:
            raise ArenaError(f"the prompt is over {MAX_PROMPT} characters")
        model_a, model_b = self.pick()
        return model_a, model_b, self.answer(model_a, prompt), self.answer(model_b, prompt)
