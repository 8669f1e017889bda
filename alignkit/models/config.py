from __future__ import annotations

from dataclasses import dataclass, field

from alignkit.models.lora import LoraConfig


@dataclass
class ModelConfig:
    name: str = "embedded"  # embedded model, local folder, .gguf file or hub id
    dtype: str = "fp32"  # weights as loaded: fp32 or bf16 (train.precision=bf16 keeps fp32 masters itself)
    lora: LoraConfig = field(default_factory=LoraConfig)
