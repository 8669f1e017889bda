"""Training memory: a CPU heap that returns freed tensor memory, and activation checkpointing.

glibc raises its mmap threshold after the first large free, after which big tensors live in the
heap and fragments of it stay resident: a training run's RSS creeps up step after step. A fixed
threshold sends every allocation above it to mmap, returned to the system when freed.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import sys
from contextlib import contextmanager, nullcontext
from functools import partial

_M_MMAP_THRESHOLD = -3
_applied = False


def release_freed_tensors(threshold_bytes: int = 4 << 20) -> bool:
    """Fix glibc's mmap threshold (Linux only); returns whether it was applied."""
    global _applied
    if _applied:
        return True
    if not sys.platform.startswith("linux"):
        return False
    name = ctypes.util.find_library("c")
    if not name:
        return False
    try:
        libc = ctypes.CDLL(name)
        _applied = bool(libc.mallopt(_M_MMAP_THRESHOLD, ctypes.c_int(threshold_bytes)))
    except (OSError, AttributeError):
        return False
    return _applied


def enable_activation_checkpointing(model) -> None:
    """Switch on transformers' activation checkpointing (non-reentrant torch.utils.checkpoint) in every
    transformers model inside `model`: a causal LM, a peft (LoRA) model around one, an rl.value_head.ActorCritic
    (the policy and a separate critic) or a DDP wrapper of any of these. Each decoder layer then keeps only its
    input and recomputes the rest in backward. Non-reentrant needs no inputs that require grad, so a LoRA model's
    frozen embeddings are fine. Checkpointed layers run without a KV cache: the shared_prompt layout of
    training/forward.py refuses to train under it.

    A packed forward switches the model's attention function for its duration (models/packed_attention.py);
    the backward pass recomputes the layers after that switch is undone, so each recomputation runs under the
    attention function its forward ran with (`_attention_as_in_forward`): otherwise it would attend across the
    sequences of the packed row."""
    from transformers import PreTrainedModel

    from alignkit.config import ConfigError

    outermost: list[tuple[str, PreTrainedModel]] = []
    for name, module in model.named_modules():  # parents come before their children
        if isinstance(module, PreTrainedModel) and not any(name.startswith(f"{top}.") for top, _ in outermost):
            outermost.append((name, module))
    if not outermost:
        raise ConfigError(f"train.activation_checkpointing: {type(model).__name__} holds no transformers model")
    for _, hf_model in outermost:
        if not hf_model.supports_gradient_checkpointing:
            raise ConfigError(f"train.activation_checkpointing: {type(hf_model).__name__} does not support it")
        kwargs = {"use_reentrant": False, "context_fn": partial(_attention_as_in_forward, hf_model.config)}
        if hasattr(hf_model, "activation_checkpointing_enable"):  # transformers 5's name
            hf_model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
        else:
            hf_model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)


def _attention_as_in_forward(config):
    """torch.utils.checkpoint's context_fn: (nothing around the forward, a context that puts back, around the
    recomputation in backward, the attention implementation `config` had when the forward ran)."""
    at_forward = config._attn_implementation

    @contextmanager
    def recomputing():
        current = config._attn_implementation
        config._attn_implementation = at_forward
        try:
            yield
        finally:
            config._attn_implementation = current

    return nullcontext(), recomputing()
