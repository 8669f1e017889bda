"""Sample several completions per prompt and score each with a reward: the first step of every method in
this package (best-of-n, expert iteration, RSO, online and iterative DPO), and the held-out measurement
each of them reports.

A completion that came back as an error is never scored (a guessed reward would be silently wrong): the
call stops with the prompt's source. A completion the reward cannot score (a judge reply without a
verdict) keeps the reward's configured `failure_reward` and its reason, and is counted.

`SamplingConfig` is the sampling section every method's config shares; `PolicySampler` is where each method
samples a model it holds (transformers, or with `sampling.backend: vllm` one vLLM engine that is given the
weights again after every training, as RL rollouts do); `samples_record` writes one
prompt's samples in the layout the preference loaders read as a scored ranking (`responses` with
`rewards`, `ranked: false`), so a samples file trains with `alignkit dpo` by a pair rule as it is.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

from alignkit.config import require, require_choice, require_number
from alignkit.generation.backend import Backend, SamplingParams
from alignkit.generation.local import generate_texts
from alignkit.rewards.interface import Reward, RewardResult
from alignkit.rewards.interface import Sample as RewardSample
from alignkit.data.prompts import PromptRecord

SAMPLING_BACKENDS = ("local", "vllm")


@dataclass
class SamplingConfig:
    n: int = 4  # completions sampled per prompt
    max_tokens: int = 256
    temperature: float = 1.0  # > 0: the methods here need distinct samples
    top_p: float = 1.0
    top_k: int = 0  # 0: no top-k filter
    seed: int = 0  # each sample's own seed derives from it, the prompt and the sample's index
    stop: list[str] = field(default_factory=list)
    batch_size: int = 16  # sequences decoded together
    cache: str = ""  # SQLite file of completions: a rerun (or a resumed job) replays what was sampled; empty: none
    backend: str = "local"  # local: transformers on the model in this process | vllm: one vLLM engine in this process, given the weights again after every training
    gpu_memory_utilization: float = 0.3  # vllm: the share of GPU memory the engine takes (training and reward models use the rest)
    max_model_len: int = 0  # vllm: the longest prompt + completion the engine serves; 0: the model's own limit

    def validate(self, where: str = "sampling") -> None:
        require_number(where, "n", self.n, low=1, whole=True)
        require_number(where, "max_tokens", self.max_tokens, low=1, whole=True)
        require_number(where, "temperature", self.temperature, low=0, low_open=True)
        require_number(where, "top_p", self.top_p, low=0, high=1, low_open=True)
        require_number(where, "top_k", self.top_k, low=0, whole=True)
        require_number(where, "batch_size", self.batch_size, low=1, whole=True)
        require(all(isinstance(s, str) and s for s in self.stop), where, "stop", "a list of non-empty strings",
                self.stop)
        require_choice(where, "backend", self.backend, SAMPLING_BACKENDS)
        require_number(where, "gpu_memory_utilization", self.gpu_memory_utilization, low=0, high=1, low_open=True)
        require_number(where, "max_model_len", self.max_model_len, low=0, whole=True)
        require(self.max_model_len == 0 or self.max_model_len > self.max_tokens, where, "max_model_len",
                f"0 (the model's limit) or more than max_tokens ({self.max_tokens})", self.max_model_len)
        if self.backend == "vllm":
            from alignkit.generation.vllm_backend import vllm_installed

            require(vllm_installed(), where, "backend", "local, or vllm once vLLM is installed (pip install vllm, on "
                    "a Linux machine with a CUDA GPU)", self.backend)

    def params(self, *, n: int | None = None, seed: int | None = None) -> SamplingParams:
        return SamplingParams(max_tokens=self.max_tokens, temperature=self.temperature, top_p=self.top_p,
                              top_k=self.top_k, n=self.n if n is None else n,
                              seed=self.seed if seed is None else seed, stop=tuple(self.stop))


class PolicySampler:
    """Where the methods here sample a model they hold in memory: LocalBackend on the model itself
    (`sampling.backend: local`), or one vLLM engine in this process (`vllm`), started from the model's weights
    at the first call and given them again whenever the caller's `version` changes (rl.vllm_rollout.VLLMSampler,
    which RL rollouts use too). A method that trains the model it samples from passes a new version after every
    update: online DPO its step, the rounds the current model's folder, RSO 0 before training and 1 after.
    `close()` drops the engine and the folder it started from."""

    def __init__(self, tokenizer, sampling: SamplingConfig):
        self.tokenizer, self.sampling = tokenizer, sampling
        self.vllm = None
        if sampling.backend == "vllm":
            from alignkit.rl.vllm_rollout import VLLMSampler

            self.vllm = VLLMSampler(tokenizer, seed=sampling.seed,
                                    gpu_memory_utilization=sampling.gpu_memory_utilization,
                                    max_model_len=sampling.max_model_len)

    def backend(self, model, version, *, model_id: str | None = None, device=None) -> Backend:
        """A backend sampling `model` as it is now; `model_id` names it in cache keys (see sampling_backend)."""
        if self.vllm is None:
            from alignkit.generation.local import LocalBackend

            return LocalBackend(model, self.tokenizer, batch_size=self.sampling.batch_size, model_id=model_id,
                                device=device)
        engine = self.vllm.engine(version, model)
        # vLLM's kernels answer a little differently from transformers': its samples are cached apart.
        engine.model_id = f"vllm:{model_id or 'policy'}"
        return engine

    def invalidate(self) -> None:
        """The model's weights were replaced (a checkpoint was loaded): give them to the engine at the next call."""
        if self.vllm is not None:
            self.vllm.invalidate()

    def close(self) -> None:
        if self.vllm is not None:
            self.vllm.close()


def sampling_backend(sampler: PolicySampler, model, version, model_id: str) -> Backend:
    """`sampler`'s backend on `model`, behind a CachedBackend on sampling.cache when one is set (close that when
    done; the sampler's engine outlives it).

    The cache key starts with the model id, so `model_id` must tell these weights apart from any other
    model's that could share the file: `local_model_id` of a folder as loaded, or, for a model trained in
    place, the id with `training.reference.model_fingerprint` of its weights appended.
    """
    return with_sampling_cache(sampler.backend(model, version, model_id=model_id), sampler.sampling)


def with_sampling_cache(backend: Backend, sampling: SamplingConfig) -> Backend:
    """`backend` behind a CachedBackend on sampling.cache when one is set (close it when done), else itself."""
    from alignkit.generation.cache import CachedBackend

    return CachedBackend(backend, sampling.cache) if sampling.cache else backend


@dataclass
class ScoredSample:
    text: str
    reward: float  # the reward's score, or its failure_reward when it could not score the sample
    failure: str | None = None  # why the reward could not score it
    finish_reason: str = "stop"  # stop | length (truncated at max_tokens)
    num_tokens: int = 0
    components: dict[str, float] = field(default_factory=dict)  # each part of a combined reward, unweighted


@dataclass
class PromptSamples:
    prompt: PromptRecord
    samples: list[ScoredSample]

    @property
    def rewards(self) -> list[float]:
        return [s.reward for s in self.samples]


def sample_and_score(backend: Backend, prompts: Sequence[PromptRecord], params: SamplingParams, reward: Reward, *,
                     progress: bool = True, desc: str = "sampling") -> list[PromptSamples]:
    """`params.n` completions of every prompt from `backend`, each scored by `reward`, in prompt order."""
    completions = generate_texts(backend, [p.messages for p in prompts], params, progress=progress, desc=desc)
    flat: list[RewardSample] = []
    for prompt, outs in zip(prompts, completions, strict=True):
        for c in outs:
            if c.finish_reason == "error":
                raise RuntimeError(f"{prompt.metadata.get('source', 'a prompt')}: sampling failed: {c.error}")
            flat.append(RewardSample(prompt.messages, c.text, prompt.metadata, c.completion_tokens or None))
    result = reward.score(flat)
    scored = _scored_samples(result, [c for outs in completions for c in outs])
    out, k = [], 0
    for prompt, outs in zip(prompts, completions):
        out.append(PromptSamples(prompt, scored[k:k + len(outs)]))
        k += len(outs)
    return out


def _scored_samples(result: RewardResult, completions: list) -> list[ScoredSample]:
    if len(result.scores) != len(completions):
        raise RuntimeError(f"the reward returned {len(result.scores)} scores for {len(completions)} samples")
    parts = {name: part.scores for name, part in result.components.items()}
    return [ScoredSample(c.text, float(score), failure, c.finish_reason, c.completion_tokens,
                         {name: float(values[i]) for name, values in parts.items()})
            for i, (c, score, failure) in enumerate(zip(completions, result.scores, result.failures))]


def samples_record(item: PromptSamples) -> dict:
    """One prompt's samples as a JSONL record: the prompt record's own fields, `messages` (the prompt),
    `responses` in sampling order with their `rewards` (so preference loaders rank them by reward), and per
    sample its failure, finish reason, token count and reward components."""
    record = {**item.prompt.record_fields(), "source": item.prompt.metadata.get("source", ""),
              "messages": item.prompt.messages,
              "responses": [s.text for s in item.samples], "rewards": [s.reward for s in item.samples],
              "ranked": False, "failures": [s.failure for s in item.samples],
              "finish_reasons": [s.finish_reason for s in item.samples],
              "completion_tokens": [s.num_tokens for s in item.samples]}
    if item.samples and item.samples[0].components:
        record["reward_components"] = {name: [s.components[name] for s in item.samples]
                                       for name in item.samples[0].components}
    return record


@dataclass
class HeldoutResult:
    prompts: int
    reward_mean: float  # mean combined reward of the greedy answers
    components: dict[str, float]  # mean of each reward part (e.g. the format check: the compliance rate)
    failures: int  # answers the reward could not score
    truncated: float  # share of answers cut at max_tokens

    def as_dict(self) -> dict:
        return {"prompts": self.prompts, "reward_mean": self.reward_mean, "components": dict(self.components),
                "failures": self.failures, "truncated": self.truncated}


def heldout_eval(backend: Backend, prompts: Sequence[PromptRecord], reward: Reward, *, max_tokens: int,
                 progress: bool = False) -> HeldoutResult:
    """Greedy answers to held-out prompts, scored: what every method here reports before and after."""
    scored = sample_and_score(backend, prompts, SamplingParams(max_tokens=max_tokens), reward, progress=progress,
                              desc="held-out")
    samples = [item.samples[0] for item in scored]
    names = list(samples[0].components) if samples else []
    return HeldoutResult(len(samples), _mean([s.reward for s in samples]),
                         {name: _mean([s.components[name] for s in samples]) for name in names},
                         sum(s.failure is not None for s in samples),
                         _mean([float(s.finish_reason == "length") for s in samples]))


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else math.nan
