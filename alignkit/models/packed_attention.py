"""Attention within each sequence of a packed row, never across the whole row.

transformers reads the restarts of the position ids of a packed row and, with SDPA (as on CPUs),
builds a dense block-diagonal mask over the whole row: every layer then computes (row length)^2
attention scores and throws most of them away, and the masked kernel is slower than the causal one.
A row of eight 250-token sequences costs 64 times one sequence's attention instead of 8 times.

`packed_attention(model, position_ids)` switches the model, for one forward, to an attention function
registered with transformers under `ATTENTION`: no mask is built (transformers builds none for an
attention it has no mask function for), and each layer runs causal SDPA on every sequence's own
slice of the queries, keys and values. Same numbers as the masked row up to float rounding; the
sequence bounds travel as `cu_seq_lens_q`, the keyword transformers passes to its own varlen
(flash-attention) kernels.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch
import torch.nn.functional as F
from transformers import AttentionInterface

ATTENTION = "alignkit_packed"


def sequence_attention(module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, attention_mask,
                       dropout: float = 0.0, scaling: float | None = None, **kwargs) -> tuple[torch.Tensor, None]:
    """Causal attention of each sequence of a one-row batch on its own: query [1, H, T, D], key and value
    [1, H_kv, T, D], the sequences' boundaries in `cu_seq_lens_q` ([S + 1] offsets from 0 to T).
    Returns ([1, T, H, D], None), as transformers' attention functions do."""
    bounds = kwargs.get("cu_seq_lens_q")
    if bounds is None or attention_mask is not None or query.shape[0] != 1 or key.shape[2] != query.shape[2]:
        raise ValueError("packed attention runs one packed row without a mask or cache, given cu_seq_lens_q")
    gqa = query.shape[1] != key.shape[1]
    edges = bounds.tolist()
    parts = [F.scaled_dot_product_attention(query[:, :, s:e], key[:, :, s:e], value[:, :, s:e], is_causal=True,
                                            dropout_p=dropout, scale=scaling, enable_gqa=gqa)
             for s, e in zip(edges[:-1], edges[1:])]
    out = parts[0] if len(parts) == 1 else torch.cat(parts, dim=2)
    return out.transpose(1, 2).contiguous(), None


AttentionInterface.register(ATTENTION, sequence_attention)


def sequence_offsets(position_ids: torch.Tensor) -> torch.Tensor:
    """[S + 1] offsets of the sequences of a packed row (each starts where its position id is 0)."""
    flat = position_ids.reshape(-1)
    starts = torch.nonzero(flat == 0).flatten()
    if starts.numel() == 0 or int(starts[0]) != 0:
        raise ValueError("a packed row must start with position id 0")
    return torch.cat([starts, starts.new_tensor([flat.numel()])]).to(torch.int32)


def model_config(model):
    """The transformers config of `model`, or of the model inside a DDP wrapper."""
    inner = model
    while not hasattr(inner, "config") and hasattr(inner, "module"):  # DDP
        inner = inner.module
    return inner.config


@contextmanager
def packed_attention(model, position_ids: torch.Tensor) -> Iterator[dict]:
    """While inside, `model` attends within the sequences of the packed row whose position ids are given;
    yields the keyword arguments to pass to its forward. A model whose attention is not SDPA (eager, flex,
    flash kernels) is left as it is, with nothing to pass: those find the sequences themselves, or were
    asked for on purpose."""
    config = model_config(model)
    current = getattr(config, "_attn_implementation", None)
    if current != "sdpa":
        yield {}
        return
    config._attn_implementation = ATTENTION
    try:
        yield {"cu_seq_lens_q": sequence_offsets(position_ids).to(position_ids.device)}
    finally:
        config._attn_implementation = current
