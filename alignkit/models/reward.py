"""A reward model: a causal LM's transformer with a scalar head, stored in Hugging Face's layout.

The weights live in a `*ForSequenceClassification` model with `num_labels=1` (transformer under
`model`, head `score`), so a saved folder loads back with `AutoModelForSequenceClassification`
in transformers, TRL or vLLM. Our forward is packed: several sequences back to back in one row
(position ids restarting at 0), and the reward of each is the head applied to the hidden state
of its last token, so no compute goes to padding.
"""
from __future__ import annotations

import copy
import json
import os
from typing import Sequence

import torch
from torch import nn

from alignkit.models.loading import ModelLoadError, load_model, load_tokenizer, resolve_spec, torch_dtype
from alignkit.models.packed_attention import packed_attention


class RewardModel(nn.Module):
    """Wraps the Hugging Face sequence-classification model so the training loop (and DDP) call
    `forward` with a packed batch."""

    def __init__(self, hf_model):
        super().__init__()
        if getattr(hf_model.config, "num_labels", None) != 1 or not hasattr(hf_model, "score"):
            raise ModelLoadError("a reward model needs a *ForSequenceClassification model with num_labels=1 "
                                 "and a `score` head")
        self.hf = hf_model

    @property
    def config(self):
        return self.hf.config

    @classmethod
    def from_causal_lm(cls, lm, tokenizer=None) -> RewardModel:
        """A reward model sharing the LM's transformer weights (copied), with a zero-initialised head:
        every response starts at reward 0, so the first loss is exactly log 2."""
        from transformers import AutoModelForSequenceClassification

        config = copy.deepcopy(lm.config)
        config.num_labels = 1
        config.architectures = None
        if tokenizer is not None and tokenizer.pad_token_id is not None:
            config.pad_token_id = tokenizer.pad_token_id
        hf = AutoModelForSequenceClassification.from_config(config, dtype=next(lm.parameters()).dtype)
        body = getattr(lm, lm.base_model_prefix)
        getattr(hf, hf.base_model_prefix).load_state_dict(body.state_dict())
        nn.init.zeros_(hf.score.weight)
        hf.config._attn_implementation = getattr(lm.config, "_attn_implementation", "sdpa")
        return cls(hf)

    def forward(self, input_ids: torch.Tensor, position_ids: torch.Tensor, seq_lens: Sequence[int]) -> torch.Tensor:
        """Rewards [S] of the S sequences packed in a [1, T] row."""
        body = getattr(self.hf, self.hf.base_model_prefix)
        # use_cache=False: with a cache object transformers ignores the packing (see training/forward.py).
        with packed_attention(self.hf, position_ids) as within_sequences:
            hidden = body(input_ids=input_ids, position_ids=position_ids, use_cache=False,
                          **within_sequences).last_hidden_state[0]
        last = torch.cumsum(torch.tensor(list(seq_lens), device=hidden.device), 0) - 1
        return self.hf.score(hidden[last]).squeeze(-1).float()

    def save_pretrained(self, out_dir: str, tokenizer=None) -> None:
        self.hf.save_pretrained(out_dir, safe_serialization=True)
        if tokenizer is not None:
            tokenizer.save_pretrained(out_dir)


def is_reward_checkpoint(folder: str) -> bool:
    try:
        with open(os.path.join(folder, "config.json")) as f:
            config = json.load(f)
    except (OSError, ValueError):
        return False
    return any(a.endswith("ForSequenceClassification") for a in config.get("architectures") or []) \
        and config.get("num_labels", len(config.get("id2label") or {})) == 1


def load_reward_model(spec: str, *, dtype: str = "fp32", from_lm: bool = False) -> tuple[RewardModel, object]:
    """(reward model, tokenizer) from a saved reward-model folder.

    With `from_lm=True` a causal LM (any spec `load_model` accepts) is also accepted and gets a
    fresh zero head, which is how reward-model training starts.
    """
    kind, where = resolve_spec(spec)
    if kind == "local" and is_reward_checkpoint(where):
        from transformers import AutoModelForSequenceClassification

        hf = AutoModelForSequenceClassification.from_pretrained(where, dtype=torch_dtype(dtype),
                                                                attn_implementation="sdpa")
        return RewardModel(hf), load_tokenizer(where)
    if not from_lm:
        raise ModelLoadError(f"{spec} is not a reward model (no single-output sequence-classification head); "
                             "train one with `alignkit rm`")
    lm, tokenizer = load_model(spec, dtype=dtype)
    from alignkit.models.lora import merge_lora

    return RewardModel.from_causal_lm(merge_lora(lm), tokenizer), tokenizer


def conversation_ids(tokenizer, messages: list[dict], max_length: int) -> tuple[list[int], bool]:
    """Token ids of a conversation to score, cut from the left when too long (the reward is read at
    the end), and whether they were cut. Shared by `alignkit score`, rm-eval and the RL reward."""
    from alignkit.data.chat import tokenize_conversation

    ids = tokenize_conversation(tokenizer, messages).input_ids
    return (ids[-max_length:], True) if len(ids) > max_length else (ids, False)


@torch.no_grad()
def score_sequences(model: RewardModel, sequences: Sequence[list[int]], *, batch_size: int = 16) -> list[float]:
    """Rewards of token-id sequences, `batch_size` sequences per packed forward."""
    from alignkit.data.packing import pack

    model.eval()
    device = next(model.parameters()).device
    rewards: list[float] = []
    for start in range(0, len(sequences), batch_size):
        chunk = sequences[start:start + batch_size]
        batch = pack([(ids, ids) for ids in chunk])
        rewards += model(batch["input_ids"].to(device), batch["position_ids"].to(device), batch["seq_lens"]).tolist()
    return rewards
