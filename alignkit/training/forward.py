"""The packed forward pass every objective uses.

A batch is one packed row (data/packing.py): sequences one after the other, each with position ids
from 0. Callers ask for logits at flat positions of that row, and get them in that order whichever
way the model actually runs it:

* packed: the row as it is, each sequence attending within itself (models/packed_attention.py: left
  to itself, transformers would build a dense block-diagonal mask over the whole row and compute
  (row length)^2 attention scores, most of them thrown away).
* padded: one row per sequence, right-padded to the longest, with an attention mask: attention costs
  rows x longest^2, and the padding costs whole tokens.
* shared_prompt: sequences that begin with the same tokens before their first kept position (the n
  samples of one prompt in RL, the chosen and rejected answers of one prompt in DPO) run that prompt
  once: a forward over the distinct prompts builds their KV cache, each sequence gets its prompt's
  cache (an index into it, so gradients flow back and sum over the sequences sharing it), and a second
  forward runs the rest of every sequence on top. The same computation, so the same logits and
  gradients as the other layouts up to float rounding, for a fraction of the prompt tokens.

`layout="auto"` takes the one with the fewest estimated FLOPs (`cheaper_layout`): shared_prompt when
sequences share prompts (an RL group's samples), otherwise packed (under SDPA it never costs more
than padded; with an eager model's dense mask, padded wins when sequences are many and of similar
lengths). All give the same numbers up to float
rounding, not bit for bit. So "auto" is for numbers compared within one batch (RL's old and new
log-probs, computed on the same micro-batch: it takes the same layout both times). The default stays
"packed": a sequence's packed numbers do not depend on what else shares its row, which the preference
objectives rely on (reference log-probs cached from other batches equal the policy's at step 0).

Under activation checkpointing (training/memory.py) transformers runs checkpointed layers without a KV cache,
so the shared_prompt layout refuses to train there and "auto" never picks it.

`use_cache=False` is not optional here: with a KV cache object present, transformers skips the
detection of packed sequences from position ids and lets tokens attend across sequence
boundaries, silently.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from alignkit.models.packed_attention import model_config, packed_attention, sequence_offsets
from alignkit.models.prompt_cache import shared_prompt_cache

LAYOUTS = ("auto", "packed", "padded", "shared_prompt")


@dataclass
class PackedOutput:
    logits: torch.Tensor  # [1, K, V] at the requested flat positions, in order
    values: torch.Tensor | None = None  # [1, K] when the model returns values (rl.value_head.ActorCritic)


def sequence_bounds(position_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(starts [S], lengths [S]) of the sequences of a packed row, from its position ids [T]."""
    offsets = sequence_offsets(position_ids).long()
    return offsets[:-1], offsets.diff()


@dataclass
class _Shape:
    """What the layouts' costs depend on."""
    lengths: torch.Tensor  # [S] sequence lengths
    prompt_lens: torch.Tensor | None = None  # [S] tokens before each sequence's first kept position
    distinct: int = 0  # distinct prompts among them


def _costs(model, shape: _Shape) -> dict[str, int]:
    """Forward FLOPs of each layout: per token the layers' matrices, about layers x (8 H^2 + 6 H I), and per
    attended (query, key) pair layers x 4 H (the layer count divides out). Packed attends within each
    sequence, padded to each row's own pairs at the longest length."""
    config = model_config(model)
    hidden = getattr(config, "hidden_size", None)
    lengths = shape.lengths
    if hidden is None or lengths.numel() < 2:
        return {"packed": 0}
    inter = getattr(config, "intermediate_size", None) or 4 * hidden
    per_token, per_pair = 8 * hidden * hidden + 6 * hidden * inter, 4 * hidden
    total, longest, rows = int(lengths.sum()), int(lengths.max()), lengths.numel()
    # packed attention stays within each sequence under SDPA (models/packed_attention.py); otherwise the
    # dense mask over the whole row costs every pair of the row
    pairs = int((lengths * lengths).sum()) if getattr(config, "_attn_implementation", None) == "sdpa" else total * total
    costs = {"packed": per_token * total + per_pair * pairs,
             "padded": per_token * rows * longest + per_pair * rows * longest * longest}
    if shape.prompt_lens is not None and 0 < shape.distinct < rows:
        prompt, rest = int(shape.prompt_lens.max()), int((lengths - shape.prompt_lens).max())
        costs["shared_prompt"] = (per_token * (shape.distinct * prompt + rows * rest)
                                  + per_pair * (shape.distinct * prompt * prompt + rows * rest * (prompt + rest)))
    return costs


def cheaper_layout(model, lengths: torch.Tensor, prompt_lens: torch.Tensor | None = None, distinct: int = 0) -> str:
    """The layout with the fewest estimated forward FLOPs (see `_costs`)."""
    costs = _costs(model, _Shape(lengths, prompt_lens, distinct))
    return min(costs, key=costs.get)


def _shares_prompts(model) -> bool:
    # A model computing part of its output apart from the policy's forward (ActorCritic with a separate
    # critic) cannot take a prompt cache; it says so with this attribute.
    inner = model
    while hasattr(inner, "module") and not hasattr(inner, "takes_prompt_cache"):  # DDP
        inner = inner.module
    return getattr(inner, "takes_prompt_cache", True)


def _prompts(ids: torch.Tensor, starts: torch.Tensor, lengths: torch.Tensor, keep: torch.Tensor | None):
    """(prompt lengths [S]: tokens before each sequence's first kept position, index [S] of each sequence's
    distinct prompt, the distinct prompts' token lists), or None when no sequence has a prompt."""
    if keep is None or keep.numel() == 0:
        return None
    row = torch.searchsorted(starts, keep, right=True) - 1
    first = torch.full_like(starts, -1).scatter_reduce(0, row, keep, reduce="amin", include_self=False)
    if bool((first < 0).any()):  # a sequence with nothing kept
        return None
    prompt_lens = first - starts
    if bool((prompt_lens == 0).any()):
        return None
    slots: dict[tuple[int, ...], int] = {}
    index = []
    for start, n in zip(starts.tolist(), prompt_lens.tolist()):
        index.append(slots.setdefault(tuple(ids[start:start + n].tolist()), len(slots)))
    return prompt_lens, torch.tensor(index, device=ids.device), [list(p) for p in slots]


def _plan(model, batch: dict, keep: torch.Tensor | None, layout: str):
    """(the concrete layout, sequence starts, lengths, and the prompts when the layout shares them)."""
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, not {layout!r}")
    if layout == "packed":  # the default of SFT and the preference objectives: nothing to work out
        return layout, None, None, None
    starts, lengths = sequence_bounds(batch["position_ids"][0])
    checkpointed = activation_checkpointing(model)
    if layout == "shared_prompt" and checkpointed and model.training:
        raise ValueError("layout shared_prompt cannot train under activation checkpointing "
                         "(train.activation_checkpointing): transformers drops the prompts' KV cache in "
                         "checkpointed layers; use layout packed or padded")
    prompts = None
    # "auto" leaves shared prompts out whenever checkpointing is on, in eval mode too: RL's old log-probs (eval)
    # and new ones (training) must come from the same layout to be the same numbers.
    if (layout == "shared_prompt" or (layout == "auto" and not checkpointed)) and _shares_prompts(model):
        prompts = _prompts(batch["input_ids"][0], starts, lengths, keep)
    if layout == "auto":
        layout = cheaper_layout(model, lengths, *((prompts[0], len(prompts[2])) if prompts else ()))
    if layout == "shared_prompt" and prompts is None:
        raise ValueError("layout shared_prompt needs kept positions after a prompt in every sequence "
                         "(and a model that takes a prompt cache)")
    return layout, starts, lengths, prompts


def activation_checkpointing(model) -> bool:
    """Whether transformers' activation checkpointing is switched on anywhere in `model` (training/memory.py)."""
    return any(getattr(m, "gradient_checkpointing", False) is True for m in model.modules())


def choose_layout(model, batch: dict, keep: torch.Tensor | None = None) -> str:
    """The layout "auto" takes for this model and batch. Two models whose numbers are compared (a policy
    and its reference) should run one layout: pass this one's result to the other's forward."""
    return _plan(model, batch, keep, "auto")[0]


def packed_forward(model, batch: dict, keep: torch.Tensor | None = None, *, layout: str = "packed",
                   **extra) -> PackedOutput:
    """The model's logits (and values, for a model that returns them) at the flat positions `keep` of a
    packed batch (all positions when None); `extra` goes to the model as it is (e.g. return_values)."""
    layout, starts, lengths, prompts = _plan(model, batch, keep, layout)
    input_ids = batch["input_ids"]
    if layout == "shared_prompt":
        return _shared_prompt_forward(model, input_ids[0], starts, lengths, keep, prompts, extra)
    if layout == "packed":
        position_ids = batch["position_ids"]
        with packed_attention(model, position_ids) as within_sequences:
            out = model(input_ids=input_ids, position_ids=position_ids, logits_to_keep=keep if keep is not None else 0,
                        use_cache=False, **within_sequences, **extra)
        return PackedOutput(out.logits, _values(out))
    return _padded_forward(model, input_ids[0], starts, lengths, keep, extra)


def _gather(out, row: torch.Tensor, col: torch.Tensor, kept_cols: torch.Tensor) -> PackedOutput:
    """The flat positions' logits (and values) from a [rows, columns] output computed at `kept_cols`."""
    col_index = torch.searchsorted(kept_cols, col)
    values = _values(out)
    return PackedOutput(out.logits[row, col_index][None],
                        values[row, col_index][None] if values is not None else None)


def _shared_prompt_forward(model, ids: torch.Tensor, starts: torch.Tensor, lengths: torch.Tensor, keep: torch.Tensor,
                           prompts, extra: dict) -> PackedOutput:
    prompt_lens, index, distinct = prompts
    device = ids.device
    starts, lengths, keep = starts.to(device), lengths.to(device), keep.to(device)
    # The distinct prompts, left-padded (their last tokens line up), run once with a KV cache.
    width = max(len(p) for p in distinct)
    prompt_ids = torch.zeros(len(distinct), width, dtype=ids.dtype, device=device)
    prompt_mask = torch.zeros(len(distinct), width, dtype=torch.long, device=device)
    for u, tokens in enumerate(distinct):
        prompt_ids[u, width - len(tokens):] = torch.tensor(tokens, dtype=ids.dtype, device=device)
        prompt_mask[u, width - len(tokens):] = 1
    cache = shared_prompt_cache(model, prompt_ids, prompt_mask, index)
    if cache is None:
        raise ValueError("layout shared_prompt needs a model whose KV cache can be indexed by row")
    # The rest of each sequence, right-padded, on top of its prompt's cache.
    rest_lens = lengths - prompt_lens
    rest_width = int(rest_lens.max())
    cols = torch.arange(rest_width, device=device)
    valid = cols[None, :] < rest_lens[:, None]
    flat = (starts[:, None] + prompt_lens[:, None] + cols[None, :]).clamp(max=ids.numel() - 1)
    rest_ids = torch.where(valid, ids[flat], torch.zeros_like(ids[flat]))
    mask = torch.cat([prompt_mask[index], valid.long()], dim=1)
    row = torch.searchsorted(starts, keep, right=True) - 1
    col = keep - starts[row] - prompt_lens[row]
    kept_cols = torch.unique(col, sorted=True)
    out = model(input_ids=rest_ids, attention_mask=mask, position_ids=prompt_lens[:, None] + cols[None, :],
                past_key_values=cache, use_cache=True, logits_to_keep=kept_cols, **extra)
    return _gather(out, row, col, kept_cols)


def _padded_forward(model, ids: torch.Tensor, starts: torch.Tensor, lengths: torch.Tensor,
                    keep: torch.Tensor | None, extra: dict) -> PackedOutput:
    rows, longest = lengths.numel(), int(lengths.max())
    device = ids.device
    starts, lengths = starts.to(device), lengths.to(device)
    cols = torch.arange(longest, device=device)
    valid = cols[None, :] < lengths[:, None]
    flat = (starts[:, None] + cols[None, :]).clamp(max=ids.numel() - 1)
    padded_ids = torch.where(valid, ids[flat], torch.zeros_like(ids[flat]))  # pads are masked out
    position_ids = cols[None, :].expand(rows, longest)
    keep = torch.arange(ids.numel(), device=device) if keep is None else keep.to(device)
    # Each kept flat position as (its row, its column); logits are computed at the columns any row keeps.
    row = torch.searchsorted(starts, keep, right=True) - 1
    col = keep - starts[row]
    kept_cols = torch.unique(col, sorted=True)
    out = model(input_ids=padded_ids, attention_mask=valid.long(), position_ids=position_ids,
                logits_to_keep=kept_cols, use_cache=False, **extra)
    return _gather(out, row, col, kept_cols)


def _values(out) -> torch.Tensor | None:
    # A Hugging Face output is a dict, whose `values` is the dict method: only a tensor counts.
    values = getattr(out, "values", None)
    return values if torch.is_tensor(values) else None


def packed_logits(model, batch: dict, keep: torch.Tensor | None = None, *, layout: str = "packed") -> torch.Tensor:
    """Logits [K, V] at the flat positions `keep` of a packed batch (all positions when None)."""
    return packed_forward(model, batch, keep, layout=layout).logits[0]
