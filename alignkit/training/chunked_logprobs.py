"""log p(target) at the target positions of a packed row without the full logits tensor, with or without gradients.

Every objective needs, at its target positions, log softmax(logits / T)[target] (and RL the entropy of that
distribution). Taken from the full logits, a row of K target positions holds [K, vocabulary] logits, a float32
log-softmax of the same size, and in backward their gradients: 4,096 positions of a 49k vocabulary are 0.8 GB
each. Here the transformer runs once to its final hidden states at the kept positions (the model's own forward,
in any layout of training/forward.py, with its output layer set aside), and the output layer, the (tempered)
log-softmax, the gather and the entropy run over `chunk` positions at a time. With gradients each chunk runs
under activation checkpointing (torch.utils.checkpoint, non-reentrant): its [chunk, vocabulary] tensors are
dropped after its forward and recomputed in its backward, so neither pass holds more than one chunk's. The
price is the output layer's forward run twice.

This works for models whose logits are their output layer applied to the last hidden state (`head_and_body`
says which); `chunked_scores` returns None for any other (soft-capped or scaled logits, a LoRA-wrapped head)
and the caller takes the plain path: the full logits at once.
"""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial

import torch
from torch.utils.checkpoint import checkpoint

from alignkit.models.lora import is_peft


def _split(model):
    """(the causal LM inside wrappers, its transformer, its output layer), or None (see head_and_body)."""
    inner = model
    while hasattr(inner, "module") and not hasattr(inner, "config"):  # DDP
        inner = inner.module
    inner = getattr(inner, "policy", inner)  # rl.value_head.ActorCritic: the policy's head gives the logits
    if is_peft(inner):
        inner = inner.get_base_model()
    config = getattr(inner, "config", None)
    if config is None or getattr(config, "final_logit_softcapping", None) or getattr(config, "logit_scale", None):
        return None
    body = getattr(inner, getattr(inner, "base_model_prefix", ""), None)
    get_head = getattr(inner, "get_output_embeddings", None)
    head = get_head() if get_head else None
    if body is None or body is inner or type(head) is not torch.nn.Linear:  # not a LoRA-wrapped head either
        return None
    return inner, body, head


def head_and_body(model):
    """(the transformer without its output layer, the output layer), or None for a model whose logits are
    more than a linear output layer (soft-capped or scaled logits) or that is not a plain causal LM."""
    parts = _split(model)
    return None if parts is None else parts[1:]


@dataclass
class TokenScores:
    logprobs: torch.Tensor  # float32 [K]: log softmax(logits / T) at each target
    entropy: torch.Tensor | None = None  # float32 [K]: entropy of softmax(logits / T), when asked for
    values: torch.Tensor | None = None  # [K] from a model that returns values (rl.value_head.ActorCritic)


def _chunk_scores(head, hidden: torch.Tensor, targets: torch.Tensor, temperature: float, entropy: bool):
    logits = head(hidden).float()
    if temperature != 1.0:
        # in place: the output layer's backward keeps its input and weight, not this output
        logits = logits.div_(temperature)
    log_probs = torch.log_softmax(logits, dim=-1)
    del logits
    picked = log_probs.gather(-1, targets[:, None]).squeeze(-1)
    if not entropy:
        return picked
    # -sum p log p as a row-wise dot product: no [chunk, V] product tensor. Logits from a linear layer are
    # finite, so no p = 0 with log p = -inf to guard against.
    probs = log_probs.exp()
    return picked, -torch.einsum("kv,kv->k", probs, log_probs)


def chunked_token_scores(hidden: torch.Tensor, head: torch.nn.Module, targets: torch.Tensor, *, chunk: int,
                         temperature: float = 1.0, entropy: bool = False
                         ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(log softmax(head(hidden) / T)[targets], and its entropy or None), float32 [K] each, from hidden [K, H]
    and targets [K], `chunk` rows at a time; each chunk under activation checkpointing when gradients are
    being recorded, so no more than [chunk, V] logits exist in forward or backward."""
    if chunk < 1:
        raise ValueError(f"chunk must be >= 1, got {chunk}")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    targets = targets.to(hidden.device)
    run = partial(_chunk_scores, head, temperature=temperature, entropy=entropy)
    recording = torch.is_grad_enabled() and (hidden.requires_grad or any(p.requires_grad for p in head.parameters()))
    picked, entropies = [], []
    for start in range(0, hidden.shape[0], chunk):
        rows, tokens = hidden[start:start + chunk], targets[start:start + chunk]
        out = checkpoint(run, rows, tokens, use_reentrant=False) if recording else run(rows, tokens)
        if entropy:
            picked.append(out[0])
            entropies.append(out[1])
        else:
            picked.append(out)
    if not picked:  # no target: an empty result that still belongs to the graph
        empty = hidden.float().sum(-1)
        return empty, (empty if entropy else None)
    return torch.cat(picked), (torch.cat(entropies) if entropy else None)


@contextmanager
def output_layer_skipped(model) -> Iterator[torch.nn.Linear]:
    """The model's output layer replaced by the identity while inside, so that its forward (in any layout,
    through any wrapper) returns the final hidden states where it would return logits; yields that layer."""
    inner, _, head = _split(model)
    name = next(n for n, child in inner.named_children() if child is head)
    setattr(inner, name, torch.nn.Identity())
    try:
        yield head
    finally:
        setattr(inner, name, head)


def chunked_scores(model, batch: dict, keep: torch.Tensor, targets: torch.Tensor, *, chunk: int,
                   temperature: float = 1.0, entropy: bool = False, layout: str = "packed",
                   **extra) -> TokenScores | None:
    """Log-probs (tempered by `temperature`), optionally entropies, and the values a model returns with
    `extra` (return_values=True), at the flat positions `keep` of a packed batch, for `targets` [K]: one
    forward of the model in `layout` (training/forward.py) to its final hidden states, then the output layer
    `chunk` positions at a time (`chunked_token_scores`). Differentiable unless called under no_grad. None when
    `head_and_body` cannot split the model: the caller then takes the plain path."""
    from alignkit.training.forward import packed_forward

    if _split(model) is None:
        return None
    with output_layer_skipped(model) as head:
        out = packed_forward(model, batch, keep, layout=layout, **extra)
    logprobs, entropies = chunked_token_scores(out.logits[0], head, targets, chunk=chunk, temperature=temperature,
                                               entropy=entropy)
    values = out.values[0] if out.values is not None else None
    return TokenScores(logprobs, entropies, values)


@torch.no_grad()
def target_logprobs(model, batch: dict, keep: torch.Tensor, targets: torch.Tensor, *,
                    chunk: int = 1024) -> torch.Tensor | None:
    """log p(targets[k]) at flat positions keep[k] of the packed row, as float32 [K], forward only (the
    reference pass); None when the model is not one `head_and_body` splits (the caller then takes the plain
    path)."""
    scores = chunked_scores(model, batch, keep, targets, chunk=chunk)
    return None if scores is None else scores.logprobs
