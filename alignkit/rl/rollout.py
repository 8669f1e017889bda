"""`RolloutSource`: the BatchSource of online RL. It samples completions from the current policy,
scores them, and serves them to the training loop as micro-batches in the RL micro-batch contract
(alignkit/rl/buffer.py), several optimizer steps per rollout.

Each time its buffer is used up it takes the next `prompts_per_step` prompts of a seeded prompt stream,
samples `group_size` completions of each with the policy as it is now (seeded from the run's seed and the
step, so a rerun samples the same tokens), scores them with `reward_fn`, applies the
truncation policy, recomputes the old policy's log-probs (and the reference's) with a training forward,
and then computes advantages. The buffer then serves `ppo_epochs` passes, each in a fresh seeded order,
of `mini_batches` optimizer steps of (at most) `grad_accum` micro-batches each.

Advantages come after the log-probs, so the KL to the reference can be part of the reward (`reward_kl`):
rl/buffer_advantages.py assigns them, at the sequence level with `advantage_fn` (GRPO, RLOO, REINFORCE) or
per token with GAE (PPO, `gae`; the policy is then an `rl.value_head.ActorCritic`, whose values at every
completion token come from the same forward as the old log-probs).

Sampler (`backend`): `local` runs LocalBackend on the policy itself; `vllm` runs a vLLM engine in this
process, started from the policy's weights at the first rollout and given the trained ones before every
rollout that follows an optimizer step (rl/vllm_rollout.py). vLLM samples from the prompt token ids the
training batch uses (data.chat.tokenize_prompt, as LocalBackend renders them), each sample with its own seed
derived as LocalBackend derives them. Either way the old log-probs are the training forward's, below; vLLM's
own (of the distribution it drew from) are `gen_logprobs`.

Log-probs and temperature: the sampler reports log softmax(logits / T) after its top-k / top-p filter.
The old (and reference) log-probs are recomputed here with `rl.logprobs.completion_logprobs` at the same
T (1 for greedy decoding) without the filter, which is exactly what a loss computes for the current
policy with the same function; so the first update of a rollout sees a ratio of 1 up to the packing of
its micro-batch (bit for bit when the layout is the same: the old log-probs are computed in the first
pass's micro-batches). The recompute runs in eval mode (no dropout), under no_grad, on the model as the
loop holds it (bf16 weights under precision=bf16). The sampler's own log-probs stay on each Sample as
`gen_logprobs`; `last_stats["sampler_logprob_gap"]` is their largest difference from the recomputed ones
when the two are comparable (no top-k / top-p), a check that generation and training agree.

When a rollout feeds exactly one optimizer step and nothing else needs them (no PPO values, no KL in the
reward), the old log-probs are not recomputed (`recomputes_old_logprobs` False): the one update runs on
the policy that sampled, so its own log-probs, detached, are the old ones (ratio 1, as TRL does with one
iteration), and a forward over the whole rollout is saved. The micro-batches then carry the sampler's
log-probs instead, and the objective logs the same gap check against the update's own log-probs.

Truncated samples (no EOS or stop string within max_tokens): `keep` trains on them as they are;
`penalty` replaces their reward with `truncation_reward`; `mask` gives them zero loss weight by leaving
them out of every micro-batch (they still count in their group's reward statistics, with their KL when
it is in the reward, so their log-probs are computed then too). When too few samples are left to fill
one micro-batch per optimizer step, more prompts are sampled into the buffer.

State: the prompt stream's position, the step of the last rollout (every seed derives from it), the
position inside the buffer and the buffer itself, so a run interrupted mid-buffer resumes exactly. A vLLM
engine is not state: after a resume the first rollout starts one from the restored weights. `close()` drops
the engine.

Several processes (torchrun / accelerate launch, train.parallel ddp or fsdp): `prompts_per_step` is the
global number, divided evenly among the processes. Every process walks the same prompt stream and samples
its own contiguous slice of each step's prompts (prompts.PromptStream.take_share), so a group never spans
processes (GRPO / RLOO group statistics stay local) and the stream's position is the same everywhere. The
sampling seed derives from (seed, step, attempt) and each sample's from its prompt's tokens
(generation/local.py), not from the rank: a prompt gets the same samples whichever process draws it, so N
processes sample exactly what one process with the whole prompts_per_step samples (and train as it does).
Group ids are global (attempt x prompts_per_step + the prompt's index in the step), as one process numbers
them. Each process scores its own samples. What spans the whole rollout is computed over every process's
samples, gathered (buffer_advantages.py): batch-level advantages (REINFORCE's mean, GRPO scale=batch, PPO's
whitening) and the KL in the reward; so are the logged statistics (`_record_stats`). A truncated=mask
resample happens on every process when any one lacks samples, and every process cuts its buffer into the
same number of micro-batches per step (the fewest any one can fill: the loop syncs gradients on the last).
Every process must run the same number of forwards per micro-batch (under FSDP each is collective) and the
old log-probs and the loss the same layout: each micro-batch's layout is agreed across processes
(`_agreed_layouts`: shared_prompt, two forwards, by all or none; never under FSDP, whose backward cannot
take it, see `_fsdp`) and carried in the batch (`layout`), for the old log-probs and the loss alike. Sampling and scoring run on the unwrapped
model (under FSDP inside the loop's `gathered()`), whose forwards are not collective. rollout.backend=vllm
runs one process only.
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
from alignkit.data.packing import target_positions
from alignkit.generation.backend import SamplingParams, check_sampling_params
from alignkit.generation.local import LocalBackend
from alignkit.models.lora import is_peft
from alignkit.rewards.interface import Sample as RewardSample
from alignkit.rl.advantages import grpo_advantages
from alignkit.rl.buffer import UNITS, Sample, micro_batch, scatter_tokens, shuffled_chunks
from alignkit.rl.buffer_advantages import AdvantageFn, GAEConfig, RewardKL, assign_advantages
from alignkit.rl.logprobs import completion_logprobs, completion_scores, loss_temperature
from alignkit.rl.prompts import PromptStream, as_prompt_records
from alignkit.rl.value_head import is_actor_critic, unwrap_policy
from alignkit.rl.vllm_rollout import VLLMSampler
from alignkit.training.distributed import all_gather_objects, all_sum, rank_world
from alignkit.training.forward import choose_layout
from alignkit.training.reference import reference_mode

TRUNCATED = ("keep", "mask", "penalty")
BACKENDS = ("local", "vllm")
# Gets one rewards.interface.Sample per completion (prompt messages, completion text, the prompt record's
# other fields, and the number of tokens generated, EOS included), returns one reward each.
RewardFn = Callable[[list[RewardSample]], Sequence[float]]


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
    backend: str = "local"  # local (transformers, on the policy itself) | vllm (an engine in this process)
    gpu_memory_utilization: float = 0.3  # vllm: the share of GPU memory the engine takes (training uses the rest)
    max_model_len: int = 0  # vllm: the longest prompt + completion the engine serves; 0: the model's own limit

    def __post_init__(self) -> None:
        self.stop = tuple(self.stop)
        for name in ("prompts_per_step", "group_size", "grad_accum", "mini_batches", "ppo_epochs", "gen_batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"rollout.{name} must be >= 1, got {getattr(self, name)}")
        if self.truncated not in TRUNCATED:
            raise ValueError(f"rollout.truncated must be one of {', '.join(TRUNCATED)}, not {self.truncated!r}")
        if self.units not in UNITS:
            raise ValueError(f"rollout.units must be one of {', '.join(UNITS)}, not {self.units!r}")
        if self.backend not in BACKENDS:
            raise ValueError(f"rollout.backend must be one of {', '.join(BACKENDS)}, not {self.backend!r}")
        if not 0 < self.gpu_memory_utilization <= 1:
            raise ValueError(f"rollout.gpu_memory_utilization must be in (0, 1], got {self.gpu_memory_utilization}")
        if self.max_model_len < 0 or 0 < self.max_model_len <= self.max_tokens:
            raise ValueError(f"rollout.max_model_len must be 0 (the model's limit) or more than rollout.max_tokens "
                             f"({self.max_tokens}), got {self.max_model_len}")
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


def _fsdp(model) -> bool:
    """Whether `model` is sharded by FSDP2. The shared_prompt layout does not train there: its two forwards run
    every block twice in one graph, and the backward through the first use finds the block's gathered weights
    already freed by FSDP after the second ("setStorage ... storage of size 0", torch 2.13)."""
    from torch.distributed.fsdp import FSDPModule

    return isinstance(model, FSDPModule)


def length_correlation(rewards: torch.Tensor, lengths: torch.Tensor) -> dict:
    """{"reward_length_corr": Pearson r of reward and completion length over one rollout's samples}, or {}
    when either is constant (r undefined). A rising r while reward climbs is the sign of a length hack."""
    if rewards.numel() < 2 or rewards.std() == 0 or lengths.std() == 0:
        return {}
    return {"reward_length_corr": float(torch.corrcoef(torch.stack([rewards, lengths]))[0, 1])}


class RolloutSource:
    """A BatchSource sampling from the policy. `reward_fn(samples) -> rewards` gets a rewards.interface.Sample
    per completion (see RewardFn); `advantage_fn(rewards [B], group_ids [B]) -> [B]` defaults
    to GRPO's group normalisation; `gae` instead gives PPO's per-token advantages (the model is then an
    ActorCritic); `reward_kl` puts the KL to the reference in the reward; `reference` is None (no
    ref_logprobs), "adapter" (the policy with its LoRA adapter off) or a frozen model, run as it is (give
    it the precision training computes in)."""

    def __init__(self, prompts: Sequence, tokenizer, reward_fn: RewardFn, config: RolloutConfig | None = None, *,
                 advantage_fn: AdvantageFn | None = None, reference=None, gae: GAEConfig | None = None,
                 reward_kl: RewardKL | None = None, loss_chunk_size: int = 0):
        self.rank, self.world = rank_world()
        if isinstance(reference, str) and reference != "adapter":
            raise ValueError(f"reference must be None, 'adapter' or a model, not {reference!r}")
        if gae is not None and advantage_fn is not None:
            raise ValueError("give advantage_fn (sequence advantages) or gae (per-token ones), not both")
        if reward_kl is not None and reference is None:
            raise ValueError("reward_kl needs a reference model to measure the KL against")
        self.prompts = as_prompt_records(prompts)
        self.tokenizer, self.reward_fn = tokenizer, reward_fn
        self.config = config or RolloutConfig()
        if self.config.prompts_per_step % self.world:
            raise ValueError(f"rollout.prompts_per_step ({self.config.prompts_per_step}) must divide evenly among "
                             f"the {self.world} processes")
        if self.config.backend == "vllm" and self.world > 1:
            raise ValueError("rollout.backend=vllm runs in one process; use rollout.backend=local under a launcher")
        self.advantage_fn = advantage_fn or grpo_advantages
        self.reference = reference
        self.gae, self.reward_kl = gae, reward_kl
        # train.loss_chunk_size: old and reference log-probs a chunk of positions at a time, as the loss's
        self.loss_chunk_size = loss_chunk_size
        cfg = self.config
        self.recomputes_old_logprobs = not (cfg.ppo_epochs == 1 and cfg.mini_batches == 1 and gae is None
                                            and reward_kl is None)
        self.stream = PromptStream(len(self.prompts), self.config.seed, shuffle=self.config.shuffle_prompts)
        self.buffer: list[Sample] | None = None
        self.used = 0  # optimizer steps served from the current buffer
        self.rollout_step = -1  # the step the current buffer was sampled at
        self.rollouts = 0
        self.chunks = 0  # micro-batches per pass over the buffer, the same on every process
        self.last_stats: dict = {}  # stats of the latest rollout, for logging
        self.vllm = (VLLMSampler(tokenizer, seed=cfg.seed, gpu_memory_utilization=cfg.gpu_memory_utilization,
                                 max_model_len=cfg.max_model_len) if cfg.backend == "vllm" else None)

    # ----- BatchSource -----

    @property
    def steps_per_rollout(self) -> int:
        return self.config.ppo_epochs * self.config.mini_batches

    def next_step(self, step: int, model) -> list[dict]:
        if self.buffer is None or self.used >= self.steps_per_rollout:
            self._roll_out(step, model)
        epoch, k = divmod(self.used, self.config.mini_batches)
        self.used += 1
        batches = [self._micro_batch(chunk) for chunk in self.layout(epoch)[k]]
        for batch, layout in zip(batches, self._agreed_layouts(model, batches)):
            if layout is not None:
                batch["layout"] = layout
        return batches

    def state_dict(self) -> dict:
        return {"position": self.stream.position, "used": self.used, "rollout_step": self.rollout_step,
                "rollouts": self.rollouts, "stats": dict(self.last_stats), "chunks": self.chunks,
                "buffer": None if self.buffer is None else [s.to_state() for s in self.buffer]}

    def load_state_dict(self, state: dict) -> None:
        self.stream.position = int(state["position"])
        self.used, self.rollout_step = int(state["used"]), int(state["rollout_step"])
        self.rollouts, self.last_stats = int(state["rollouts"]), dict(state["stats"])
        self.chunks = int(state.get("chunks", 0))  # 0 (a checkpoint from before): layout() counts them
        self.buffer = None if state["buffer"] is None else [Sample.from_state(s) for s in state["buffer"]]
        if self.vllm is not None:  # the model's weights come from the same checkpoint
            self.vllm.invalidate()

    def close(self) -> None:
        """Drop the vLLM engine (and its folder), if there is one."""
        if self.vllm is not None:
            self.vllm.close()

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
        chunks = shuffled_chunks(trained, self.chunks or min(len(trained), cfg.mini_batches * cfg.grad_accum),
                                 derived_seed(cfg.seed, self.rollout_step, epoch, 7))
        base, extra = divmod(len(chunks), cfg.mini_batches)
        steps, start = [], 0
        for k in range(cfg.mini_batches):
            size = base + (1 if k < extra else 0)
            steps.append(chunks[start:start + size])
            start += size
        return steps

    def _agreed_layouts(self, model, batches: list[dict]) -> list[str | None]:
        """Per micro-batch of one optimizer step, the forward layout every process takes (None in one process:
        the loss and the recompute choose "auto" on the same micro-batch alike). Each process's cheapest
        (training/forward.py) stands unless processes differ on shared_prompt, which runs two forwards where
        the others run one: then those take packed; under FSDP shared_prompt is never taken. A collective: every process calls it for the same step,
        with as many micro-batches (`chunks`); the answer depends only on the micro-batches, so the old
        log-probs' call and the loss's agree."""
        if self.world == 1:
            return [None] * len(batches)
        local = [choose_layout(model, b, target_positions(b["targets"])) for b in batches]
        if _fsdp(model):  # its backward reaches a block's weights FSDP has already resharded (see _fsdp)
            local = ["packed" if layout == "shared_prompt" else layout for layout in local]
        everyone = all_gather_objects(local)
        out = []
        for j, mine in enumerate(local):
            shared = {choices[j] == "shared_prompt" for choices in everyone}
            out.append("packed" if len(shared) > 1 and mine == "shared_prompt" else mine)
        return out

    def _micro_batch(self, chunk: list[int]) -> dict:
        comparable = self.config.top_k == 0 and self.config.top_p == 1.0  # the sampler's distribution is the loss's
        return micro_batch([self.buffer[i] for i in chunk], units=self.config.units,
                           gen_logprobs=comparable and not self.recomputes_old_logprobs)

    # ----- rollout -----

    def _roll_out(self, step: int, model) -> None:
        cfg = self.config
        if self.reference == "adapter" and not is_peft(unwrap_policy(model)):
            raise ValueError("reference='adapter' needs a LoRA (peft) policy")
        if self.gae is not None and not is_actor_critic(model):
            raise ValueError("per-token advantages (gae) need the values of an rl.value_head.ActorCritic model")
        started = time.perf_counter()
        samples: list[Sample] = []
        to_score: list[RewardSample] = []
        gen_seconds, gen_tokens = 0.0, 0
        sync = {}
        if self.vllm is not None:
            engine = self.vllm.engine(step, model)  # the policy's weights now, pushed if a step changed them
            sync = {"weight_sync_seconds": self.vllm.last_sync_seconds, "weight_pushes": self.vllm.pushes}
        per = cfg.prompts_per_step // self.world
        for attempt in range(cfg.max_resamples + 1):
            prompts = [self.prompts[i] for i in self.stream.take_share(cfg.prompts_per_step, self.rank, self.world)]
            params = cfg.sampling_params(derived_seed(cfg.seed, step, attempt))
            prompt_ids = [tokenize_prompt(self.tokenizer, p.messages) for p in prompts]  # what is sampled from
            t0 = time.perf_counter()
            if self.vllm is not None:
                completions = engine.complete_ids(prompt_ids, params)
            else:  # renders the prompts as tokenize_prompt does
                backend = LocalBackend(unwrap_policy(model), self.tokenizer, batch_size=cfg.gen_batch_size)
                completions = backend.chat([p.messages for p in prompts], params)
            gen_seconds += time.perf_counter() - t0
            # global group ids: what one process sampling every prompt of the step would number them
            group0 = attempt * cfg.prompts_per_step + self.rank * per
            for g, (prompt, ids, outs) in enumerate(zip(prompts, prompt_ids, completions, strict=True)):
                for c in outs:
                    if c.error is not None:  # e.g. a request vLLM aborted
                        raise RuntimeError(f"sampling a rollout failed: {c.error}")
                    truncated = c.finish_reason == "length"
                    samples.append(Sample(ids, list(c.token_ids), c.text, group0 + g, truncated,
                                          gen_logprobs=list(c.logprobs) if c.logprobs is not None else None,
                                          trained=not (truncated and cfg.truncated == "mask")))
                    to_score.append(RewardSample(prompt.messages, c.text, prompt.metadata, len(c.token_ids)))
                    gen_tokens += len(c.token_ids)
            # every process resamples while any one lacks samples (they walk one prompt stream)
            if not all_sum(float(sum(s.trained for s in samples) < cfg.mini_batches)):
                break
        else:
            raise RuntimeError(f"with truncated=mask, {len(samples)} samples in {cfg.max_resamples + 1} rollouts "
                               f"left fewer than mini_batches={cfg.mini_batches} untruncated; raise max_tokens "
                               "or use truncated=keep or penalty")
        self._score(samples, to_score)
        self.buffer, self.used, self.rollout_step = samples, 0, step
        self.rollouts += 1
        # micro-batches per pass: the fewest any process can fill, so every process runs as many
        fill = min(sum(s.trained for s in samples), cfg.mini_batches * cfg.grad_accum)
        self.chunks = min(all_gather_objects(fill))
        t0 = time.perf_counter()
        self._compute_logprobs(model)
        logprob_seconds = time.perf_counter() - t0
        kl_stats = assign_advantages(self.buffer, units=self.config.units,
                                     advantage_fn=None if self.gae is not None else self.advantage_fn,
                                     gae=self.gae, reward_kl=self.reward_kl)
        self._record_stats(gen_seconds, gen_tokens, logprob_seconds, time.perf_counter() - started,
                           {**kl_stats, **sync})

    def _score(self, samples: list[Sample], to_score: list[RewardSample]) -> None:
        rewards = [float(r) for r in self.reward_fn(to_score)]
        if len(rewards) != len(samples):
            raise ValueError(f"reward_fn returned {len(rewards)} rewards for {len(samples)} samples")
        if not all(math.isfinite(r) for r in rewards):
            raise ValueError("reward_fn returned a reward that is not finite")
        for s, r in zip(samples, rewards):
            s.reward = self.config.truncation_reward if s.truncated and self.config.truncated == "penalty" else r

    def _scoring_chunks(self) -> list[list[list[int]]]:
        """The first pass's micro-batches, per optimizer step; with the KL in the reward, then also the samples
        no loss sees (truncated=mask), cut alike, as one more group, since their KL enters their group's
        baseline."""
        steps = self.layout(0)
        if self.reward_kl is not None:
            left = [i for i, s in enumerate(self.buffer) if not s.trained]
            size = max(len(c) for chunks in steps for c in chunks)
            if left:
                steps = [*steps, [left[k:k + size] for k in range(0, len(left), size)]]
        return steps

    def _compute_logprobs(self, model) -> None:
        """Old (and reference) log-probs, and PPO's old values, in the first pass's micro-batches and layouts,
        where the loss will first see them: the first update compares each number with itself."""
        temperature = loss_temperature(self.config.temperature)
        served = self.config.mini_batches
        for index, chunks in enumerate(self._scoring_chunks()):
            batches = [micro_batch([self.buffer[i] for i in chunk], units=self.config.units) for chunk in chunks]
            # the loss's layouts for the served steps (a collective, as next_step's); the samples no loss sees
            # (only this process has them) take their own
            layouts = (self._agreed_layouts(model, batches) if index < served else
                       [choose_layout(model, b, target_positions(b["targets"])) for b in batches])
            for chunk, batch, layout in zip(chunks, batches, layouts):
                self._score_chunk(model, [self.buffer[i] for i in chunk], batch, layout or "auto", temperature)

    def _score_chunk(self, model, samples: list[Sample], batch: dict, layout: str, temperature: float) -> None:
        if self.recomputes_old_logprobs:
            self._old_logprobs(model, batch, samples, temperature, layout)
        if self.reference is not None:
            ref = unwrap_policy(model) if self.reference == "adapter" else self.reference
            # the policy's layout, so that the same weights give the same numbers (a KL of exactly 0)
            if layout == "auto":
                layout = choose_layout(model, batch, target_positions(batch["targets"]))
            with reference_mode(ref):  # eval, no_grad and, for a peft model, its adapter off
                scatter_tokens(samples, completion_logprobs(ref, batch, temperature, layout=layout,
                                                            chunk=self.loss_chunk_size), "ref_logprobs")

    def _old_logprobs(self, model, batch: dict, samples: list[Sample], temperature: float,
                      layout: str = "auto") -> None:
        with _scoring(model):
            scores = completion_scores(model, batch, temperature, values=self.gae is not None, layout=layout,
                                       chunk=self.loss_chunk_size)
            scatter_tokens(samples, scores.logprobs, "old_logprobs")
            if scores.values is not None:
                scatter_tokens(samples, scores.values, "old_values")

    def _record_stats(self, gen_seconds: float, gen_tokens: int, logprob_seconds: float, seconds: float,
                      extra: dict) -> None:
        """The rollout's statistics over every process's samples (gathered in rank order: one process's order
        for the same prompts), so the log is that of one process; the timings and speeds are this process's."""
        cfg = self.config
        gaps = []
        if cfg.top_k == 0 and cfg.top_p == 1.0:
            gaps = [float((s.old_logprobs - torch.tensor(s.gen_logprobs)).abs().max())
                    for s in self.buffer if s.trained and s.gen_logprobs and s.old_logprobs is not None]
        mine = [(s.reward, len(s.completion_ids), s.truncated, s.trained) for s in self.buffer]
        parts = all_gather_objects((mine, gaps))
        every = [row for rows, _ in parts for row in rows]
        gaps = [gap for _, rank_gaps in parts for gap in rank_gaps]
        rewards = torch.tensor([r[0] for r in every], dtype=torch.float64)
        lengths = torch.tensor([r[1] for r in every], dtype=torch.float64)
        stats = {"rollout": self.rollouts, "rollout_step": self.rollout_step, "samples": len(every),
                 "trained_samples": sum(r[3] for r in every),
                 "reward_mean": float(rewards.mean()), "reward_std": float(rewards.std(unbiased=False)),
                 "completion_len_mean": float(lengths.mean()),
                 **length_correlation(rewards, lengths),
                 "truncated_rate": sum(r[2] for r in every) / len(every),
                 "gen_seconds": gen_seconds, "gen_tokens_per_s": gen_tokens / max(gen_seconds, 1e-9),
                 "logprob_seconds": logprob_seconds, "rollout_seconds": seconds, **extra}
        if gaps:
            stats["sampler_logprob_gap"] = max(gaps)
        self.last_stats = stats
