"""The one rule that names a model loaded in this process from a spec (embedded, folder, .gguf, hub id).

The name is a backend's `model_id`: it starts every judge cache key and is written beside generated
text, so every place that loads a local model from a spec names it here.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".gguf", ".pt")


def local_model_id(spec: str | None, dtype: str = "fp32") -> str:
    """A cache-safe id for a local model: the spec, a fingerprint of its weight files, and the dtype.

    No spec means the embedded model, as in `load_model`. Cache keys start with the model id, so two
    trainings written to the same folder must not share one; size and modification time of the
    weight files change whenever the weights are rewritten. A bf16 judge answers differently from
    the same weights in fp32, so it gets its own id.
    """
    return _weights_id(spec or "embedded") + ("" if dtype == "fp32" else f"@{dtype}")


def _weights_id(spec: str) -> str:
    from alignkit.models.loading import EMBEDDED_ALIASES, EMBEDDED_NAME, resolve_spec

    if spec.lower() in EMBEDDED_ALIASES:
        return f"embedded:{EMBEDDED_NAME}"
    kind, where = resolve_spec(spec)
    if kind == "hub":
        return spec
    files = [Path(where)] if Path(where).is_file() else sorted(
        p for p in Path(where).rglob("*") if p.is_file() and p.name.endswith(_WEIGHT_SUFFIXES))
    stamp = hashlib.sha256(repr([(p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in files]).encode())
    return f"{spec}#{stamp.hexdigest()[:12]}"
