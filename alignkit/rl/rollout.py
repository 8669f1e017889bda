"""`RolloutSource`: the BatchSource of online RL. It samples completions from the current policy,
scores them, and serves them to the training loop as micro-batches in the RL micro-batch contract
(alignkit/rl/buffer.py), several optimizer steps per rollout.

Each time its buffer is used up it takes the next `prompts_per_step` prompts of a seeded prompt stream,
samples `group_size` completions of each with the policy as it is now (LocalBackend, seeded from the
run's seed and the step, so a rerun samples the same tokens), scores them with `reward_fn`, applies the
truncation policy, recomputes the old policy's log-probs (and the reference's) with a training forward,
and computes advantages with `advantage_fn`. The buffer then serves `ppo_epochs` passes, each in a fresh
seeded order, of `mini_batches` optimizer steps of (at most) `grad_accum` micro-batches each.

Log-probs and temperature: the sampler reports log softmax(logits / T) after its top-k / top-p filter.
The old (and reference) log-probs are recomputed here with `rl.logprobs.completion_logprobs` at the same
T (1 for greedy decoding) without the filter, which is exactly what a loss computes for the current
policy with the same function; so the first update of a rollout sees a ratio of 1 up to the packing of
its micro-batch (bit for bit when the layout is the same: the old log-probs are computed in the first
pass's micro-batches). The recompute runs in eval mode (no dropout), under no_grad, on the model as the
loop holds it (bf16 weights under precision=bf16). The sampler's own log-probs stay on each Sample as
`gen_logprobs`; `last_stats["sampler_logprob_gap"]` is their largest difference from the recomputed ones
when the two are comparable (no top-k / top-p), a check that generation and training agree.

Truncated samples (no EOS or stop string within max_tokens): `keep` trains on them as they are;
`penalty` replaces their reward with `truncation_reward`; `mask` gives them zero loss weight by leaving
them out of every micro-batch (they still count in their group's reward statistics). When too few
samples are left to fill one micro-batch per optimizer step, more prompts are sampled into the buffer.

State: the prompt stream's position, the step of the last rollout (every seed derives from it), the
position inside the buffer and the buffer itself, so a run interrupted mid-buffer resumes exactly.
Runs in one process for now.
"""
from __future__ import annotations

import contextlib
import hashlib
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from alignkit.data.chat import tokenize_prompt
from alignkit.generation.backend import SamplingParams, check_sampling_params
from alignkit.generation.local import LocalBackend
from alignkit.models.lora import is_peft
from alignkit.rl.advantages import grpo_advantages
from alignkit.rl.buffer import (
    UNITS,
    Sample,
    micro_batch,
    scatter_logprobs,
    shuffled_chunks,
)
from alignkit.rl.logprobs import completion_logprobs, loss_temperature
from alignkit.rl.prompts import PromptStream, as_rl_prompts
from alignkit.training.distributed import rank_world
from alignkit.training.reference import reference_mode

TRUNCATED = ("keep", "mask", "penalty")
RewardFn = Callable[[list[tuple[list[dict], str, dict]]], Sequence[float]]
AdvantageFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass
class RolloutConfig:
    prompts_per_step: int = 8  # prompts per rollout
    group_size: int = 4  # completions sampled per prompt
    max_tokens: int = 256
    temperature: float = 1.0  # 0 is greedy (then every completion of a prompt is the same)
    top_p: float = 1.0
    top_k: int = 0
    stop: tuple[str, ...] = ()
    seed: int = 0
    grad_accum: int = 1  # micro-batches per optimizer step
    mini_batches: int = 1  # optimizer steps per pass over the buffer
    ppo_epochs: int = 1  # passes over the buffer before sampling again
    truncated: str = "keep"  # keep | mask | penalty
    truncation_reward: float = 0.0  # the reward of a truncated sample under truncated=penalty
    units: str = "tokens"  # what num_units counts: completion tokens or sequences
    gen_batch_size: int = 16  # sequences decoded together
    shuffle_prompts: bool = True
    max_resamples: int = 8  # extra rollouts allowed when truncated=mask leaves too few samples

    def __post_init__(self) -> None:
        self.stop = tuple(self.stop)
        for name in ("prompts_per_step", "group_size", "grad_accum", "mini_batches", "ppo_epochs", "gen_batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"rollout.{name} must be >= 1, got {getattr(self, name)}")
        if self.truncated not in TRUNCATED:
            raise ValueError(f"rollout.truncated must be one of {', '.join(TRUNCATED)}, not {self.truncated!r}")
        if self.units not in UNITS:
            raise ValueError(f"rollout.units must be one of {', '.join(UNITS)}, not {self.units!r}")
        if self.prompts_per_step * self.group_size < self.mini_batches:
            raise ValueError(f"prompts_per_step x group_size ({self.prompts_per_step * self.group_size}) samples "
                             f"cannot fill mini_batches={self.mini_batches} optimizer steps")
        check_sampling_params(self.sampling_params(0))

    def sampling_params(self, seed: int) -> SamplingParams:
        return SamplingParams(max_tokens=self.max_tokens, temperature=self.temperature, top_p=self.top_p,
                              top_k=self.top_k, n=self.group_size, seed=seed, stop=self.stop, return_tokens=True)


def derived_seed(*parts: int) -> int:
    digest = hashlib.blake2b("|".join(str(p) for p in parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 2


@contextlib.contextmanager
def _scoring(model):
    """Eval mode (no dropout) and no gradients, the model's mode restored after."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        model.train(was_training)


class RolloutSource:
    """A BatchSource sampling from the policy. `reward_fn(samples) -> rewards` gets (prompt messages,
    completion text, prompt metadata) triples; `advantage_fn(rewards [B], group_ids [B]) -> [B]` defaults
    to GRPO's group normalisation; `reference` is None (no ref_logprobs), "adapter" (the policy with its
    LoRA adapter off) or a frozen model, run as it is (give it the precision training computes in)."""

    def __init__(self, prompts: Sequence, tokenizer, reward_fn: RewardFn, config: RolloutConfig | None = None, *,
                 advantage_fn: AdvantageFn | None = None, reference=None):
        if rank_world()[1] > 1:
            raise NotImplementedError("RolloutSource runs in a single process for now")
        if isinstance(reference, str) and reference != "adapter":
            raise ValueError(f"reference must be None, 'adapter' or a model, not {reference!r}")
        self.prompts = as_rl_prompts(prompts)
        self.tokenizer, self.reward_fn = tokenizer, reward_fn
        self.config = config or RolloutConfig()
        self.advantage_fn = advantage_fn or grpo_advantages
        self.reference = reference
        self.stream = PromptStream(len(self.prompts), self.config.seed, shuffle=self.config.shuffle_prompts)
        self.buffer: list[Sample] | None = None
        self.used = 0  # optimizer steps served from the current buffer
        self.rollout_step = -1  # the step the current buffer was sampled at
        self.rollouts = 0
        self.last_stats: dict = {}  # stats of the latest rollout, for logging

    # ----- BatchSource -----

    @property
    def steps_per_rollout(self) -> int:
        return self.config.ppo_epochs * self.config.mini_batches

    def next_step(self, step: int, model) -> list[dict]:
        if self.buffer is None or self.used >= self.steps_per_rollout:
            self._roll_out(step, model)
        epoch, k = divmod(self.used, self.config.mini_batches)
        self.used += 1
        return [self._micro_batch(chunk) for chunk in self.layout(epoch)[k]]

    def state_dict(self) -> dict:
        return {"position": self.stream.position, "used": self.used, "rollout_step": self.rollout_step,
                "rollouts": self.rollouts, "stats": dict(self.last_stats),
                "buffer": None if self.buffer is None else [s.to_state() for s in self.buffer]}

    def load_state_dict(self, state: dict) -> None:
        self.stream.position = int(state["position"])
        self.used, self.rollout_step = int(state["used"]), int(state["rollout_step"])
        self.rollouts, self.last_stats = int(state["rollouts"]), dict(state["stats"])
        self.buffer = None if state["buffer"] is None else [Sample.from_state(s) for s in state["buffer"]]

    def steps_per_epoch(self) -> int:
        """Optimizer steps per pass over the prompts (a truncated=mask resample makes it approximate)."""
        return math.ceil(len(self.prompts) / self.config.prompts_per_step) * self.steps_per_rollout

    def epoch(self) -> float:
        return self.stream.epoch()

    # ----- layout -----

    def layout(self, epoch: int) -> list[list[list[int]]]:
        """Pass `epoch` over the buffer: per optimizer step, its micro-batches as lists of buffer indices."""
        cfg = self.config
        trained = [i for i, s in enumerate(self.buffer) if s.trained]
        chunks = shuffled_chunks(trained, min(len(trained), cfg.mini_batches * cfg.grad_accum),
                                 derived_seed(cfg.seed, self.rollout_step, epoch, 7))
        base, extra = divmod(len(chunks), cfg.mini_batches)
        steps, start = [], 0
        for k in range(cfg.mini_batches):
            size = base + (1 if k < extra else 0)
            steps.append(chunks[start:start + size])
            start += size
        return steps

    def _micro_batch(self, chunk: list[int]) -> dict:
        return micro_batch([self.buffer[i] for i in chunk], units=self.config.units)

    # ----- rollout -----

    def _roll_out(self, step: int, model) -> None:
        cfg = self.config
        if self.reference == "adapter" and not is_peft(model):
            raise ValueError("reference='adapter' needs a LoRA (peft) policy")
        started = time.perf_counter()
        samples: list[Sample] = []
        triples: list[tuple[list[dict], str, dict]] = []
        gen_seconds, gen_tokens = 0.0, 0
        for attempt in range(cfg.max_resamples + 1):
            prompts = [self.prompts[i] for i in self.stream.take(cfg.prompts_per_step)]
            backend = LocalBackend(model, self.tokenizer, batch_size=cfg.gen_batch_size)
            t0 = time.perf_counter()
            completions = backend.chat([p.messages for p in prompts],
                                       cfg.sampling_params(derived_seed(cfg.seed, step, attempt)))
            gen_seconds += time.perf_counter() - t0
            group0 = len(samples) // cfg.group_size
            for g, (prompt, outs) in enumerate(zip(prompts, completions, strict=True)):
                prompt_ids = tokenize_prompt(self.tokenizer, prompt.messages)  # what the backend generated from
                for c in outs:
                    truncated = c.finish_reason == "length"
                    samples.append(Sample(prompt_ids, list(c.token_ids), c.text, group0 + g, truncated,
                                          gen_logprobs=list(c.logprobs) if c.logprobs is not None else None,
                                          trained=not (truncated and cfg.truncated == "mask")))
                    triples.append((prompt.messages, c.text, prompt.metadata))
                    gen_tokens += len(c.token_ids)
            if sum(s.trained for s in samples) >= cfg.mini_batches:
                break
        else:
            raise RuntimeError(f"with truncated=mask, {len(samples)} samples in {cfg.max_resamples + 1} rollouts "
                               f"left fewer than mini_batches={cfg.mini_batches} untruncated; raise max_tokens "
                               "or use truncated=keep or penalty")
        self._score(samples, triples)
        self.buffer, self.used, self.rollout_step = samples, 0, step
        self.rollouts += 1
        t0 = time.perf_counter()
        self._compute_logprobs(model)
        self._record_stats(gen_seconds, gen_tokens, time.perf_counter() - t0, time.perf_counter() - started)

    def _score(self, samples: list[Sample], triples: list) -> None:
        rewards = [float(r) for r in self.reward_fn(triples)]
        if len(rewards) != len(samples):
            raise ValueError(f"reward_fn returned {len(rewards)} rewards for {len(samples)} samples")
        if not all(math.isfinite(r) for r in rewards):
            raise ValueError("reward_fn returned a reward that is not finite")
        for s, r in zip(samples, rewards):
            s.reward = self.config.truncation_reward if s.truncated and self.config.truncated == "penalty" else r
        values = torch.tensor([s.reward for s in samples], dtype=torch.float32)
        groups = torch.tensor([s.group for s in samples], dtype=torch.long)
        advantages = torch.as_tensor(self.advantage_fn(values, groups), dtype=torch.float32).reshape(-1)
        if advantages.numel() != len(samples) or not bool(torch.isfinite(advantages).all()):
            raise ValueError(f"advantage_fn must return {len(samples)} finite values, got {advantages.numel()}")
        for s, a in zip(samples, advantages.tolist()):
            s.advantage = a

    def _compute_logprobs(self, model) -> None:
        """Old (and reference) log-probs in the first pass's micro-batches, where the loss will first see them."""
        temperature = loss_temperature(self.config.temperature)
        for step_chunks in self.layout(0):
            for chunk in step_chunks:
                samples = [self.buffer[i] for i in chunk]
                batch = micro_batch(samples, units=self.config.units)
                with _scoring(model):
                    scatter_logprobs(samples, completion_logprobs(model, batch, temperature), "old_logprobs")
                if self.reference is not None:
                    ref = model if self.reference == "adapter" else self.reference
                    with reference_mode(ref):  # eval, no_grad and, for a peft model, its adapter off
                        scatter_logprobs(samples, completion_logprobs(ref, batch, temperature), "ref_logprobs")

    def _record_stats(self, gen_seconds: float, gen_tokens: int, logprob_seconds: float, seconds: float) -> None:
        rewards = torch.tensor([s.reward for s in self.buffer], dtype=torch.float64)
        lengths = torch.tensor([len(s.completion_ids) for s in self.buffer], dtype=torch.float64)
        stats = {"rollout": self.rollouts, "rollout_step": self.rollout_step, "samples": len(self.buffer),
                 "trained_samples": sum(s.trained for s in self.buffer),
                 "reward_mean": float(rewards.mean()), "reward_std": float(rewards.std(unbiased=False)),
                 "completion_len_mean": float(lengths.mean()),
                 "truncated_rate": sum(s.truncated for s in self.buffer) / len(self.buffer),
                 "gen_seconds": gen_seconds, "gen_tokens_per_s": gen_tokens / max(gen_seconds, 1e-9),
                 "logprob_seconds": logprob_seconds, "rollout_seconds": seconds}
        cfg = self.config
        if cfg.top_k == 0 and cfg.top_p == 1.0:
            gaps = [float((s.old_logprobs - torch.tensor(s.gen_logprobs)).abs().max())
                    for s in self.buffer if s.trained and s.gen_logprobs and s.old_logprobs is not None]
            if gaps:
                stats["sampler_logprob_gap"] = max(gaps)
        self.last_stats = stats
