from __future__ import annotations

from dataclasses import dataclass, field

from alignkit.config import require, require_choice
from alignkit.models.loading import DTYPES, check_chat_template
from alignkit.models.lora import LoraConfig


@dataclass
class ModelConfig:
    name: str = "embedded"  # embedded model, local folder, .gguf file or hub id
    dtype: str = "fp32"  # weights as loaded: fp32 or bf16 (train.precision=bf16 keeps fp32 masters itself)
    lora: LoraConfig = field(default_factory=LoraConfig)
    chat_template: str = ""  # empty: the tokenizer's own | chatml | llama3 | inst | a Jinja template file

    def validate(self, where: str = "model") -> None:
        require(isinstance(self.name, str) and bool(self.name.strip()), where, "name",
                "embedded, a model folder, a .gguf file or a hub id", self.name)
        require_choice(where, "dtype", self.dtype, DTYPES)
        check_chat_template(self.chat_template, f"{where}.chat_template")
