"""A tiny model that decodes differently per prompt, an independent greedy decoder to check generation
against, and a stand-in for the vllm module."""
import torch

from alignkit.models.tiny import tiny_model

CONVERSATIONS = [
    [{"role": "user", "content": "hello"}],
    [{"role": "system", "content": "Answer in JSON."},
     {"role": "user", "content": "What is the capital of France? Please reply in lowercase letters only."}],
    [{"role": "user", "content": "Numbers 0 1 2"}],
    [{"role": "user", "content": "Translate, summarise, explain, list, write a poem about the sea."},
     {"role": "assistant", "content": "Sure, here are three bullet points."},
     {"role": "user", "content": "one more"}],
]


def sharp_model(tokenizer, seed: int = 0):
    """A tiny model with large random weights: near-uniform default init makes every prompt
    decode to the same repeated token, which would let wrong batching pass unnoticed."""
    model = tiny_model(tokenizer)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for weight in model.parameters():
            if weight.dim() > 1:
                weight.copy_(torch.randn(weight.shape, generator=generator) * 0.3)
    return model


def reference_greedy(model, prompt_ids: list[int], max_tokens: int, eos_ids: set[int]) -> list[int]:
    """Argmax one token at a time over the full sequence: no batching, padding or cache."""
    ids = list(prompt_ids)
    generated = []
    with torch.no_grad():
        for _ in range(max_tokens):
            next_id = int(model(torch.tensor([ids])).logits[0, -1].argmax())
            generated.append(next_id)
            ids.append(next_id)
            if next_id in eos_ids:
                break
    return generated


def chat_ids(tokenizer, conversation) -> list[int]:
    text = tokenizer.apply_chat_template(conversation, tokenize=False, add_generation_prompt=True)
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def decode(tokenizer, ids) -> str:
    return tokenizer.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)


class FakeVLLM:
    """Stands in for the vllm module: records what VLLMBackend passes and returns canned outputs."""

    class SamplingParams:
        def __init__(self, **fields):
            self.fields = fields

    class LLM:
        def __init__(self, **options):
            self.options = options
            self.calls = []

        def _outputs(self, count):
            from types import SimpleNamespace as NS
            steps = [{5: NS(logprob=-0.1, rank=1, decoded_token="a"), 9: NS(logprob=-2.5, rank=2, decoded_token="b")},
                     {9: NS(logprob=-3.0, rank=3, decoded_token="b"), 5: NS(logprob=-0.2, rank=1, decoded_token="a"),
                      7: NS(logprob=-1.0, rank=2, decoded_token="c")}]
            samples = [NS(text="ab", token_ids=[5, 9], finish_reason="stop", logprobs=steps),
                       NS(text="", token_ids=[], finish_reason="abort", logprobs=None)]
            return [NS(prompt_token_ids=[1, 2, 3], outputs=samples) for _ in range(count)]

        def chat(self, messages, sampling_params, use_tqdm, add_generation_prompt):
            self.calls.append(("chat", messages, sampling_params.fields, add_generation_prompt))
            return self._outputs(len(messages))

        def generate(self, prompts, sampling_params, use_tqdm):
            self.calls.append(("generate", prompts, sampling_params.fields))
            return self._outputs(len(prompts))
