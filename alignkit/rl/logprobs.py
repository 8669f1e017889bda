"""Per-token log-probs of completion tokens, as the RL losses and the rollout source both compute them.

One function turns logits into the log-probs of the sampled tokens, with the sampling temperature
applied as `logits / T`: the rollout source uses it to recompute the old policy's (and the reference's)
log-probs, and a loss uses it for the current policy's, so the importance ratio compares like with like.
Top-k / top-p are not applied here: they only cut the tail the sampler could draw from, and a training
forward scores the full tempered distribution (a ratio against a truncated distribution would change
as the filter's cut moves).

Greedy decoding (temperature 0) samples from no distribution; its log-probs are those of the model's
own distribution, temperature 1, as `Completion.logprobs` reports them too (`loss_temperature`).

`completion_outputs` is the forward under both: the logits at the completion positions and, from an
`rl.value_head.ActorCritic`, the value estimates at the same positions, so the rollout source's old
values and a loss's current ones come from one and the same computation. `completion_scores` turns that
forward into log-probs, values and entropy, optionally (train.loss_chunk_size) without ever holding the
whole [N, vocabulary] logits (training/chunked_logprobs.py).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from alignkit.data.packing import target_positions
from alignkit.rl.losses import entropy_from_logprobs
from alignkit.training.chunked_logprobs import chunked_scores
from alignkit.training.forward import packed_forward


def loss_temperature(sampling_temperature: float) -> float:
    """The temperature the log-probs are computed at: the sampling one, or 1 for greedy decoding."""
    return float(sampling_temperature) if sampling_temperature > 0 else 1.0


def tempered_log_softmax(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """log softmax(logits / T) over the vocabulary, float32 whatever the logits' dtype (bf16 logits lose
    nothing more in the softmax): [..., V] -> [..., V]. The RL loss reads both the sampled tokens'
    log-probs and the entropy off this one tensor."""
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0 here (use loss_temperature for greedy), got {temperature}")
    scaled = logits.float()
    if temperature != 1.0:
        scaled = scaled / temperature
    return torch.log_softmax(scaled, dim=-1)


def token_logprobs(log_probs: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """The entries of `log_probs` [..., V] at `tokens` [...] (negative ids, i.e. ignored positions, read id 0)."""
    return log_probs.gather(-1, tokens.clamp(min=0).unsqueeze(-1)).squeeze(-1)


def tempered_token_logprobs(logits: torch.Tensor, tokens: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """log softmax(logits / T)[token] at every position: logits [..., V], tokens [...] -> float32 [...]."""
    return token_logprobs(tempered_log_softmax(logits, temperature), tokens)


def completion_outputs(model, batch: dict, *, values: bool = False, layout: str = "auto"
                       ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """(logits [N, V], completion tokens [N], values [N] float32 or None) of an RL micro-batch at its target
    positions, in order, from one packed forward of `model` (in `layout`, training/forward.py); `values`
    needs an ActorCritic (or a wrapper of one). Differentiable unless called under no_grad."""
    keep = target_positions(batch["targets"])
    device = next(iter(model.parameters())).device
    on_device = {k: (v.to(device) if torch.is_tensor(v) else v) for k, v in batch.items()
                 if k in ("input_ids", "position_ids")}
    out = packed_forward(model, on_device, keep.to(device), layout=layout,
                         **({"return_values": True} if values else {}))
    logits = out.logits[0]
    tokens = batch["targets"][0, keep].to(logits.device)
    return logits, tokens, out.values[0] if values else None


@dataclass
class CompletionScores:
    logprobs: torch.Tensor  # float32 [N]: log softmax(logits / T) at the completion tokens
    tokens: torch.Tensor  # [N] the completion tokens
    values: torch.Tensor | None = None  # float32 [N] from an ActorCritic, when asked for
    entropy: torch.Tensor | None = None  # float32 [N] of softmax(logits / T), when asked for


def completion_scores(model, batch: dict, temperature: float = 1.0, *, values: bool = False,
                      entropy: bool = False, entropy_grad: bool = False, layout: str = "auto",
                      chunk: int = 0) -> CompletionScores:
    """The tempered log-probs of an RL micro-batch's completion tokens (and the values, and the entropy, when
    asked for) from one packed forward of `model`. `chunk` > 0 (train.loss_chunk_size) runs the output layer
    and the log-softmax that many positions at a time (training/chunked_logprobs.py) for a model whose head
    can be split, the full logits at once otherwise. The entropy keeps its graph only with `entropy_grad` (an
    entropy bonus). Differentiable unless called under no_grad."""
    if chunk:
        keep = target_positions(batch["targets"])
        device = next(iter(model.parameters())).device
        on_device = {k: batch[k].to(device) for k in ("input_ids", "position_ids")}
        tokens = batch["targets"][0, keep].to(device)
        scores = chunked_scores(model, on_device, keep.to(device), tokens, chunk=chunk, temperature=temperature,
                                entropy=entropy, layout=layout, **({"return_values": True} if values else {}))
        if scores is not None:
            ent = scores.entropy if entropy_grad or scores.entropy is None else scores.entropy.detach()
            return CompletionScores(scores.logprobs, tokens, scores.values, ent)
    logits, tokens, vals = completion_outputs(model, batch, values=values, layout=layout)
    log_probs = tempered_log_softmax(logits, temperature)
    del logits  # the log-softmax holds all that is needed; the bf16 logits can go
    ent = None
    if entropy:
        ent = entropy_from_logprobs(log_probs if entropy_grad else log_probs.detach())
    return CompletionScores(token_logprobs(log_probs, tokens), tokens, vals, ent)


def completion_logprobs(model, batch: dict, temperature: float = 1.0, *, layout: str = "auto",
                        chunk: int = 0) -> torch.Tensor:
    """float32 [N] log-probs of the completion tokens of an RL micro-batch (its target positions, in
    order), from one packed forward of `model` (`chunk`: see completion_scores); differentiable unless
    called under no_grad."""
    if chunk:
        return completion_scores(model, batch, temperature, layout=layout, chunk=chunk).logprobs
    logits, tokens, _ = completion_outputs(model, batch, layout=layout)
    return tempered_token_logprobs(logits, tokens, temperature)
