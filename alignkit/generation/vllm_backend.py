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
trainer recomputes them.
"""
from __future__ import annotations

from typing import Any, Sequence

from alignkit.generation.backend import (Completion, Message, SamplingParams, check_conversation,
                                         check_sampling_params, samples_from_model_distribution)


def _import_vllm():
    try:
        import vllm
    except ImportError as error:
        raise ImportError("VLLMBackend needs vLLM, which is not installed. Install it on a Linux machine "
                          "with a CUDA GPU (pip install vllm), or use LocalBackend instead.") from error
    return vllm


class VLLMBackend:
    """`Backend` over `vllm.LLM`; extra keyword arguments go to `vllm.LLM` unchanged."""

    def __init__(self, model_path: str, *, model_id: str | None = None, tokenizer: str | None = None,
                 dtype: str = "auto", tensor_parallel_size: int = 1, gpu_memory_utilization: float = 0.9,
                 max_model_len: int | None = None, use_tqdm: bool = False, **engine_options: Any):
        vllm = _import_vllm()
        self._sampling_params_class = vllm.SamplingParams
        self.llm = vllm.LLM(model=model_path, tokenizer=tokenizer, dtype=dtype,
                            tensor_parallel_size=tensor_parallel_size,
                            gpu_memory_utilization=gpu_memory_utilization, max_model_len=max_model_len,
                            **engine_options)
        self.model_id = model_id or model_path
        self.use_tqdm = use_tqdm

    def chat(self, conversations: Sequence[list[Message]], params: SamplingParams) -> list[list[Completion]]:
        for index, conversation in enumerate(conversations):
            check_conversation(conversation, index)
        # vLLM renders the template and tokenizes it without adding a second BOS.
        outputs = self.llm.chat(list(conversations), self._vllm_params(params), use_tqdm=self.use_tqdm,
                                add_generation_prompt=True)
        return [self._completions(output, params) for output in outputs]

    def complete(self, prompts: Sequence[str], params: SamplingParams) -> list[list[Completion]]:
        for index, prompt in enumerate(prompts):
            if not isinstance(prompt, str):
                raise ValueError(f"prompt {index}: expected a string, got {type(prompt).__name__}")
        outputs = self.llm.generate(list(prompts), self._vllm_params(params), use_tqdm=self.use_tqdm)
        return [self._completions(output, params) for output in outputs]

    def _vllm_params(self, params: SamplingParams):
        check_sampling_params(params)
        logprobs = params.logprobs
        if logprobs is None and params.return_tokens and samples_from_model_distribution(params):
            logprobs = 0  # the sampled token's log-prob alone: all that Completion.logprobs needs
        return self._sampling_params_class(
            n=params.n, temperature=params.temperature, top_p=params.top_p,
            top_k=params.top_k if params.top_k > 0 else -1,  # -1 disables top-k in every vLLM version
            seed=params.seed, stop=list(params.stop), max_tokens=params.max_tokens, logprobs=logprobs)

    @staticmethod
    def _completions(output, params: SamplingParams) -> list[Completion]:
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
                if sample.logprobs is not None and samples_from_model_distribution(params):
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
