from __future__ import annotations

from dataclasses import dataclass, field

from alignkit.models.lora import LoraConfig


@dataclass
class ModelConfig:
    name: str = "embedded"  # embedded model, local folder, .gguf file or hub id
    dtype: str = "fp32"  # weights: fp32 or bf16 (training in bf16 uses autocast over fp32 weights)
    lora: LoraConfig = field(default_factory=LoraConfig)
