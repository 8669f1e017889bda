"""An LLM judge as a reward, through alignkit.judges (prompts, strict verdict parsing, re-asks) and,
when given a cache file, the SQLite judge cache, so a rerun asks nothing twice.

* mode "grade": a 1-10 single-answer rating of the completion, scaled to [0, 1] ((rating - 1) / 9);
* mode "pairwise": the completion against the reference answer in the sample's metadata, judged in
  both orders by default; each order scores a win 1, a tie 0.5 and a loss 0, and the orders are
  averaged, so a judge that only ever picks the first position gives 0.5.

A reply that does not parse (after `max_parse_retries` re-asks), a backend error, or a sample with
no reference in pairwise mode is a failure scored `failure_reward`, never a guessed verdict.
"""
from __future__ import annotations

from typing import Sequence

from alignkit.generation.backend import Backend, SamplingParams
from alignkit.rewards.interface import RewardResult, Sample, from_outcomes

JUDGE_MODES = ("grade", "pairwise")
_ORDER_SCORE = {"a": 1.0, "tie": 0.5, "b": 0.0}  # the item's output a is the completion


def _turns(prompt: list[dict], completion: str) -> tuple[list[str], list[str]]:
    """(user turns, assistant turns ending with the completion); ValueError unless they alternate."""
    turns = [m for m in prompt if m.get("role") != "system"]
    questions = [m["content"] for m in turns[0::2] if m.get("role") == "user"]
    answers = [m["content"] for m in turns[1::2] if m.get("role") == "assistant"] + [completion]
    if not turns or len(questions) != len(answers) or len(questions) + len(answers) - 1 != len(turns):
        raise ValueError("the prompt must alternate user and assistant turns and end with a user turn")
    return questions, answers


def instruction_text(prompt: list[dict]) -> str:
    """The instruction a pairwise judge sees: the lone user turn, or the whole conversation written out."""
    turns = [m for m in prompt if m.get("role") != "system"]
    if len(turns) == 1 and len(prompt) == 1:
        return turns[0]["content"]
    return "\n\n".join(f"{m['role'].capitalize()}: {m['content']}" for m in prompt)


class JudgeReward:
    """A judge reward over `backend` (or the backend spec `judge`, opened on first use)."""

    def __init__(self, name: str = "judge", *, backend: Backend | None = None, judge: str = "", cache: str = "",
                 mode: str = "grade", strategy: str = "plain", max_tokens: int = 512, both_orders: bool = True,
                 allow_tie: bool = False, max_parse_retries: int = 0, reference_key: str = "answer",
                 batch_size: int = 64, failure_reward: float = 0.0):
        from alignkit.judges import JudgeConfig

        if mode not in JUDGE_MODES:
            raise ValueError(f"JudgeReward mode must be one of {', '.join(JUDGE_MODES)}, got {mode!r}")
        if (backend is None) == (not judge):
            raise ValueError("JudgeReward needs either a `backend` or a backend spec `judge`")
        if backend is not None and cache:
            from alignkit.generation.cache import CachedBackend

            backend = CachedBackend(backend, cache)
        self.name, self.backend, self.spec, self.cache, self.mode = name, backend, judge, cache, mode
        self.reference_key, self.failure_reward = reference_key, failure_reward
        self.params = SamplingParams(max_tokens=max_tokens)  # greedy: a reward should not be a coin toss
        self.max_parse_retries, self.batch_size = max_parse_retries, batch_size
        self.pair_config = JudgeConfig(strategy=strategy, params=self.params, both_orders=both_orders,
                                       allow_tie=allow_tie, max_parse_retries=max_parse_retries,
                                       batch_size=batch_size)

    def _backend(self) -> Backend:
        if self.backend is None:
            from alignkit.generation.specs import open_backend

            self.backend = open_backend(self.spec, cache=self.cache or None, progress=False)
        return self.backend

    def score(self, samples: Sequence[Sample]) -> RewardResult:
        outcomes = self._grade(samples) if self.mode == "grade" else self._pairwise(samples)
        return from_outcomes(outcomes, self.failure_reward)

    def _grade(self, samples: Sequence[Sample]) -> list[tuple[float | None, str | None]]:
        from alignkit.judges import SINGLE_SCALE, ask_scores, single_grade_prompt

        outcomes: list[tuple[float | None, str | None]] = [(None, None)] * len(samples)
        jobs, prompts, shown = [], [], []
        for i, sample in enumerate(samples):
            try:
                questions, answers = _turns(sample.prompt, sample.completion)
            except ValueError as error:
                outcomes[i] = (None, str(error))
                continue
            jobs.append(i)
            prompts.append(single_grade_prompt(questions, answers))
            shown.append(answers)
        low, high = SINGLE_SCALE
        asked = ask_scores(self._backend(), prompts, shown, "Rating", SINGLE_SCALE, self.params,
                           self.max_parse_retries, self.batch_size)
        for i, result in zip(jobs, asked):
            parsed = result.parsed
            outcomes[i] = (None, f"judge: {parsed.failure}") if parsed.failure else \
                ((parsed.score - low) / (high - low), None)
        return outcomes

    def _pairwise(self, samples: Sequence[Sample]) -> list[tuple[float | None, str | None]]:
        from alignkit.judges import PairItem, judge_pairs

        outcomes: list[tuple[float | None, str | None]] = [(None, None)] * len(samples)
        jobs, items = [], []
        for i, sample in enumerate(samples):
            reference = sample.metadata.get(self.reference_key)
            if not isinstance(reference, str) or not reference.strip():
                outcomes[i] = (None, f"metadata has no reference answer {self.reference_key!r}")
                continue
            instruction = instruction_text(sample.prompt)
            if not instruction.strip():
                outcomes[i] = (None, "the prompt is empty")
                continue
            jobs.append(i)
            items.append(PairItem(instruction, sample.completion, reference))
        judgments = judge_pairs(self._backend(), items, self.pair_config) if items else []
        for i, judgment in zip(jobs, judgments):
            failed = [f"judge ({order}): {result.failure}" for order, result in judgment.orders.items()
                      if result.verdict is None]
            if failed:
                outcomes[i] = (None, "; ".join(failed))
                continue
            values = [_ORDER_SCORE[result.verdict] for result in judgment.orders.values()]
            outcomes[i] = (sum(values) / len(values), None)
        return outcomes
