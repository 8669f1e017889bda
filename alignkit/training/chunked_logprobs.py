"""log p(target) at the target positions of a packed row without the full logits tensor.

A forward pass over a large packed row (the reference pass runs thousands of target tokens at once)
would hold [targets, vocabulary] logits, twice over once cast to float32 for the log-softmax: 28,000
targets of a 49k vocabulary are 5.5 GB in float32. Here the transformer runs once to its final hidden
states, and the output layer, log-softmax and gather run over `chunk` positions at a time, so at most
[chunk, vocabulary] logits exist. Forward only (no graph is kept), for models whose logits are their
output layer applied to the last hidden state; `head_and_body` says which those are.
"""
from __future__ import annotations

import torch

from alignkit.models.lora import is_peft
from alignkit.models.packed_attention import packed_attention


def head_and_body(model):
    """(the transformer without its output layer, the output layer), or None for a model whose logits are
    more than a linear output layer (soft-capped or scaled logits) or that is not a plain causal LM."""
    inner = model
    while hasattr(inner, "module") and not hasattr(inner, "config"):  # DDP
        inner = inner.module
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
    return body, head


@torch.no_grad()
def target_logprobs(model, batch: dict, keep: torch.Tensor, targets: torch.Tensor, *,
                    chunk: int = 1024) -> torch.Tensor | None:
    """log p(targets[k]) at flat positions keep[k] of the packed row, as float32 [K]; None when the model is
    not one `head_and_body` splits (the caller then takes the plain path)."""
    parts = head_and_body(model)
    if parts is None:
        return None
    body, head = parts
    position_ids = batch["position_ids"]
    with packed_attention(model, position_ids) as within_sequences:
        hidden = body(input_ids=batch["input_ids"], position_ids=position_ids, use_cache=False,
                      **within_sequences).last_hidden_state[0]
    hidden = hidden[keep.to(hidden.device)]
    targets = targets.to(hidden.device)
    out = torch.empty(keep.numel(), dtype=torch.float32, device=hidden.device)
    for start in range(0, keep.numel(), chunk):
        logits = head(hidden[start:start + chunk]).float()
        out[start:start + chunk] = torch.log_softmax(logits, dim=-1).gather(
            -1, targets[start:start + chunk, None]).squeeze(-1)
    return out
