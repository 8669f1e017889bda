"""Build a generation `Backend` (usually a judge) from a spec string given on the command line.

    embedded | <model folder> | <file>.gguf | <hub id>   LocalBackend, the model loaded in this process
    openai:<model>@<base_url>                           OpenAIBackend against any OpenAI-compatible server
    openai:<model>                                      the same, URL from options.base_url or OPENAI_BASE_URL
    vllm:embedded | vllm:<model folder or hub id>       VLLMBackend (needs vLLM and a GPU)

`open_backend` also wraps the result in the SQLite `CachedBackend` when given a cache path, and
`ProgressBackend` shows a progress bar of prompts answered, since a judge run can take minutes.
`ThroughputBackend` counts what a backend generated and how long its calls took (`generate`'s tokens/s).
"""
from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass
from typing import Sequence

from tqdm.auto import tqdm

from alignkit.generation.backend import Backend, Completion, Message, SamplingParams
from alignkit.generation.cache import CachedBackend
from alignkit.generation.model_id import local_model_id


@dataclass(frozen=True)
class BackendSpec:
    kind: str  # "local" | "openai" | "vllm"
    model: str  # local spec, served model name, or vLLM model path
    base_url: str | None = None  # openai only


@dataclass(frozen=True)
class BackendOptions:
    base_url: str | None = None  # for "openai:<model>" without "@<url>"
    api_key_env: str = "OPENAI_API_KEY"  # environment variable holding the key (never a command-line flag)
    max_concurrency: int = 8  # requests in flight at once (openai)
    timeout: float = 60.0  # seconds per HTTP request (openai)
    max_retries: int = 5  # on 429, 5xx, timeouts and connection errors (openai)
    dtype: str = "fp32"  # local weights: fp32 or bf16
    batch_size: int = 8  # prompts per forward pass (local)
    device: str | None = None  # local: "cuda", "cpu", ...; None keeps where the model loads
    overlong: str = "raise"  # local: a prompt too long for the context raises, or ("error") comes back as an error
    chat_template: str = ""  # Jinja text replacing the tokenizer's template (local, vllm); "" keeps the model's own


def parse_backend_spec(spec: str) -> BackendSpec:
    """Split a spec string into its kind and parts; raises ValueError naming what is missing."""
    if not isinstance(spec, str) or not spec.strip():
        raise ValueError("backend spec is empty; use 'embedded', a model folder, 'openai:<model>@<url>' "
                         "or 'vllm:<model>'")
    spec = spec.strip()
    if spec.startswith("openai:"):
        # The model name comes first: a URL may itself hold '@' (user:password@host), a model name does not.
        model, at, base_url = spec[len("openai:"):].partition("@")
        if not model:
            raise ValueError(f"backend spec {spec!r}: no model name after 'openai:' (use openai:<model>@<url>)")
        if at and not base_url.startswith(("http://", "https://")):
            raise ValueError(f"backend spec {spec!r}: the part after '@' must be an http(s) URL, got {base_url!r}")
        return BackendSpec("openai", model, base_url or None)
    if spec.startswith("vllm:"):
        path = spec[len("vllm:"):]
        if not path:
            raise ValueError(f"backend spec {spec!r}: no model path after 'vllm:'")
        return BackendSpec("vllm", path)
    return BackendSpec("local", spec)


def build_backend(spec: str, options: BackendOptions = BackendOptions()) -> Backend:
    """The backend a spec names, without cache or progress wrappers."""
    parsed = parse_backend_spec(spec)
    if parsed.kind == "openai":
        from alignkit.generation.openai_backend import OpenAIBackend

        if options.chat_template:
            raise ValueError(f"{spec}: an OpenAI-compatible server renders conversations with its own chat "
                             "template; a template cannot be given to it from here")

        base_url = parsed.base_url or options.base_url or os.environ.get("OPENAI_BASE_URL")
        return OpenAIBackend(base_url=base_url, api_key=os.environ.get(options.api_key_env), model=parsed.model,
                             max_concurrency=options.max_concurrency, timeout=options.timeout,
                             max_retries=options.max_retries)
    if parsed.kind == "vllm":
        return _vllm_backend(parsed.model, options)
    from alignkit.generation.local import LocalBackend
    from alignkit.models.loading import load_model

    model, tokenizer = load_model(parsed.model, dtype=options.dtype)
    if options.chat_template:
        tokenizer.chat_template = options.chat_template
    return LocalBackend(model, tokenizer, batch_size=options.batch_size,
                        model_id=local_model_id(parsed.model, options.dtype), device=options.device,
                        overlong=options.overlong)


def _vllm_backend(spec: str, options: BackendOptions) -> Backend:
    """vLLM over the same model specs as a local judge: `embedded` is the converted cache folder."""
    from alignkit.generation.vllm_backend import VLLMBackend
    from alignkit.models.loading import resolve_spec

    kind, where = resolve_spec(spec)
    if kind == "adapter":
        raise ValueError(f"vllm:{spec} is a LoRA adapter folder; vLLM needs full weights: save the model "
                         "merged (alignkit's final models are) and point vllm: at that folder")
    # vLLM's kernels answer a little differently from transformers': its own cache id.
    model_id = "vllm:" + local_model_id(spec, options.dtype)
    return VLLMBackend(where, model_id=model_id, dtype="bfloat16" if options.dtype == "bf16" else "auto",
                       chat_template=options.chat_template or None)


class ProgressBackend:
    """Counts prompts on a progress bar as they come back; everything else goes to the wrapped backend."""

    def __init__(self, backend: Backend, desc: str = "judging", enabled: bool = True):
        self.backend = backend
        self.model_id = backend.model_id
        self.bar = tqdm(desc=desc, unit="prompt", disable=not enabled)

    def chat(self, conversations: Sequence[list[Message]], params: SamplingParams) -> list[list[Completion]]:
        results = self.backend.chat(conversations, params)
        self.bar.update(len(conversations))
        return results

    def complete(self, prompts: Sequence[str], params: SamplingParams) -> list[list[Completion]]:
        results = self.backend.complete(prompts, params)
        self.bar.update(len(prompts))
        return results

    def close(self) -> None:
        self.bar.close()


class ThroughputBackend:
    """Counts the completions and completion tokens a backend returns and the seconds its calls take, so a
    command can report generation tokens/s apart from loading the model and reading or writing files."""

    def __init__(self, backend: Backend):
        self.backend = backend
        self.model_id = backend.model_id
        self.completions = self.tokens = 0
        self.seconds = 0.0

    def _timed(self, call, inputs, params: SamplingParams) -> list[list[Completion]]:
        started = time.perf_counter()
        results = call(inputs, params)
        self.seconds += time.perf_counter() - started
        self.completions += sum(len(outs) for outs in results)
        self.tokens += sum(c.completion_tokens for outs in results for c in outs)
        return results

    def chat(self, conversations: Sequence[list[Message]], params: SamplingParams) -> list[list[Completion]]:
        return self._timed(self.backend.chat, conversations, params)

    def complete(self, prompts: Sequence[str], params: SamplingParams) -> list[list[Completion]]:
        return self._timed(self.backend.complete, prompts, params)

    def tokens_per_s(self) -> float:
        return self.tokens / self.seconds if self.seconds > 0 else 0.0


def open_backend(spec: str, options: BackendOptions = BackendOptions(), *, cache: str | os.PathLike | None = None,
                 progress: bool = True, desc: str = "judging") -> ProgressBackend:
    """`build_backend`, behind the SQLite cache when `cache` is given, behind a progress bar."""
    backend = build_backend(spec, options)
    if cache is not None:
        backend = CachedBackend(backend, cache)
    return ProgressBackend(backend, desc, enabled=progress)


def backend_stats(backend: Backend) -> dict:
    """Cache counts and HTTP usage of every wrapper layer found in `backend`, for results files."""
    stats: dict = {"model_id": backend.model_id}
    layer = backend
    while layer is not None:
        if isinstance(layer, CachedBackend):
            stats["cache"] = {"path": str(layer.path), **asdict(layer.stats)}
        usage = getattr(layer, "usage", None)
        if usage is not None:
            stats["http"] = asdict(usage)
        layer = getattr(layer, "backend", None)
    return stats


def describe_stats(stats: dict) -> str:
    """One line for the end of a run: cache hits and new calls, and HTTP retries and failures."""
    parts = []
    if "cache" in stats:
        cache = stats["cache"]
        parts.append(f"judge cache: {cache['hits']} hits, {cache['misses']} new calls "
                     f"({cache['errors_not_cached']} errored, not cached) in {cache['path']}")
    else:
        parts.append("judge cache: not used")
    if "http" in stats:
        http = stats["http"]
        parts.append(f"HTTP: {http['requests']} requests, {http['retries']} retries, {http['failures']} failed")
    return "; ".join(parts)
