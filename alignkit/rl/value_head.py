"""`ActorCritic`: the policy and PPO's value head, trained together as one model on the one loop.

The value head is `nn.Linear(hidden, 1)` on the last hidden state (after the final norm: what the
policy's lm_head reads) of either the policy's own transformer (shared: one forward gives the logits
and the values) or a separate critic's transformer: a causal LM, or a reward model, whose score head
then starts the value head (TRL's PPO starts its value model from the reward model the same way).
Otherwise the head starts at zero, bias included, so every value is 0 before training.

Positions: an RL micro-batch keeps the positions whose target is a completion token (the logits there
predict it); the value read at the same position is the state before that token is emitted, V(s_t)
in GAE's delta_t = r_t + gamma V(s_{t+1}) - V(s_t). `forward(..., return_values=True)` takes
`logits_to_keep` like a Hugging Face model and gives the values at exactly those positions.

The loop sees one module: the wrapper's parameters (policy.*, value_head.*, critic.*) are what it trains,
casts to bf16 under precision=bf16 (fp32 masters) and checkpoints by name, so a resume restores the head
and the critic with the policy. Generation and the final HF folder want the plain causal LM:
`unwrap_policy`. `save_value_model` writes the head (and a separate critic) next to it.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from alignkit.models.packed_attention import packed_attention
from alignkit.training.reference import unwrap

VALUE_HEAD = "value_head.safetensors"
CRITIC = "critic"


@dataclass
class ActorCriticOutput:
    logits: torch.Tensor  # the policy's [1, K, V]
    values: torch.Tensor  # float32 [1, K], at the same positions


def transformer_of(model) -> nn.Module:
    """The transformer of a Hugging Face causal LM or sequence classifier, without its lm_head / score."""
    return getattr(model, model.base_model_prefix)


def _kept(logits_to_keep, length: int):
    """The positions a Hugging Face model computes logits at for `logits_to_keep` (an index tensor, or
    the last n positions for an int n, all of them for 0)."""
    return logits_to_keep if torch.is_tensor(logits_to_keep) else slice(length - int(logits_to_keep or length), None)


class ActorCritic(nn.Module):
    """`policy` (a causal LM, LoRA or not) with a value head on its transformer, or on `critic`'s (a causal LM
    or a *ForSequenceClassification model, whose transformer alone is kept). `head_weight` [1, H] starts the
    head (e.g. a reward model's score); zero otherwise."""

    def __init__(self, policy, critic=None, *, head_weight: torch.Tensor | None = None):
        super().__init__()
        if critic is policy:
            raise ValueError("critic=None shares the policy's transformer; a critic must be another model")
        self.policy = policy
        self.critic = None if critic is None else transformer_of(critic)
        # A separate critic runs its own forward over the whole row, so it cannot take the policy's prompt
        # cache (training/forward.py's shared_prompt layout).
        self.takes_prompt_cache = critic is None
        source = policy if critic is None else critic
        param = next(source.parameters())
        self.value_head = nn.Linear(source.config.hidden_size, 1, dtype=param.dtype, device=param.device)
        with torch.no_grad():
            nn.init.zeros_(self.value_head.bias)
            if head_weight is None:
                nn.init.zeros_(self.value_head.weight)
            else:
                self.value_head.weight.copy_(head_weight.detach().reshape(1, -1))

    @property
    def config(self):
        return self.policy.config

    def _supports_logits_to_keep(self) -> bool:
        return True  # forward takes logits_to_keep as a Hugging Face model does

    def forward(self, input_ids, position_ids=None, logits_to_keep=0, use_cache=False, return_values=False,
                **kwargs):
        """The policy's output; with `return_values` an ActorCriticOutput that adds the values at the positions
        the logits were kept at. The shared head reads the policy's own last hidden state, so the backbone
        runs once; a separate critic runs its transformer on the same packed row (no lm_head)."""
        shared = return_values and self.critic is None
        if shared:
            kwargs["output_hidden_states"] = True
        out = self.policy(input_ids=input_ids, position_ids=position_ids, logits_to_keep=logits_to_keep,
                          use_cache=use_cache, **kwargs)
        if not return_values:
            return out
        if shared:
            hidden = out.hidden_states[-1]
        else:
            # use_cache=False: with a cache object transformers ignores the packing (training/forward.py).
            hidden = self._critic_hidden(input_ids, position_ids, kwargs.get("attention_mask"))
        hidden = hidden[:, _kept(logits_to_keep, hidden.shape[1])]
        values = self.value_head(hidden.to(self.value_head.weight.dtype)).squeeze(-1).float()
        return ActorCriticOutput(out.logits, values)

    def _critic_hidden(self, input_ids, position_ids, attention_mask) -> torch.Tensor:
        if attention_mask is not None or position_ids is None:  # a padded batch
            return self.critic(input_ids=input_ids, position_ids=position_ids, use_cache=False,
                               attention_mask=attention_mask).last_hidden_state
        with packed_attention(self.critic, position_ids) as within_sequences:
            return self.critic(input_ids=input_ids, position_ids=position_ids, use_cache=False,
                               **within_sequences).last_hidden_state


def unwrap_policy(model):
    """The plain causal LM inside an ActorCritic (and a DDP wrapper), for generation and saving; any other
    model as it is."""
    inner = unwrap(model)
    return inner.policy if isinstance(inner, ActorCritic) else inner


def is_actor_critic(model) -> bool:
    return isinstance(unwrap(model), ActorCritic)


def load_critic(spec: str, dtype: str = "fp32") -> tuple[nn.Module, torch.Tensor | None]:
    """(the model whose transformer the critic uses, the value head's starting weight or None) from a reward
    model folder (its score head starts the value head) or any causal LM `load_model` accepts."""
    from alignkit.models.loading import load_model, resolve_spec
    from alignkit.models.lora import merge_lora
    from alignkit.models.reward import is_reward_checkpoint, load_reward_model

    kind, where = resolve_spec(spec)
    if kind == "local" and is_reward_checkpoint(where):
        reward_model, _ = load_reward_model(spec, dtype=dtype)
        return reward_model.hf, reward_model.hf.score.weight.detach()
    lm, _ = load_model(spec, dtype=dtype)
    return merge_lora(lm), None


def save_value_model(model: ActorCritic, folder: str) -> None:
    """folder/value_head.safetensors (weight [1, H], bias [1]) and, for a separate critic, its transformer in
    folder/critic (Hugging Face layout)."""
    head = {k: v.detach().contiguous().cpu() for k, v in model.value_head.state_dict().items()}
    save_file(head, os.path.join(folder, VALUE_HEAD))
    if model.critic is not None:
        model.critic.save_pretrained(os.path.join(folder, CRITIC), safe_serialization=True)


def load_value_head(model: ActorCritic, folder: str) -> None:
    """The value head saved by `save_value_model` into `model`'s head (in the head's dtype)."""
    model.value_head.load_state_dict(load_file(os.path.join(folder, VALUE_HEAD)))


__all__ = ["ActorCritic", "ActorCriticOutput", "transformer_of", "unwrap_policy", "is_actor_critic", "load_critic",
           "save_value_model", "load_value_head", "VALUE_HEAD", "CRITIC"]
