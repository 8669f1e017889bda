"""The one training loop. Every objective (SFT, DPO, reward models, RL) plugs in as an `Objective`,
and what it trains on comes from a `BatchSource` (batch_source.py): a fixed set of examples, or
rollouts generated with the current policy.

An objective turns a list of examples into a batch (`collate`) and a batch into a *summed* loss
over its units (target tokens for SFT, pairs for DPO) plus summed metrics. The loop takes the
micro-batches of one optimizer step from the source, counts their units (across processes too), and
divides every micro-batch loss by that total, so gradient accumulation and data parallelism equal one
big batch exactly.

With several processes the model is replicated (DDP, train.parallel=ddp) or sharded (FSDP2,
train.parallel=fsdp: fsdp.py); either way the numbers are those of one process taking the whole batch.
"""
from __future__ import annotations

import math
from contextlib import nullcontext
import os
import random
import time
from dataclasses import dataclass, field
from typing import Callable, Protocol, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from alignkit.training.batch_source import BatchSource, ExampleSource
from alignkit.training.checkpoint import (SavedCheckpoint, load_checkpoint, read_checkpoint, read_latest_checkpoint,
                                          remove_partial_checkpoints, save_checkpoint)
from alignkit.training.config import TrainConfig
from alignkit.training.distributed import all_sum, on_main, rank_world, wrap
from alignkit.training.fsdp import Sharded, full_value, gather_full, gather_optimizer_state, is_sharded, shard
from alignkit.training.memory import release_freed_tensors
from alignkit.training.precision import MasterWeights, model_device, resolve_precision
from alignkit.training.schedule import make_scheduler
from alignkit.training.tracking import MetricsLogger


class Objective(Protocol):
    """What a training method supplies: `collate` and `loss`.

    Optional, for an objective with state of its own (an adaptive KL coefficient, running reward
    statistics): `after_step(record)` is called after every optimizer step with the step's logged record
    (all-reduced, so the same on every process), and `state_dict()` / `load_state_dict(state)` keep that
    state in checkpoints (saved from rank 0 with torch.save, loaded on every process), so a resumed run
    continues exactly. `lr_scale(param_name) -> float` gives a parameter a learning rate of its own, as a
    multiple of cfg.lr (PPO's freshly initialised value head learns faster than the policy)."""

    def collate(self, examples: Sequence) -> dict:
        """A batch dict holding at least `num_units` and `num_tokens` (non-pad tokens)."""
        ...

    def loss(self, model, batch: dict) -> tuple[torch.Tensor, dict[str, float]]:
        """(loss summed over the batch's units, metrics summed over units)."""
        ...


@dataclass
class TrainResult:
    history: list[dict] = field(default_factory=list)
    eval_history: list[dict] = field(default_factory=list)
    steps: int = 0
    tokens: int = 0
    seconds: float = 0.0


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _fused_ok(params) -> bool:
    return all(p.dtype in (torch.float32, torch.bfloat16, torch.float16) and p.device.type in ("cpu", "cuda")
               for p in params)


def train(model, objective: Objective, train_examples: Sequence | None = None, cfg: TrainConfig | None = None, *,
          source: BatchSource | None = None, eval_examples: Sequence = (), config_dict: dict | None = None,
          on_step: Callable[[int, dict], None] | None = None) -> TrainResult:
    """Train `model` in place; returns the logged history.

    The data is either `train_examples`, visited in seeded epochs of cfg.batch_size x cfg.grad_accum per
    step (an ExampleSource), or any `source`; a source makes its own micro-batches, so cfg.batch_size,
    grad_accum and shuffle do not apply to it."""
    if cfg is None:
        raise TypeError("train() needs cfg, the TrainConfig")
    if (train_examples is None) == (source is None):
        raise TypeError("train() takes either train_examples or source, not both or neither")
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    release_freed_tensors()
    rank, world = rank_world()
    seed_everything(cfg.seed)
    if source is None:
        source = ExampleSource(train_examples, objective.collate, batch_size=cfg.batch_size,
                               grad_accum=cfg.grad_accum, seed=cfg.seed, shuffle=cfg.shuffle)
    total_steps = cfg.max_steps or _steps_for_epochs(source, cfg.epochs)
    warmup = cfg.warmup_steps or int(cfg.warmup_ratio * total_steps)

    precision = resolve_precision(cfg.precision, model_device(model))
    named_params = list(model.named_parameters())
    sharded = None
    if world > 1 and cfg.parallel == "fsdp":
        # Before sharding: the twin FSDP trains is a copy of the module tree as it is now.
        _activation_checkpointing(model, cfg)
        sharded = shard(model, mixed_precision=precision == "bf16",
                        reshard_after_forward=cfg.fsdp_reshard_after_forward)
    # Under bf16 FSDP keeps fp32 shards and computes in bf16 itself (fsdp.py), in place of the master copies.
    masters = MasterWeights(model, hook_grads=world == 1) if precision == "bf16" and sharded is None else None
    if sharded is not None:
        weights = {n: sharded.counterpart(p) for n, p in named_params if p.requires_grad}
    elif masters is not None:
        named = {id(p): n for n, p in named_params}
        weights = {named[id(p)]: m for p, m in masters.pairs}
    else:
        weights = {n: p for n, p in named_params if p.requires_grad}
    if not weights:
        raise ValueError("the model has no trainable parameters")
    params = list(weights.values())
    optimizer = torch.optim.AdamW(_param_groups(weights, cfg, getattr(objective, "lr_scale", None)), lr=cfg.lr,
                                  betas=tuple(cfg.adam_betas), eps=cfg.adam_eps, fused=_fused_ok(params))
    scheduler = make_scheduler(optimizer, total=total_steps, warmup=warmup, kind=cfg.schedule,
                               min_ratio=cfg.min_lr_ratio)

    step, tokens_done = 0, 0
    # Rank 0 tidies the checkpoints; the others wait, so none reads one that is being removed.
    on_main(lambda: remove_partial_checkpoints(cfg.output_dir))
    checkpoint = _resume_point(cfg)
    if checkpoint is not None:
        state = load_checkpoint(checkpoint, weights=weights, optimizer=optimizer, scheduler=scheduler)
        source.load_state_dict(checkpoint.loop_state["source"])
        if checkpoint.loop_state["objective"] is not None and hasattr(objective, "load_state_dict"):
            objective.load_state_dict(checkpoint.loop_state["objective"])
        checkpoint = None  # its tensors, held for the whole run, would double the weights' and optimizer's memory
        if masters is not None:
            masters.push()
        step, tokens_done = state["step"], state["tokens"]

    if sharded is None:
        _activation_checkpointing(model, cfg)
    # What runs: the sharded twin under FSDP (the caller's model gets its weights back at the end), else the
    # model itself, wrapped in DDP with several processes.
    net = sharded.module if sharded is not None else model
    train_model = sharded.module if sharded is not None else wrap(model)

    logger = MetricsLogger(cfg.output_dir, cfg.report_to, config_dict, enabled=rank == 0, start_step=step)
    result = TrainResult(steps=step, tokens=tokens_done)
    bar = tqdm(total=total_steps, initial=step, disable=not cfg.progress or rank != 0,
               desc="train", unit="step", dynamic_ncols=True)
    start_time = time.perf_counter()
    window_tokens, window_start = 0, time.perf_counter()
    net.train()
    finished = False
    try:
        while step < total_steps:
            micro = _next_micro_batches(source, step, net, sharded)
            if not micro:
                raise ValueError(f"the batch source gave no micro-batches for step {step + 1}")
            net.train()  # a source that generates may have switched it to eval mode
            units = all_sum(sum(b["num_units"] for b in micro))
            sums: dict[str, float] = {}
            step_tokens = 0
            for k, batch in enumerate(micro):
                sync_now = k == len(micro) - 1 or world == 1
                if sharded is not None:
                    sharded.sync_gradients(sync_now)
                    ctx = nullcontext()
                else:
                    ctx = train_model.no_sync() if not sync_now else nullcontext()
                with ctx:
                    loss_sum, metrics = objective.loss(train_model, batch)
                # DDP and FSDP average gradients over processes; scaling by world undoes that so the
                # result is sum / global units.
                (loss_sum * world / max(units, 1)).backward()
                for key, value in {"loss": float(loss_sum.detach()), **metrics}.items():
                    sums[key] = sums.get(key, 0.0) + float(value)
                step_tokens += int(batch["num_tokens"])
            if masters is not None:
                masters.collect_grads()
            grad_norm = _clip_gradients(params, cfg.max_grad_norm)
            optimizer.step()
            scheduler.step()
            if masters is not None:
                masters.push()
                masters.zero_grad()
            else:
                optimizer.zero_grad(set_to_none=True)
            step += 1
            step_tokens = int(all_sum(step_tokens))
            tokens_done += step_tokens
            window_tokens += step_tokens

            record = {k: all_sum(v) / max(units, 1) for k, v in sums.items()}
            now = time.perf_counter()
            record.update(step=step, lr=scheduler.get_last_lr()[0], grad_norm=float(grad_norm),
                          units=units, tokens=tokens_done, epoch=source.epoch(),
                          tokens_per_s=window_tokens / max(now - window_start, 1e-9))
            result.history.append(record)
            if hasattr(objective, "after_step"):
                objective.after_step(record)
            if step % cfg.log_every == 0 or step == total_steps:
                logger.log(record)
                window_tokens, window_start = 0, now
            bar.set_postfix(loss=f"{record['loss']:.4f}", tok_s=f"{record['tokens_per_s']:.0f}")
            bar.update(1)

            if eval_examples and ((cfg.eval_every and step % cfg.eval_every == 0) or step == total_steps):
                ev = evaluate(train_model, objective, eval_examples, cfg)
                ev["step"] = step
                result.eval_history.append(ev)
                logger.log(ev)
                net.train()
            if cfg.save_every and step % cfg.save_every == 0 and step < total_steps:
                _save(cfg, step, weights, optimizer, scheduler, {"tokens": tokens_done},
                      _loop_state(source, objective) if rank == 0 else None, sharded is not None)
            if on_step:
                on_step(step, record)
        finished = True
    finally:
        bar.close()
        logger.close()
        if masters is not None:
            masters.restore_fp32()
        if sharded is not None and finished:
            # A collective: after a failure the other processes may never get here, so the caller's
            # model is left without weights then (the run stops with the error anyway).
            sharded.give_back()
    model.eval()
    result.steps, result.tokens = step, tokens_done
    result.seconds = time.perf_counter() - start_time
    return result


def _activation_checkpointing(model, cfg: TrainConfig) -> None:
    if cfg.activation_checkpointing:
        from alignkit.training.memory import enable_activation_checkpointing

        enable_activation_checkpointing(model)


def _next_micro_batches(source: BatchSource, step: int, model, sharded: Sharded | None) -> list[dict]:
    """The source's micro-batches for `step`. Under FSDP a source other than fixed examples may generate with
    the model, running as many forwards as its own samples need: the weights are gathered whole for it."""
    if sharded is None or isinstance(source, ExampleSource):
        return source.next_step(step, model)
    with sharded.gathered():
        return source.next_step(step, model)


def _clip_gradients(params: list, max_norm: float) -> torch.Tensor:
    """Clip to `max_norm` (0: no clipping) and return the norm of all gradients before clipping. Over FSDP's
    sharded gradients the norm is that of the whole model, the same on every process."""
    if max_norm > 0:
        return full_value(torch.nn.utils.clip_grad_norm_(params, max_norm))
    grads = [p.grad for p in params if p.grad is not None]
    if any(is_sharded(g) for g in grads):
        return full_value(torch.nn.utils.get_total_norm(grads))
    return torch.norm(torch.stack([g.norm() for g in grads]))


def _save(cfg: TrainConfig, step: int, weights: dict, optimizer, scheduler, state: dict, loop_state: dict | None,
          sharded: bool) -> None:
    """A checkpoint, written by rank 0. Under FSDP every process first takes part in gathering the full
    weights and optimizer state to rank 0."""
    if sharded:
        weights, optimizer_state = gather_full(weights), gather_optimizer_state(optimizer)
    else:
        optimizer_state = optimizer.state_dict() if rank_world()[0] == 0 else None
    if rank_world()[0] == 0:
        save_checkpoint(cfg.output_dir, step, weights=weights, optimizer_state=optimizer_state, scheduler=scheduler,
                        state=state, loop_state=loop_state, keep=cfg.save_total_limit)


@torch.no_grad()
def evaluate(model, objective: Objective, examples: Sequence, cfg: TrainConfig) -> dict:
    """Held-out metrics: every summed quantity divided by the total units."""
    model.eval()
    sums: dict[str, float] = {}
    units = 0.0
    rank, world = rank_world()
    size = cfg.batch_size
    # Every process runs the same number of forwards (under FSDP each one is collective): one whose share of
    # the examples ran out runs the first batch again and drops its numbers.
    rounds = math.ceil(len(examples) / (size * world))
    for r in range(rounds):
        start = (r * world + rank) * size
        batch = objective.collate(examples[start:start + size] if start < len(examples) else examples[:size])
        loss_sum, metrics = objective.loss(model, batch)
        if start >= len(examples):
            continue
        units += batch["num_units"]
        for key, value in {"loss": float(loss_sum), **metrics}.items():
            sums[key] = sums.get(key, 0.0) + float(value)
    units = all_sum(units)
    return {f"eval_{k}": all_sum(v) / max(units, 1) for k, v in sums.items()}


def chain_on_step(*callbacks: Callable[[int, dict], None] | None) -> Callable[[int, dict], None]:
    """One `on_step` for train() that calls each given callback in turn (None ones skipped)."""
    def on_step(step: int, record: dict) -> None:
        for callback in callbacks:
            if callback is not None:
                callback(step, record)
    return on_step


def _param_groups(weights: dict, cfg: TrainConfig, lr_scale) -> list[dict]:
    """AdamW groups: no weight decay for vectors (norms, biases), and one group per learning-rate scale.
    The first group is always the policy's own (cfg.lr), whose rate the log reports."""
    groups: dict[tuple[bool, float], list] = {(True, 1.0): [], (False, 1.0): []}
    for name, p in weights.items():
        scale = float(lr_scale(name)) if lr_scale is not None else 1.0
        groups.setdefault((p.ndim >= 2, scale), []).append(p)
    return [{"params": ps, "weight_decay": cfg.weight_decay if decay else 0.0, "lr": cfg.lr * scale}
            for (decay, scale), ps in groups.items() if ps or scale == 1.0]


def _steps_for_epochs(source: BatchSource, epochs: float) -> int:
    per_epoch = source.steps_per_epoch()
    if per_epoch is None:
        raise ValueError("this batch source has no epochs: set train.max_steps")
    return max(1, math.ceil(epochs * per_epoch))


def _loop_state(source: BatchSource, objective: Objective) -> dict:
    """What a checkpoint keeps of the source and objective, for an exact resume."""
    return {"source": source.state_dict(),
            "objective": objective.state_dict() if hasattr(objective, "state_dict") else None}


def _resume_point(cfg: TrainConfig) -> SavedCheckpoint | None:
    """The checkpoint to continue from, read whole: with resume=auto a damaged latest one falls back to an
    earlier one; a folder the user named must be usable, else the run stops with a DamagedCheckpoint."""
    if cfg.resume == "none":
        return None
    if cfg.resume == "auto":
        return read_latest_checkpoint(cfg.output_dir)
    if not os.path.isdir(cfg.resume):
        raise FileNotFoundError(f"resume checkpoint not found: {cfg.resume}")
    return read_checkpoint(cfg.resume)

