"""The model section of every generating data command, and the backend it opens.

Any backend alignkit can call generates (`embedded`, a model folder, `openai:<model>@<url>`,
`vllm:<model>`), always behind the SQLite cache in the job's folder: a rerun, or a job resumed after a
kill, replays every call already answered instead of making it again.
"""
from __future__ import annotations

from dataclasses import dataclass

from alignkit.config import require, require_choice, require_number
from alignkit.generation.backend import Backend, Completion, SamplingParams
from alignkit.generation.specs import BackendOptions, build_backend, parse_backend_spec


@dataclass
class GeneratorConfig:
    model: str = "embedded"  # embedded | a model folder or hub id | openai:<model>@<url> | vllm:<model>
    max_tokens: int = 256  # cap on each reply
    temperature: float = 0.7  # 0: greedy
    top_p: float = 1.0  # nucleus sampling: the smallest set of tokens holding this much probability
    seed: int = 0  # each prompt's sample derives from it and the prompt, so a rerun draws the same text
    dtype: str = "fp32"  # weights of a model loaded here
    batch_size: int = 16  # prompts per backend call; each finished call is journaled and cached
    base_url: str = ""  # for openai:<model> without @<url> (else OPENAI_BASE_URL)
    api_key_env: str = "OPENAI_API_KEY"  # environment variable holding the key
    concurrency: int = 8  # HTTP requests in flight (openai)
    timeout: float = 60.0  # seconds per HTTP request (openai)
    retries: int = 5  # on 429, 5xx, timeouts (openai)

    def validate(self, where: str = "generator") -> None:
        require(isinstance(self.model, str) and bool(self.model.strip()), where, "model",
                "a backend spec (embedded, a folder, openai:<model>@<url>, vllm:<model>)", self.model)
        try:
            parse_backend_spec(self.model)
        except ValueError as error:
            require(False, where, "model", f"a valid backend spec ({error})", self.model)
        require_number(where, "max_tokens", self.max_tokens, low=1, whole=True)
        require_number(where, "temperature", self.temperature, low=0)
        require_number(where, "top_p", self.top_p, low=0, high=1, low_open=True)
        require_number(where, "seed", self.seed, low=0, whole=True)
        require_choice(where, "dtype", self.dtype, ("fp32", "bf16"))
        for key in ("batch_size", "concurrency", "retries"):
            require_number(where, key, getattr(self, key), low=1 if key != "retries" else 0, whole=True)
        require_number(where, "timeout", self.timeout, low=0, low_open=True)

    def params(self, **changes) -> SamplingParams:
        """The sampling parameters of one call; `changes` override fields (e.g. n, max_tokens, seed)."""
        fields = dict(max_tokens=self.max_tokens, temperature=self.temperature, top_p=self.top_p, seed=self.seed)
        fields.update(changes)
        return SamplingParams(**fields)

    def options(self) -> BackendOptions:
        # A prompt too long for a local model's context is one failed call, counted, not the end of the job.
        return BackendOptions(base_url=self.base_url or None, api_key_env=self.api_key_env,
                              max_concurrency=self.concurrency, timeout=self.timeout, max_retries=self.retries,
                              dtype=self.dtype, batch_size=self.batch_size, overlong="error")


@dataclass
class JobConfig:
    """The keys every data command has. Generating commands journal their work in output_dir."""
    output_dir: str = ""  # the job's folder: its outputs, summary.json, journal.jsonl and cache.sqlite
    if_exists: str = "resume"  # resume: go on where a run in output_dir stopped | overwrite: start over
    progress: bool = True  # progress bars

    def validate(self, where: str = "") -> None:
        require(isinstance(self.output_dir, str) and bool(self.output_dir.strip()), where, "output_dir",
                "a folder for the job's outputs", self.output_dir)
        require_choice(where, "if_exists", self.if_exists, ("resume", "overwrite"))


def open_generator(config: GeneratorConfig, cache_path: str, backend: Backend | None = None) -> "InFlightChunks":
    """The backend `config.model` names (or `backend`, already built: tests, or a caller that holds a model)
    behind the SQLite cache at `cache_path`, fed a few prompts at a time (see InFlightChunks). Close it
    (`.close()`) when done."""
    from alignkit.generation.cache import CachedBackend

    built = backend if backend is not None else _backend(config)
    # An HTTP server answers `concurrency` requests at once; a local model or vLLM a batch of batch_size.
    in_flight = config.concurrency if parse_backend_spec(config.model).kind == "openai" else config.batch_size
    return InFlightChunks(CachedBackend(built, cache_path), in_flight)


# vLLM engines opened here, by spec and dtype. Each takes most of the GPU's memory as it starts, so a job that
# samples and judges with the same vllm: model (data label) shares one engine instead of failing at the second.
_VLLM_ENGINES: dict[tuple[str, str], Backend] = {}


def _backend(config: GeneratorConfig) -> Backend:
    if parse_backend_spec(config.model).kind != "vllm":
        return build_backend(config.model, config.options())
    key = (config.model.strip(), config.dtype)
    if key not in _VLLM_ENGINES:
        _VLLM_ENGINES[key] = build_backend(config.model, config.options())
    return _VLLM_ENGINES[key]


class InFlightChunks:
    """Hands a call's prompts to the cached backend `size` at a time. The cache stores a call's answers when
    the call returns, so a job that asked for a whole round at once would lose every answer of the round to a
    kill; in chunks as large as what the backend works on at once, a kill loses at most the calls in flight."""

    def __init__(self, backend, size: int):
        self.backend = backend
        self.model_id = backend.model_id
        self.size = size

    def chat(self, conversations, params):
        return [r for start in range(0, len(conversations), self.size)
                for r in self.backend.chat(conversations[start:start + self.size], params)]

    def complete(self, prompts, params):
        return [r for start in range(0, len(prompts), self.size)
                for r in self.backend.complete(prompts[start:start + self.size], params)]

    def close(self) -> None:
        self.backend.close()


def first_replies(backend: Backend, conversations: list[list[dict]], params: SamplingParams) -> list[Completion]:
    """The first reply to each conversation, in one call; a backend that answers fewer is an error, never a gap."""
    if not conversations:
        return []
    replies = backend.chat(conversations, params)
    if len(replies) != len(conversations) or any(not reply for reply in replies):
        raise RuntimeError(f"backend {backend.model_id!r} returned {len(replies)} replies (some may be empty) "
                           f"for {len(conversations)} conversations")
    return [reply[0] for reply in replies]


def resource(name: str) -> str:
    """Path of a file alignkit ships in construction/resources (its own prompts and principles)."""
    import os

    return os.path.join(os.path.dirname(__file__), "resources", name)
