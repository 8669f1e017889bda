from __future__ import annotations

from dataclasses import dataclass, field

from alignkit.config import ConfigError, require, require_choice
from alignkit.models.loading import DTYPES, check_chat_template
from alignkit.models.lora import LoraConfig
from alignkit.models.quantization import QUANT_TYPES, QUANTIZATIONS, FourBit, check_4bit_platform


@dataclass
class ModelConfig:
    name: str = "embedded"  # embedded model, local folder, .gguf file or hub id
    dtype: str = "fp32"  # weights as loaded: fp32 or bf16 (train.precision=bf16 keeps fp32 masters itself)
    lora: LoraConfig = field(default_factory=LoraConfig)
    chat_template: str = ""  # empty: the tokenizer's own | chatml | llama3 | inst | a Jinja template file
    quantization: str = "none"  # none | 4bit: QLoRA, the base held in 4 bits by bitsandbytes (needs lora.enabled)
    quant_type: str = "nf4"  # 4bit: nf4 | fp4 block format
    double_quant: bool = True  # 4bit: quantize the per-block scales too (QLoRA's double quantization)
    compute_dtype: str = ""  # 4bit: dtype of the dequantized matrix products; empty: model.dtype | fp32 | bf16

    def validate(self, where: str = "model") -> None:
        require(isinstance(self.name, str) and bool(self.name.strip()), where, "name",
                "embedded, a model folder, a .gguf file or a hub id", self.name)
        require_choice(where, "dtype", self.dtype, DTYPES)
        check_chat_template(self.chat_template, f"{where}.chat_template")
        require_choice(where, "quantization", self.quantization, QUANTIZATIONS)
        require_choice(where, "quant_type", self.quant_type, QUANT_TYPES)
        require(isinstance(self.double_quant, bool), where, "double_quant", "true or false", self.double_quant)
        require(self.compute_dtype == "" or self.compute_dtype in DTYPES, where, "compute_dtype",
                f"empty (= {where}.dtype) or one of {', '.join(DTYPES)}", self.compute_dtype)
        if self.quantization == "4bit":
            # A 4-bit base cannot be trained itself: QLoRA trains adapters on top of it.
            if not self.lora.enabled:
                raise ConfigError(f"{where}.quantization=4bit trains LoRA adapters on a frozen 4-bit base: "
                                  f"set {where}.lora.enabled=true (or {where}.quantization=none)")
            check_4bit_platform(f"{where}.quantization")

    def quantization_settings(self) -> FourBit | None:
        """What load_model(..., quantization=) takes: None for full precision."""
        if self.quantization != "4bit":
            return None
        return FourBit(quant_type=self.quant_type, double_quant=self.double_quant,
                       compute_dtype=self.compute_dtype or self.dtype)
