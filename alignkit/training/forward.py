"""The packed forward pass every objective uses.

`use_cache=False` is not optional here: with a KV cache object present, transformers skips the
detection of packed sequences from position ids and lets tokens attend across sequence
boundaries, silently.
"""
from __future__ import annotations

import torch


def packed_logits(model, batch: dict, keep: torch.Tensor | None = None) -> torch.Tensor:
    """Logits [K, V] at the flat positions `keep` of a packed batch (all positions when None)."""
    out = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"],
                logits_to_keep=keep if keep is not None else 0, use_cache=False)
    return out.logits[0]
