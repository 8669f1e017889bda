"""`alignkit serve` as a function: check the exposure, key and limits, load the model, serve it.

The model is a local one (embedded, a folder, a .gguf file or a hub id, run by transformers in this
process) or `vllm:<model>` (the same specs, run by vLLM's engine in this process; needs vLLM and a
GPU). Both stream token by token.
"""
from __future__ import annotations

from alignkit.generation.specs import BackendOptions
from alignkit.serving.app import api_key_from_env, check_exposure, check_request_limits, serve


def serve_model(model: str = "embedded", *, host: str = "127.0.0.1", port: int = 8000, name: str | None = None,
                options: BackendOptions = BackendOptions(), default_max_tokens: int = 512,
                api_key_env: str = "ALIGNKIT_API_KEY", insecure_no_api_key: bool = False,
                max_completions_per_request: int = 64, max_tokens_cap: int = 4096) -> None:
    """Serve a model as an OpenAI-compatible API until interrupted (clients use `name` as the model).

    The key (read from the environment variable `api_key_env`), the exposure rule and the request
    limits are checked before the model loads, which can take minutes."""
    from alignkit.generation.specs import build_backend

    api_key = api_key_from_env(api_key_env)
    check_exposure(host, api_key, insecure_no_api_key)
    check_request_limits(default_max_tokens, max_completions_per_request, max_tokens_cap)
    if model.startswith("openai:"):
        raise ValueError(f"serve takes a local model (embedded, a folder, a .gguf file or a hub id) or "
                         f"vllm:<model>, got {model!r}")
    backend = build_backend(model, options)
    served_name = name or model
    print(f"serving {backend.model_id} as {served_name!r} on http://{host}:{port}/v1", flush=True)
    serve(backend, served_name, host=host, port=port, default_max_tokens=default_max_tokens, api_key=api_key,
          insecure_no_api_key=insecure_no_api_key, max_completions_per_request=max_completions_per_request,
          max_tokens_cap=max_tokens_cap)
