"""The KV cache of a batch's distinct prompts, one copy per sequence that continues it.

Sampling several completions of one prompt (generation/local.py) and training on them
(training/forward.py's shared_prompt layout) both run each distinct prompt once and give every
sequence its prompt's cache. The copy is an index into the cache, so under autograd the gradients
of the sequences sharing a prompt flow back and sum into the prompt's one forward.
"""
from __future__ import annotations

import torch


def shared_prompt_cache(model, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, index: torch.Tensor):
    """The cache of `prompt_ids` [U, P] (left-padded: every prompt ends in the last column; `prompt_mask`
    marks the real tokens) with row `index[s]` as row s, for S sequences; None for a model whose cache
    cannot be indexed by row. Positions count real tokens only, as generate gives left-padded rows."""
    positions = (prompt_mask.cumsum(-1) - 1).clamp(min=0)
    # Only the last column's logits (none are used); a model that does not say it takes logits_to_keep
    # (transformers' generation mixin says so) computes them all.
    only_last = {"logits_to_keep": 1} if getattr(model, "_supports_logits_to_keep", lambda: False)() else {}
    cache = model(input_ids=prompt_ids, attention_mask=prompt_mask, position_ids=positions, use_cache=True,
                  **only_last).past_key_values
    if not hasattr(cache, "batch_select_indices"):
        return None
    cache.batch_select_indices(index.to(prompt_ids.device))
    return cache
