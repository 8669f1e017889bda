"""Generation: one `Backend` interface (`chat`, `complete` with `SamplingParams`, returning
`Completion`s that can carry sampled token ids and log-probs), its local transformers, OpenAI-compatible
and vLLM implementations, backends built from a spec string (`build_backend`, `open_backend`), the
SQLite call cache (`CachedBackend`), the one rule that names a local model (`local_model_id`), and
prompt files answered into JSONL (`run_generate`). Names are imported on first use (lazy_exports), so
torch loads only with the local backend.
"""
from alignkit.lazy_exports import lazy_exports

__all__, __getattr__ = lazy_exports(__name__, {
    "backend": ("Backend", "Completion", "SamplingParams"),
    "local": ("LocalBackend", "generate_texts"),
    "openai_backend": ("OpenAIBackend",),
    "vllm_backend": ("VLLMBackend",),
    "specs": ("BackendOptions", "build_backend", "open_backend", "parse_backend_spec"),
    "cache": ("CachedBackend", "cache_key"),
    "model_id": ("local_model_id",),
    "files": ("generate_file", "run_generate"),
})
