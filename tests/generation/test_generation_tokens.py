"""Sampled token ids and their log-probs from LocalBackend, checked against a teacher-forced forward pass."""
import dataclasses
import math

import pytest
import torch

from alignkit.generation.backend import SamplingParams
from alignkit.generation.local import LocalBackend
from alignkit.models.tiny import tiny_tokenizer
from tests.helpers.generation import CONVERSATIONS, FakeVLLM, chat_ids, decode, reference_greedy, sharp_model


@pytest.fixture(scope="module")
def chatml():
    tokenizer = tiny_tokenizer("chatml")
    return tokenizer, sharp_model(tokenizer)


def drawn_logprobs(model, prompt: list[int], tokens: list[int], params: SamplingParams) -> list[float]:
    """Each token's log-prob under the distribution it was drawn from, by one unpadded forward pass:
    the model's own when greedy, else logits / temperature with top-k, then top-p, renormalised."""
    with torch.no_grad():
        logits = model(torch.tensor([prompt + tokens])).logits[0].float()
    result = []
    for t, token in enumerate(tokens):
        scores = logits[len(prompt) - 1 + t]
        if params.temperature > 0:
            scores = scores / params.temperature
            if params.top_k:
                scores = scores.masked_fill(scores < scores.topk(params.top_k).values[-1], float("-inf"))
            if params.top_p < 1:
                probs, order = torch.softmax(scores, -1).sort(descending=True)
                mass_before = probs.cumsum(0) - probs
                scores = scores.clone()
                scores[order[mass_before >= params.top_p]] = float("-inf")
        result.append(float(torch.log_softmax(scores, -1)[token]))
    return result


@pytest.mark.parametrize("params", [
    SamplingParams(max_tokens=12, return_tokens=True),
    SamplingParams(max_tokens=12, temperature=0.7, n=2, seed=3, return_tokens=True),
    SamplingParams(max_tokens=12, temperature=1.3, top_k=20, top_p=0.8, n=2, seed=4, return_tokens=True),
], ids=["greedy", "temperature", "top-k-top-p"])
def test_token_ids_and_logprobs_match_teacher_forcing_across_a_padded_batch(chatml, params):
    tokenizer, model = chatml
    assert len({len(chat_ids(tokenizer, c)) for c in CONVERSATIONS}) == len(CONVERSATIONS)  # padding is exercised
    results = LocalBackend(model, tokenizer, batch_size=len(CONVERSATIONS)).chat(CONVERSATIONS, params)
    for conversation, samples in zip(CONVERSATIONS, results):
        prompt = chat_ids(tokenizer, conversation)
        for sample in samples:
            assert len(sample.token_ids) == len(sample.logprobs) == sample.completion_tokens > 0
            assert decode(tokenizer, sample.token_ids) == sample.text
            if params.temperature == 0:
                assert sample.token_ids == reference_greedy(model, prompt, 12, {tokenizer.eos_token_id})
            expected = drawn_logprobs(model, prompt, sample.token_ids, params)
            assert sample.logprobs == pytest.approx(expected, abs=1e-4)
    if params.n > 1:
        assert any(a.token_ids != b.token_ids for a, b in results)  # the samples are really drawn


def test_raw_prompts_carry_tokens_too(chatml):
    tokenizer, model = chatml
    params = SamplingParams(max_tokens=8, temperature=0.9, seed=7, return_tokens=True)
    prompts = ["Paris is", "The quick brown fox jumps over the lazy dog and then"]
    backend = LocalBackend(model, tokenizer, batch_size=2)
    for prompt, (sample,) in zip(prompts, backend.complete(prompts, params)):
        assert decode(tokenizer, sample.token_ids) == sample.text
        prompt_ids = tokenizer(prompt)["input_ids"]
        assert sample.logprobs == pytest.approx(drawn_logprobs(model, prompt_ids, sample.token_ids, params), abs=1e-4)


def test_the_token_that_ends_the_answer_is_kept(chatml):
    tokenizer, model = chatml
    backend = LocalBackend(model, tokenizer)
    full = backend.chat([CONVERSATIONS[1]], SamplingParams(max_tokens=30, return_tokens=True))[0][0]
    start = next(i for i in range(3, len(full.text) - 2) if "\ufffd" not in full.text[i:i + 2])
    stop = full.text[start:start + 2]
    cut = backend.chat([CONVERSATIONS[1]], SamplingParams(max_tokens=30, stop=(stop,), return_tokens=True))[0][0]
    # The text leaves the stop string out; the tokens keep everything the model generated up to it.
    assert cut.finish_reason == "stop" and cut.text == full.text[:full.text.find(stop)]
    assert decode(tokenizer, cut.token_ids).startswith(cut.text + stop)
    assert not decode(tokenizer, cut.token_ids[:-1]).startswith(cut.text + stop)
    assert cut.token_ids == full.token_ids[:len(cut.token_ids)]
    assert cut.logprobs == pytest.approx(full.logprobs[:len(cut.token_ids)], abs=1e-5)


def test_eos_is_among_the_tokens():
    tokenizer = tiny_tokenizer("chatml")
    model = sharp_model(tokenizer)
    with torch.no_grad():  # a head that always prefers EOS
        head = torch.nn.Linear(model.config.hidden_size, model.config.vocab_size, bias=True)
        head.weight.copy_(model.lm_head.weight)
        head.bias.zero_()
        head.bias[tokenizer.eos_token_id] = 1e4
    model.lm_head = head
    (sample,), = LocalBackend(model, tokenizer).chat(CONVERSATIONS[:1], SamplingParams(max_tokens=5,
                                                                                      return_tokens=True))
    assert (sample.text, sample.finish_reason, sample.token_ids) == ("", "stop", [tokenizer.eos_token_id])
    assert math.isclose(sample.logprobs[0], 0.0, abs_tol=1e-6)


def test_tokens_only_when_asked(chatml):
    tokenizer, model = chatml
    params = SamplingParams(max_tokens=6, temperature=0.8, seed=1, logprobs=1)
    backend = LocalBackend(model, tokenizer)
    asked = backend.chat(CONVERSATIONS[:2], dataclasses.replace(params, return_tokens=True))
    plain = backend.chat(CONVERSATIONS[:2], params)
    for (a,), (b,) in zip(asked, plain):
        assert (b.token_ids, b.logprobs) == (None, None)
        assert (a.text, a.top_logprobs) == (b.text, b.top_logprobs)  # asking changes nothing else


def test_vllm_backend_returns_its_token_ids_and_model_logprobs_where_they_apply(monkeypatch):
    import sys
    from alignkit.generation.vllm_backend import VLLMBackend

    monkeypatch.setitem(sys.modules, "vllm", FakeVLLM)
    backend = VLLMBackend("/models/x")
    (greedy, aborted), = backend.chat(CONVERSATIONS[:1], SamplingParams(return_tokens=True))
    assert backend.llm.calls[0][2]["logprobs"] == 0  # the sampled tokens' log-probs, nothing more
    assert (greedy.token_ids, greedy.logprobs, greedy.top_logprobs) == ([5, 9], [-0.1, -3.0], None)
    assert aborted.finish_reason == "error" and (aborted.token_ids, aborted.logprobs) == ([], None)
    (warm, _), = backend.complete(["x"], SamplingParams(temperature=0.5, return_tokens=True))
    # vLLM's reported log-probs are not those of a temperature-0.5 draw in every version: left out.
    assert backend.llm.calls[1][2]["logprobs"] is None
    assert (warm.token_ids, warm.logprobs) == ([5, 9], None)
