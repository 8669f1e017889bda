"""LoRA adapters through peft: automatic target modules, merging, saving in the Hugging Face format."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from alignkit.config import require, require_number


@dataclass
class LoraConfig:
    enabled: bool = False
    r: int = 16
    alpha: int = 32
    dropout: float = 0.0
    target_modules: list[str] = field(default_factory=list)  # empty: every linear layer but the output head

    def validate(self, where: str = "model.lora") -> None:
        require_number(where, "r", self.r, low=1, whole=True)
        require_number(where, "alpha", self.alpha, low=0, low_open=True)
        require_number(where, "dropout", self.dropout, low=0, high=1, high_open=True)
        for i, name in enumerate(self.target_modules):
            require(isinstance(name, str) and bool(name), where, f"target_modules[{i}]", "a module name", name)


def find_target_modules(model) -> list[str]:
    """Names (last path component) of the linear layers inside the transformer blocks."""
    out_emb = model.get_output_embeddings()
    names = set()
    for full_name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear) and module is not out_emb:
            names.add(full_name.rsplit(".", 1)[-1])
    if not names:
        raise ValueError("no linear layers found to put LoRA adapters on")
    return sorted(names)


def apply_lora(model, cfg: LoraConfig, *, seed: int | None = None):
    """`model` with fresh LoRA adapters. With `seed` (the run's train.seed) the adapters' random init depends
    on it alone, not on what drew from the global generator before, so a run started by one process or by
    torchrun begins from the same adapters; the global generator is left as it was."""
    # Before peft: importing peft imports bitsandbytes, whose CPU notice quantization.py filters out.
    from alignkit.models.quantization import is_quantized, prepare_for_training
    from peft import LoraConfig as PeftLoraConfig, get_peft_model

    if is_quantized(model):  # QLoRA: a bitsandbytes 4-bit base (model.quantization=4bit)
        model = prepare_for_training(model)
    targets = cfg.target_modules or find_target_modules(model)
    peft_cfg = PeftLoraConfig(r=cfg.r, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout,
                              target_modules=targets, task_type="CAUSAL_LM")
    if seed is None:
        return get_peft_model(model, peft_cfg)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return get_peft_model(model, peft_cfg)


def is_peft(model) -> bool:
    return hasattr(model, "peft_config")


def merge_lora(model):
    """The base model with adapters folded into its weights (a plain transformers model).

    A 4-bit base is dequantized first, so the result is full precision (quantization.merged_full_precision)."""
    from alignkit.models.quantization import is_quantized, merged_full_precision

    if is_peft(model) and is_quantized(model):
        return merged_full_precision(model)
    return model.merge_and_unload() if is_peft(model) else model


def save_model(model, tokenizer, out_dir: str, *, merge: bool = True) -> None:
    """Save in the Hugging Face layout (safetensors) that transformers and vLLM load back.

    With an adapter and merge=False only the adapter is written (peft's layout)."""
    target = merge_lora(model) if merge else model
    target.save_pretrained(out_dir, safe_serialization=True)
    if tokenizer is not None:
        tokenizer.save_pretrained(out_dir)
