"""Arguments of the commands that generate with a model (generate, chat, eval ifeval, eval refusal): the
sampling flags, --chat-template, and the backend --model names: a model loaded in this process, `vllm:<model>`
or `openai:<model>@<url>` (`model_backend`)."""
from __future__ import annotations

import argparse

CHAT_TEMPLATE_HELP = ("for a model whose tokenizer has no chat template: a Jinja template file, or chatml, "
                      "llama3 or inst (default: the tokenizer's own)")


def add_sampling_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--max-tokens", type=int, default=256)
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--top-k", type=int, default=0)
    p.add_argument("--n", type=int, default=1, help="samples per prompt")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--stop", action="append", default=[], help="stop string (repeatable)")


def sampling_params(a):
    from alignkit.generation.backend import SamplingParams

    return SamplingParams(max_tokens=a.max_tokens, temperature=a.temperature, top_p=a.top_p, top_k=a.top_k,
                          n=a.n, seed=a.seed, stop=tuple(a.stop))


def local_backend(model: str, dtype: str, batch_size: int, chat_template: str = ""):
    from alignkit.generation.local import LocalBackend
    from alignkit.generation.model_id import local_model_id
    from alignkit.models.loading import load_model, load_tokenizer, use_chat_template

    # The tokenizer first: a missing chat template is reported before the model loads.
    tok = use_chat_template(load_tokenizer(model), chat_template, model, option="--chat-template")
    m, _ = load_model(model, dtype=dtype)
    return LocalBackend(m, tok, batch_size=batch_size, model_id=local_model_id(model, dtype))


def model_backend(model: str, dtype: str, batch_size: int, chat_template: str = ""):
    """The backend `--model` names: `local_backend` for a model loaded here, else generation.specs' backend
    (vLLM, given --chat-template as well; an OpenAI-compatible server, which renders with its own template)."""
    from alignkit.generation.specs import BackendOptions, build_backend, parse_backend_spec
    from alignkit.models.loading import chat_template_text

    kind = parse_backend_spec(model).kind
    if kind == "local":
        return local_backend(model, dtype, batch_size, chat_template)
    if chat_template and kind == "openai":
        raise ValueError(f"--chat-template: {model} is a server, which renders conversations with its own chat "
                         "template; leave --chat-template out")
    text = chat_template_text(chat_template, option="--chat-template") if chat_template else ""
    return build_backend(model, BackendOptions(dtype=dtype, batch_size=batch_size, chat_template=text))
