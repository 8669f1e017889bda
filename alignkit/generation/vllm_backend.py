"""Generation with vLLM's offline engine (`vllm.LLM`), for fast sampling on GPUs.

vLLM is imported only when a VLLMBackend is built, so alignkit works without it. Results
follow the same conventions as LocalBackend: per-request seeds, text cut before stop
strings, raw-model log-probabilities with the generated token first in each dict. One
difference: vLLM reports log-probs for every generated token, including an EOS or the
tokens of a stop string that the text leaves out.

With `params.return_tokens`, `token_ids` are always vLLM's sampled ids. `logprobs` are the
log-probs vLLM reports for them, filled only where those are what `Completion.logprobs` means
(`samples_from_model_distribution`: greedy, or temperature 1 without top-k/top-p), since which
distribution vLLM reports depends on its version and engine options; otherwise None, and a
trainer recomputes them. An engine built with `logprobs_mode="processed_logprobs"` (vLLM >= 0.10.2)
reports the distribution each token was drawn from (after temperature, top-k and top-p), so then they
are filled for every setting.

Online RL samples through `complete_ids` (prompts as token ids, so the trainer scores exactly what was
sampled from, one seed per sample as LocalBackend derives them) and updates the engine in place with
`push_weights`, which needs the engine in this process (see ENGINE_NOT_IN_PROCESS).

Streaming (`stream_chat`, `stream_complete`): `vllm.LLM.generate` returns only finished outputs, so
the requests go to the engine under it instead (`llm.llm_engine`: `add_request`, then `step()`
until they finish, the loop vLLM documents for its LLMEngine), whose outputs hold each sample's text
so far (the default cumulative output kind); the new part of it is handed out each step. Text that
a stop string may still claim is held back (as LocalBackend does), the last delta is the rest of
vLLM's final text, and closing the iterator aborts the requests. Chat prompts are rendered here
with vLLM's tokenizer and its template (or `chat_template`), and encoded with BOS once, as
`llm.chat` renders them. Not run against a real vLLM in this project's tests (no GPU): they use a
stand-in engine with that API.
"""
from __future__ import annotations

import importlib.util
import sys
import uuid
from typing import TYPE_CHECKING, Any, Iterable, Iterator, Sequence

from alignkit.generation.backend import (Completion, Message, SamplingParams, StreamDelta, check_conversation,
                                         check_sampling_params, samples_from_model_distribution)

if TYPE_CHECKING:
    import torch

MULTIPROCESSING_ENV = "VLLM_ENABLE_V1_MULTIPROCESSING"
ENGINE_NOT_IN_PROCESS = (
    f"the vLLM engine's model is not in this process, so new weights cannot be loaded into it: vLLM's V1 engine "
    f"runs in a separate process unless {MULTIPROCESSING_ENV}=0. Set it in the environment before starting "
    f"(export {MULTIPROCESSING_ENV}=0)")


def import_vllm():
    try:
        import vllm
    except ImportError as error:
        raise ImportError("VLLMBackend needs vLLM, which is not installed. Install it on a Linux machine "
                          "with a CUDA GPU (pip install vllm), or use LocalBackend instead.") from error
    return vllm


def vllm_installed() -> bool:
    """Whether `import vllm` would find a package, found without importing it (which takes seconds)."""
    if "vllm" in sys.modules:
        return sys.modules["vllm"] is not None
    try:
        return importlib.util.find_spec("vllm") is not None
    except (ImportError, ValueError):
        return False


class VLLMBackend:
    """`Backend` over `vllm.LLM`; extra keyword arguments go to `vllm.LLM` unchanged. `chat_template` (Jinja
    text) replaces the tokenizer's own in `chat`."""

    def __init__(self, model_path: str, *, model_id: str | None = None, tokenizer: str | None = None,
                 dtype: str = "auto", tensor_parallel_size: int = 1, gpu_memory_utilization: float = 0.9,
                 max_model_len: int | None = None, use_tqdm: bool = False, chat_template: str | None = None,
                 **engine_options: Any):
        vllm = import_vllm()
        self._sampling_params_class = vllm.SamplingParams
        # The sampled tokens' log-probs are those of the distribution drawn from, whatever the settings.
        self._drawn_logprobs = engine_options.get("logprobs_mode") == "processed_logprobs"
        self.llm = vllm.LLM(model=model_path, tokenizer=tokenizer, dtype=dtype,
                            tensor_parallel_size=tensor_parallel_size,
                            gpu_memory_utilization=gpu_memory_utilization, max_model_len=max_model_len,
                            **engine_options)
        self.model_id = model_id or model_path
        self.use_tqdm = use_tqdm
        self.chat_template = chat_template or None

    def chat(self, conversations: Sequence[list[Message]], params: SamplingParams) -> list[list[Completion]]:
        for index, conversation in enumerate(conversations):
            check_conversation(conversation, index)
        # vLLM renders the template and tokenizes it without adding a second BOS.
        template = {"chat_template": self.chat_template} if self.chat_template else {}
        outputs = self.llm.chat(list(conversations), self._vllm_params(params), use_tqdm=self.use_tqdm,
                                add_generation_prompt=True, **template)
        return [self._completions(output, params) for output in outputs]

    def complete(self, prompts: Sequence[str], params: SamplingParams) -> list[list[Completion]]:
        for index, prompt in enumerate(prompts):
            if not isinstance(prompt, str):
                raise ValueError(f"prompt {index}: expected a string, got {type(prompt).__name__}")
        outputs = self.llm.generate(list(prompts), self._vllm_params(params), use_tqdm=self.use_tqdm)
        return [self._completions(output, params) for output in outputs]

    def stream_chat(self, conversations: Sequence[list[Message]], params: SamplingParams) -> Iterator[StreamDelta]:
        """`chat`, handed out step by step (see the module docstring); input is checked before this returns."""
        from alignkit.data.chat import encode_text

        for index, conversation in enumerate(conversations):
            check_conversation(conversation, index)
        tokenizer = self.llm.get_tokenizer()
        template = {"chat_template": self.chat_template} if self.chat_template else {}
        prompts = [{"prompt_token_ids": encode_text(tokenizer, tokenizer.apply_chat_template(
                        c, tokenize=False, add_generation_prompt=True, **template))} for c in conversations]
        return self._stream(prompts, params)

    def stream_complete(self, prompts: Sequence[str], params: SamplingParams) -> Iterator[StreamDelta]:
        """`complete`, handed out step by step; input is checked before this returns."""
        for index, prompt in enumerate(prompts):
            if not isinstance(prompt, str):
                raise ValueError(f"prompt {index}: expected a string, got {type(prompt).__name__}")
        return self._stream(list(prompts), params)

    def _stream(self, prompts: list, params: SamplingParams) -> Iterator[StreamDelta]:
        if params.logprobs is not None or params.return_tokens:
            raise ValueError("streamed deltas carry text only: SamplingParams.logprobs must be None and "
                             "return_tokens False")
        return self._stream_requests(prompts, self._vllm_params(params), params)

    def _stream_requests(self, prompts: list, vllm_params, params: SamplingParams) -> Iterator[StreamDelta]:
        from alignkit.generation.local import streamable_text

        engine = self.llm.llm_engine
        request_ids = [f"alignkit-stream-{uuid.uuid4().hex}" for _ in prompts]
        prompt_of = {request_id: i for i, request_id in enumerate(request_ids)}
        sent: dict[tuple[int, int], str] = {}
        finished: set[tuple[int, int]] = set()
        expected = len(prompts) * params.n
        try:
            for request_id, prompt in zip(request_ids, prompts):
                engine.add_request(request_id, prompt, vllm_params)
            while len(finished) < expected and engine.has_unfinished_requests():
                for output in engine.step():
                    i = prompt_of.get(output.request_id)
                    if i is None:
                        continue
                    for sample in output.outputs:
                        key = (i, sample.index)
                        if key in finished or not 0 <= sample.index < params.n:
                            continue
                        before = sent.get(key, "")
                        if sample.finish_reason is None:
                            text, _ = streamable_text(sample.text, params.stop)
                            if len(text) > len(before) and text.startswith(before):
                                sent[key] = text
                                yield StreamDelta(i, sample.index, text[len(before):])
                            continue
                        if not sample.text.startswith(before):
                            raise RuntimeError(f"vLLM's final text for prompt {i}, sample {sample.index} does not "
                                               f"start with the text already streamed ({before[-40:]!r})")
                        finished.add(key)
                        finish_reason, error = sample.finish_reason, None
                        if finish_reason not in ("stop", "length"):
                            finish_reason, error = "error", f"vLLM ended the sample with finish_reason={sample.finish_reason!r}"
                        yield StreamDelta(i, sample.index, sample.text[len(before):], finish_reason,
                                          len(output.prompt_token_ids or []), len(sample.token_ids), error)
            for i in range(len(prompts)):
                for j in range(params.n):
                    if (i, j) not in finished:
                        yield StreamDelta(i, j, finish_reason="error",
                                          error="vLLM's engine ran out of requests before this sample finished")
        finally:
            unfinished = [r for r, i in prompt_of.items() if any((i, j) not in finished for j in range(params.n))]
            if unfinished:
                engine.abort_request(unfinished)

    def complete_ids(self, prompt_ids: Sequence[Sequence[int]], params: SamplingParams) -> list[list[Completion]]:
        """Continuations of prompts given as token ids, generated from exactly those ids (no template or
        tokenizer in between). With `params.seed` each sample is its own request seeded as LocalBackend seeds
        its rows (from the seed, the prompt's ids and the sample's index), so a sample does not depend on
        what else the call holds; without it vLLM draws `n` per prompt."""
        from alignkit.generation.local import _row_seed

        prompt_ids = [[int(t) for t in ids] for ids in prompt_ids]
        for index, ids in enumerate(prompt_ids):
            if not ids:
                raise ValueError(f"prompt {index}: no token ids")
        if params.seed is None:
            per_prompt, requests = 1, [({"prompt_token_ids": ids}, self._vllm_params(params)) for ids in prompt_ids]
        else:
            per_prompt = params.n
            requests = [({"prompt_token_ids": ids}, self._vllm_params(params, n=1, seed=_row_seed(params.seed, ids, j)))
                        for ids in prompt_ids for j in range(params.n)]
        outputs = self.llm.generate([prompt for prompt, _ in requests], [p for _, p in requests],
                                    use_tqdm=self.use_tqdm)
        if len(outputs) != len(requests):
            raise RuntimeError(f"vLLM returned {len(outputs)} outputs for {len(requests)} requests")
        return [[c for output in outputs[i * per_prompt:(i + 1) * per_prompt]
                 for c in self._completions(output, params)] for i in range(len(prompt_ids))]

    def engine_model(self) -> torch.nn.Module:
        """The engine's torch model, when the engine runs in this process (as vLLM 0.10-0.11 lay it out);
        else ValueError(ENGINE_NOT_IN_PROCESS): a setting to change, reported in one line by the CLI."""
        try:
            return self.llm.llm_engine.model_executor.driver_worker.model_runner.model
        except AttributeError:
            raise ValueError(ENGINE_NOT_IN_PROCESS) from None

    def push_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> int:
        """Load weights into the running engine, one tensor at a time (names as in the Hugging Face checkpoint
        it started from), then drop its prefix cache, whose KV entries the old weights computed. Returns how
        many tensors were loaded."""
        model = self.engine_model()
        count = 0
        for name, tensor in named_tensors:
            model.load_weights([(name, tensor)])
            count += 1
        self.llm.reset_prefix_cache()
        return count

    def _vllm_params(self, params: SamplingParams, *, n: int | None = None, seed: int | None = None):
        check_sampling_params(params)
        logprobs = params.logprobs
        if logprobs is None and params.return_tokens and self._reports_drawn_logprobs(params):
            logprobs = 0  # the sampled token's log-prob alone: all that Completion.logprobs needs
        return self._sampling_params_class(
            n=params.n if n is None else n, temperature=params.temperature, top_p=params.top_p,
            top_k=params.top_k if params.top_k > 0 else -1,  # -1 disables top-k in every vLLM version
            seed=params.seed if seed is None else seed, stop=list(params.stop), max_tokens=params.max_tokens,
            logprobs=logprobs)

    def _reports_drawn_logprobs(self, params: SamplingParams) -> bool:
        """Whether the log-probs vLLM reports are those `Completion.logprobs` means."""
        return self._drawn_logprobs or samples_from_model_distribution(params)

    def _completions(self, output, params: SamplingParams) -> list[Completion]:
        completions = []
        for sample in output.outputs:
            finish_reason, error = sample.finish_reason, None
            if finish_reason not in ("stop", "length"):  # "abort" or unfinished
                finish_reason, error = "error", f"vLLM ended the sample with finish_reason={sample.finish_reason!r}"
            top = token_ids = chosen = None
            if sample.logprobs is not None and params.logprobs is not None:
                top = [_logprob_entry(token_id, step) for token_id, step in zip(sample.token_ids, sample.logprobs)]
            if params.return_tokens:
                token_ids = list(sample.token_ids)
                if sample.logprobs is not None and self._reports_drawn_logprobs(params):
                    chosen = [step[token_id].logprob for token_id, step in zip(sample.token_ids, sample.logprobs)]
            completions.append(Completion(text=sample.text, finish_reason=finish_reason,
                                          prompt_tokens=len(output.prompt_token_ids or []),
                                          completion_tokens=len(sample.token_ids), top_logprobs=top, error=error,
                                          token_ids=token_ids, logprobs=chosen))
        return completions


def _logprob_entry(chosen_id: int, step: dict) -> dict[str, float]:
    """vLLM's {token id: Logprob} for one position, as {text: logprob} with the chosen token first."""
    def text(token_id: int) -> str:
        decoded = step[token_id].decoded_token
        return decoded if decoded is not None else f"<token {token_id}>"

    entry = {text(chosen_id): step[chosen_id].logprob}
    ranked = sorted(step.items(), key=lambda item: item[1].rank if item[1].rank is not None else 0)
    for token_id, logprob in ranked:
        if token_id != chosen_id:
            entry.setdefault(text(token_id), logprob.logprob)
    return entry
