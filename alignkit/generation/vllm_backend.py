"""Generation with vLLM's offline engine (`vllm.LLM`), for fast sampling on GPUs.

vLLM is imported only when a VLLMBackend is built, so alignkit works without it. Results
follow the same conventions as LocalBackend: per-request seeds, text cut before stop
strings, raw-model log-probabilities with the generated token first in each dict. One
difference: vLLM reports log-probs for every generated token, including an EOS or the
tokens of a stop string that the text leaves out.
"""
from __future__ import annotations

from typing import Any, Sequence

from alignkit.generation.backend import (Completion, Message, SamplingParams, check_conversation,
                                         check_sampling_params)


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
        return [self._completions(output) for output in outputs]

    def complete(self, prompts: Sequence[str], params: SamplingParams) -> list[list[Completion]]:
        for index, prompt in enumerate(prompts):
            if not isinstance(prompt, str):
                raise ValueError(f"prompt {index}: expected a string, got {type(prompt).__name__}")
        outputs = self.llm.generate(list(prompts), self._vllm_params(params), use_tqdm=self.use_tqdm)
        return [self._completions(output) for output in outputs]

    def _vllm_params(self, params: SamplingParams):
        check_sampling_params(params)
        return self._sampling_params_class(
            n=params.n, temperature=params.temperature, top_p=params.top_p,
            top_k=params.top_k if params.top_k > 0 else -1,  # -1 disables top-k in every vLLM version
            seed=params.seed, stop=list(params.stop), max_tokens=params.max_tokens, logprobs=params.logprobs)

    @staticmethod
    def _completions(output) -> list[Completion]:
        completions = []
        for sample in output.outputs:
            finish_reason, error = sample.finish_reason, None
            if finish_reason not in ("stop", "length"):  # "abort" or unfinished
                finish_reason, error = "error", f"vLLM ended the sample with finish_reason={sample.finish_reason!r}"
            top = None
            if sample.logprobs is not None:
                top = [_logprob_entry(token_id, step) for token_id, step in zip(sample.token_ids, sample.logprobs)]
            completions.append(Completion(text=sample.text, finish_reason=finish_reason,
                                          prompt_tokens=len(output.prompt_token_ids or []),
                                          completion_tokens=len(sample.token_ids), top_logprobs=top, error=error))
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
