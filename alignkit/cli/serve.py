"""`alignkit serve`: a local model or vLLM behind an OpenAI-compatible HTTP API, streaming included."""
from __future__ import annotations


def cmd_serve(a) -> None:
    from alignkit.generation.specs import BackendOptions
    from alignkit.serving.command import serve_model

    serve_model(a.model, host=a.host, port=a.port, name=a.name,
                options=BackendOptions(dtype=a.dtype, batch_size=a.batch_size, device=a.device),
                default_max_tokens=a.default_max_tokens, api_key_env=a.api_key_env,
                insecure_no_api_key=a.insecure_no_api_key,
                max_completions_per_request=a.max_completions_per_request, max_tokens_cap=a.max_tokens_cap)


def add_serve(sub) -> None:
    p = sub.add_parser("serve", help="serve a local model or vllm:<model> as an OpenAI-compatible API "
                                     "(/v1/chat/completions, /v1/completions, /v1/models; stream: true streams "
                                     "server-sent events)")
    p.add_argument("--model", default="embedded",
                   help="embedded, a model folder, a .gguf file, a hub id, or vllm:<any of these> (needs vLLM and a GPU)")
    p.add_argument("--name", help="model name clients send (default: the --model value)")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to bind; any but loopback needs an API key or --insecure-no-api-key")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--api-key-env", default="ALIGNKIT_API_KEY",
                   help="environment variable holding the key clients must send as 'Authorization: Bearer <key>' "
                        "(unset: no key; never a command-line flag, so it stays out of ps and shell history)")
    p.add_argument("--insecure-no-api-key", action="store_true",
                   help="serve a non-loopback --host without a key: anyone who can reach the port can use the model")
    p.add_argument("--max-completions-per-request", type=int, default=64,
                   help="largest n x number of prompts one request may ask for (larger: 400)")
    p.add_argument("--max-tokens-cap", type=int, default=4096,
                   help="largest max_tokens / max_completion_tokens one request may ask for (larger: 400)")
    p.add_argument("--batch-size", type=int, default=8, help="prompts per forward pass (requests are merged)")
    p.add_argument("--default-max-tokens", type=int, default=512, help="when a request sets no max_tokens")
    p.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"])
    p.add_argument("--device", default=None, help="e.g. cuda; default: where the model loads")
    p.set_defaults(func=cmd_serve)
