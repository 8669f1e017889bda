"""QLoRA: a base model held in 4 bits by bitsandbytes, trained through LoRA adapters (peft).

`model.quantization: 4bit` loads the base with transformers' BitsAndBytesConfig (NF4 or FP4 blocks,
optionally double-quantized constants, matrix products in `model.compute_dtype`), prepares it with
peft's prepare_model_for_kbit_training and puts the LoRA adapters on it. Only the adapters train, so
checkpoints (which hold the trainable weights) stay adapter-sized.

Where it runs: bitsandbytes runs 4-bit layers on CUDA GPUs, and since 0.46 on CPUs through its CPU
backend. alignkit loads and trains every model on the CPU (LOAD_DEVICE), so that is where 4-bit layers
must work; `check_4bit_platform` tries one before any data or model loads and says what is missing.

Three things bitsandbytes and transformers do not do for training, handled here:
- transformers refuses a quantization config together with a GGUF file; such a model (and a peft
  adapter named as the model, merged first) is written once as a full-precision folder in a temporary
  directory and loaded back quantized (`loading.load_model`).
- On CPUs with AVX512-BF16, bitsandbytes rewrites a 4-bit weight in place into an inference-only
  packed layout at the first no-grad forward in eval mode (an evaluation, a reference pass, a
  rollout). Later training forwards then go through a kernel with no backward: gradients reaching
  the layer's input are silently dropped. `keep_training_layout` turns that rewrite off.
- peft's merge into a 4-bit layer quantizes the merged weight again, rounding the adapter's small
  update away. `merged_full_precision` dequantizes the base first (transformers' `dequantize`), then
  merges: the saved model computes what the trained one did, in ordinary full-precision weights.
"""
from __future__ import annotations

import copy
import functools
import importlib.metadata
import importlib.util
import logging
from dataclasses import dataclass

from alignkit.config import ConfigError

QUANTIZATIONS = ("none", "4bit")
QUANT_TYPES = ("nf4", "fp4")
# transformers 5.23 asks for at least this for 4-bit; its wheel already has CPU 4-bit kernels (only
# PINNED_BITSANDBYTES was run here; the probe in _platform_problem is what decides).
MIN_BITSANDBYTES = "0.46.1"
PINNED_BITSANDBYTES = "0.50.2"  # the version constraints.txt pins and the tests ran with
INSTALL = f"pip install bitsandbytes=={PINNED_BITSANDBYTES}"
# Where 4-bit models load, and so where bitsandbytes must work: the CPU, like every alignkit model (the
# training loop keeps batches on the CPU). Moving training to a GPU means changing this and the loop together.
LOAD_DEVICE = "cpu"


@dataclass(frozen=True)
class FourBit:
    """Resolved 4-bit settings, as load_model takes them."""
    quant_type: str = "nf4"
    double_quant: bool = True
    compute_dtype: str = "fp32"  # a key of loading.DTYPES

    def bnb_config(self):
        from transformers import BitsAndBytesConfig

        from alignkit.models.loading import torch_dtype

        return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type=self.quant_type,
                                  bnb_4bit_use_double_quant=self.double_quant,
                                  bnb_4bit_compute_dtype=torch_dtype(self.compute_dtype))


class _DropKernelHubNotice(logging.Filter):
    """bitsandbytes' CPU backend looks for an optional kernel in the `kernels` package (fetched from the
    hub at run time, which alignkit does not do) and logs a warning at every import when it is absent.
    It falls back to its own CPU library; the notice would print at every peft import, so it is dropped."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "kernels-community" not in str(record.msg)


logging.getLogger("bitsandbytes.backends.cpu.ops").addFilter(_DropKernelHubNotice())


def _version_tuple(text: str) -> tuple[int, ...]:
    out = []
    for part in text.split("+")[0].split("."):
        digits = "".join(ch for ch in part if ch.isdigit())
        if not digits:
            break
        out.append(int(digits))
        if digits != part:  # 0.45.0rc1: stop at the pre-release tag
            break
    return tuple(out)


def check_4bit_platform(option: str = "model.quantization") -> None:
    """Raise a one-line ConfigError naming `option` unless 4-bit layers can train here."""
    problem = _platform_problem()
    if problem:
        raise ConfigError(f"{option}=4bit: {problem}")


@functools.lru_cache(maxsize=1)
def _platform_problem() -> str:
    """Why 4-bit training cannot run on this machine, or "" when it can (probed once per process)."""
    if importlib.util.find_spec("bitsandbytes") is None:
        return f"needs bitsandbytes, which is not installed: {INSTALL}"
    installed = importlib.metadata.version("bitsandbytes")
    if _version_tuple(installed) < _version_tuple(MIN_BITSANDBYTES):
        return (f"needs bitsandbytes >= {MIN_BITSANDBYTES} (4-bit through transformers, and its CPU backend), "
                f"installed {installed}: {INSTALL}")
    import torch

    if LOAD_DEVICE != "cpu":
        return "" if torch.cuda.is_available() else "needs a CUDA GPU, and torch sees none"
    # The CPU backend must run a 4-bit layer forward and backward. A few milliseconds.
    try:
        import bitsandbytes as bnb

        with torch.random.fork_rng(devices=[]):  # the probe's random numbers leave the run's seeding alone
            layer = bnb.nn.Linear4bit(64, 64, bias=False, compute_dtype=torch.float32, quant_type="nf4")
            layer = layer.to("cpu")  # quantizes the weight
            x = torch.randn(2, 64, requires_grad=True)
            layer(x).sum().backward()
        ok = x.grad is not None and bool(torch.isfinite(x.grad).all())
    except Exception as e:  # noqa: BLE001 - any failure of the probe is the answer
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        return (f"bitsandbytes {installed} cannot run 4-bit layers on this CPU ({type(e).__name__}: {first}); "
                f"{INSTALL} has a CPU backend")
    if not ok:
        return f"bitsandbytes {installed}'s CPU backend gave no usable gradient for a 4-bit layer"
    return ""


def is_quantized(model) -> bool:
    """Whether `model` (or the base under a peft model) holds bitsandbytes 4-bit layers."""
    base = model.get_base_model() if hasattr(model, "peft_config") else model
    return bool(getattr(base, "is_loaded_in_4bit", False))


def keep_training_layout(model) -> None:
    """Stop bitsandbytes from repacking 4-bit weights into its CPU inference layout (module docstring)."""
    import bitsandbytes as bnb

    for module in model.modules():
        if isinstance(module, bnb.nn.Linear4bit):
            module.support_avx512bf16_for_cpu = False


def prepare_for_training(model):
    """peft's preparation of a k-bit model: base frozen, the few full-precision weights (norms,
    embeddings) in fp32. Activation checkpointing stays with train.activation_checkpointing."""
    from peft import prepare_model_for_kbit_training

    keep_training_layout(model)
    return prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)


def merged_full_precision(peft_model):
    """A plain transformers model in full precision: the 4-bit base dequantized, the adapter merged in.

    Works on a copy (its linear layers still in 4 bits), leaving the trained model as it is."""
    import torch
    from peft import get_peft_model, get_peft_model_state_dict, set_peft_model_state_dict

    name = peft_model.active_adapter
    adapter_config = copy.deepcopy(peft_model.peft_config[name])
    adapter_weights = get_peft_model_state_dict(peft_model, adapter_name=name)
    base = copy.deepcopy(peft_model).unload()  # the base's own (4-bit) layers, adapters taken off
    dtype = base.config.dtype  # what model.dtype loaded the full-precision parts in
    dtype = getattr(torch, dtype) if isinstance(dtype, str) else dtype or torch.float32
    base = base.dequantize(dtype=dtype)  # also drops config.quantization_config, so final/ reads as a plain model
    merged = get_peft_model(base, adapter_config)
    set_peft_model_state_dict(merged, adapter_weights)
    # prepare_for_training left norms and embeddings in fp32; final/ keeps the dtype the model was loaded in.
    return merged.merge_and_unload().to(dtype)
