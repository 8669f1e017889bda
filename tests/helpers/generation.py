"""A tiny model that decodes differently per prompt, an independent greedy decoder to check generation
against, and a stand-in for the vllm module."""
import pytest
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
    """Stands in for the vllm module: records what VLLMBackend passes. String prompts get canned outputs;
    token-id prompts ({"prompt_token_ids": [...]}) get fake samples, drawn from the tokenizer's vocabulary by
    each request's seed and prompt alone (deterministic, whatever else the call holds), ending at EOS (about
    one token in four) or max_tokens; stop strings are not applied.

    Built from a folder holding model.safetensors (as the RL sampler writes), an engine loads those weights
    as its own; `llm_engine.model_executor.driver_worker.model_runner.model.load_weights` replaces them by
    name (an unknown name or shape is an error, as in vLLM), and `events` logs the loads, prefix-cache resets
    and generate calls in order. As in vLLM, the engine is out of this process (no model_executor) unless
    VLLM_ENABLE_V1_MULTIPROCESSING=0. Every engine built lands in `engines`."""

    engines: list = []

    class SamplingParams:
        def __init__(self, **fields):
            self.fields = fields

    class LLM:
        def __init__(self, **options):
            import os
            from types import SimpleNamespace as NS

            self.options = options
            self.calls = []
            self.events = []  # ("load_weights", name) | ("reset_prefix_cache",) | ("generate", requests)
            self.loaded = []  # (name, tensor) per load_weights entry, in order
            self.generated_with = []  # the engine's weights at each generate call
            self.weights = self._start_weights(options.get("model"))
            self.start_weights = {k: v.clone() for k, v in self.weights.items()}
            self._tokenizer = None
            if os.environ.get("VLLM_ENABLE_V1_MULTIPROCESSING", "1") == "0":
                model = NS(load_weights=self._load_weights)
                self.llm_engine = NS(model_executor=NS(driver_worker=NS(model_runner=NS(model=model))))
            else:  # V1's engine core runs in another process: nothing of the model here
                self.llm_engine = NS(engine_core=object())
            FakeVLLM.engines.append(self)

        @staticmethod
        def _start_weights(folder):
            import os

            from safetensors.torch import load_file
            path = os.path.join(str(folder), "model.safetensors")
            return load_file(path) if os.path.exists(path) else {}

        def _load_weights(self, weights):
            for name, tensor in weights:
                if name not in self.weights:
                    raise KeyError(f"fake vLLM model has no parameter {name!r}")
                if tuple(tensor.shape) != tuple(self.weights[name].shape):
                    raise ValueError(f"{name}: shape {tuple(tensor.shape)} for {tuple(self.weights[name].shape)}")
                self.events.append(("load_weights", name))
                self.weights[name] = tensor.detach().clone()
                self.loaded.append((name, self.weights[name]))

        def reset_prefix_cache(self):
            self.events.append(("reset_prefix_cache",))
            return True

        def tokenizer(self):
            if self._tokenizer is None:
                from transformers import AutoTokenizer
                self._tokenizer = AutoTokenizer.from_pretrained(self.options.get("tokenizer") or self.options["model"])
            return self._tokenizer

        def _outputs(self, count):
            from types import SimpleNamespace as NS
            steps = [{5: NS(logprob=-0.1, rank=1, decoded_token="a"), 9: NS(logprob=-2.5, rank=2, decoded_token="b")},
                     {9: NS(logprob=-3.0, rank=3, decoded_token="b"), 5: NS(logprob=-0.2, rank=1, decoded_token="a"),
                      7: NS(logprob=-1.0, rank=2, decoded_token="c")}]
            samples = [NS(text="ab", token_ids=[5, 9], finish_reason="stop", logprobs=steps),
                       NS(text="", token_ids=[], finish_reason="abort", logprobs=None)]
            return [NS(prompt_token_ids=[1, 2, 3], outputs=samples) for _ in range(count)]

        def _sampled(self, prompt_ids, fields):
            import random
            from types import SimpleNamespace as NS
            tok = self.tokenizer()
            ordinary = sorted(set(range(len(tok))) - set(tok.all_special_ids))
            samples = []
            for k in range(fields["n"]):
                seed = None if fields["temperature"] == 0 else fields["seed"]
                rng = random.Random(f"{seed}|{k}|{prompt_ids}")
                ids = []
                while len(ids) < fields["max_tokens"] and (not ids or ids[-1] != tok.eos_token_id):
                    ids.append(tok.eos_token_id if rng.random() < 0.25 else rng.choice(ordinary))
                logprobs = None
                if fields["logprobs"] is not None:
                    logprobs = [{t: NS(logprob=-1.0 - (t % 7) / 10, rank=1, decoded_token=tok.decode([t]))}
                                for t in ids]
                samples.append(NS(text=tok.decode(ids, skip_special_tokens=True), token_ids=ids, logprobs=logprobs,
                                  finish_reason="stop" if ids[-1] == tok.eos_token_id else "length"))
            return NS(prompt_token_ids=list(prompt_ids), outputs=samples)

        def chat(self, messages, sampling_params, use_tqdm, add_generation_prompt):
            self.calls.append(("chat", messages, sampling_params.fields, add_generation_prompt))
            return self._outputs(len(messages))

        def generate(self, prompts, sampling_params, use_tqdm):
            many = isinstance(sampling_params, list)
            fields = [p.fields for p in sampling_params] if many else sampling_params.fields
            self.calls.append(("generate", prompts, fields))
            if not prompts or not isinstance(prompts[0], dict):
                return self._outputs(len(prompts))
            per_request = fields if many else [fields] * len(prompts)
            self.events.append(("generate", [(p["prompt_token_ids"], f) for p, f in zip(prompts, per_request)]))
            self.generated_with.append({k: v.clone() for k, v in self.weights.items()})
            return [self._sampled(p["prompt_token_ids"], f) for p, f in zip(prompts, per_request, strict=True)]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny matmuls gain nothing from a second thread, and on a shared CPU its spinning costs 100x. A module
    that imports this fixture runs its tests on one thread."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
