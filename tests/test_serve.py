"""The OpenAI-compatible server, spoken to over HTTP by the official openai client."""
import math
import threading
import time

import httpx
import openai
import pytest
import torch

from alignkit.generation.backend import Completion, SamplingParams
from alignkit.generation.local import LocalBackend
from alignkit.models.tiny import tiny_model, tiny_tokenizer
from alignkit.serving.app import create_app
from alignkit.serving.background import start_in_background

HELLO = [{"role": "user", "content": "hello"}]
QUESTION = [{"role": "system", "content": "Answer in JSON."},
            {"role": "user", "content": "What is the capital of France?"}]


class CountingBackend:
    """Wraps a backend, counting prompts per call, optionally slowed down by `delay` seconds;
    prompts containing "boom" raise ValueError."""

    def __init__(self, inner):
        self.inner = inner
        self.model_id = inner.model_id
        self.calls: list[int] = []
        self.delay = 0.0
        self.lock = threading.Lock()

    def _record(self, prompts):
        with self.lock:
            self.calls.append(len(prompts))
        time.sleep(self.delay)
        if any("boom" in str(p) for p in prompts):
            raise ValueError("prompt contains boom")

    def chat(self, conversations, params):
        self._record(conversations)
        return self.inner.chat(conversations, params)

    def complete(self, prompts, params):
        self._record(prompts)
        return self.inner.complete(prompts, params)


@pytest.fixture(scope="module")
def served():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matmuls: a second thread only spins on a shared CPU
    tokenizer = tiny_tokenizer("chatml")
    model = tiny_model(tokenizer)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():  # large random weights, so that different prompts give different text
        for weight in model.parameters():
            if weight.dim() > 1:
                weight.copy_(torch.randn(weight.shape, generator=generator) * 0.3)
    local = LocalBackend(model, tokenizer, batch_size=4)
    backend = CountingBackend(local)
    with start_in_background(create_app(backend, "tiny", default_max_tokens=8)) as server:
        client = openai.OpenAI(base_url=server.base_url + "/v1", api_key="unused", max_retries=0)
        yield local, backend, client, server.base_url
    torch.set_num_threads(previous)


def test_models(served):
    _, _, client, _ = served
    assert [m.id for m in client.models.list().data] == ["tiny"]


def test_chat_matches_backend(served):
    local, _, client, _ = served
    response = client.chat.completions.create(model="tiny", messages=QUESTION, max_tokens=10, temperature=0)
    (expected,), = local.chat([QUESTION], SamplingParams(max_tokens=10))
    choice = response.choices[0]
    assert (choice.message.content, choice.finish_reason, choice.message.role) == \
           (expected.text, expected.finish_reason, "assistant")
    assert (response.usage.prompt_tokens, response.usage.completion_tokens) == \
           (expected.prompt_tokens, expected.completion_tokens)
    assert response.usage.total_tokens == expected.prompt_tokens + expected.completion_tokens
    default = client.chat.completions.create(model="tiny", messages=QUESTION, temperature=0)
    assert default.usage.completion_tokens == 8  # default_max_tokens


def test_chat_n_seed_and_logprobs(served):
    local, _, client, _ = served
    request = dict(model="tiny", messages=HELLO, max_tokens=6, n=3, temperature=1.0, seed=7,
                   logprobs=True, top_logprobs=2)
    first = client.chat.completions.create(**request)
    again = client.chat.completions.create(**request)
    assert [c.index for c in first.choices] == [0, 1, 2]
    texts = [c.message.content for c in first.choices]
    assert texts == [c.message.content for c in again.choices]
    assert texts == [c.text for c in local.chat([HELLO], SamplingParams(max_tokens=6, n=3, temperature=1.0, seed=7))[0]]
    assert len(first.choices) == 3
    assert first.usage.completion_tokens == sum(len(c.logprobs.content) for c in first.choices)
    for choice in first.choices:
        steps = choice.logprobs.content
        assert len(steps) == 6
        for step in steps:
            assert len(step.top_logprobs) == 2
            assert step.top_logprobs[0].logprob >= step.top_logprobs[1].logprob
            assert step.bytes == list(step.token.encode())
            in_top = [t for t in step.top_logprobs if t.token == step.token]
            assert not in_top or math.isclose(in_top[0].logprob, step.logprob)


def test_stop_as_string_and_list(served):
    _, _, client, _ = served
    full = client.chat.completions.create(model="tiny", messages=QUESTION, max_tokens=30, temperature=0)
    text = full.choices[0].message.content
    start = next(i for i in range(2, len(text) - 2) if "\ufffd" not in text[i:i + 2])
    stop = text[start:start + 2]
    for stop_field in (stop, [stop, "never there"]):
        cut = client.chat.completions.create(model="tiny", messages=QUESTION, max_tokens=30, temperature=0,
                                             stop=stop_field)
        assert cut.choices[0].message.content == text[:text.find(stop)]
        assert cut.choices[0].finish_reason == "stop"


def test_completions_with_prompt_list_and_n(served):
    local, _, client, _ = served
    prompts = ["Paris is", "The quick brown fox jumps over"]
    response = client.completions.create(model="tiny", prompt=prompts, max_tokens=5, n=2, temperature=0.9,
                                         seed=3, logprobs=2)
    expected = local.complete(prompts, SamplingParams(max_tokens=5, n=2, temperature=0.9, seed=3, logprobs=2))
    assert [c.index for c in response.choices] == [0, 1, 2, 3]
    assert [c.text for c in response.choices] == [c.text for samples in expected for c in samples]
    assert response.usage.prompt_tokens == sum(samples[0].prompt_tokens for samples in expected)
    for choice in response.choices:
        lp = choice.logprobs
        assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == len(lp.text_offset) == 5
        assert lp.text_offset[0] == 0 and lp.text_offset == sorted(lp.text_offset)
        assert all(len(top) == 2 for top in lp.top_logprobs)
    single = client.completions.create(model="tiny", prompt="Paris is", max_tokens=4, temperature=0, stop=["\n"])
    (greedy,), = local.complete(["Paris is"], SamplingParams(max_tokens=4, stop=("\n",)))
    assert (single.choices[0].text, single.choices[0].finish_reason) == (greedy.text, greedy.finish_reason)


@pytest.mark.parametrize("body, field", [
    ({"messages": [{"role": "robot", "content": "x"}]}, "messages.0.role"),
    ({"messages": []}, "messages"),
    ({"messages": HELLO, "stream": True}, "stream"),
    ({"messages": HELLO, "tools": []}, "tools"),
    ({"messages": [{"role": "user", "content": "x", "name": "bob"}]}, "messages.0.name"),
    ({"messages": HELLO, "top_logprobs": 2}, "top_logprobs requires logprobs"),
    ({"messages": HELLO, "stop": ""}, "stop"),
    ({"messages": HELLO, "n": 0}, "n"),
    ({"messages": HELLO, "temperature": -1}, "temperature"),
])
def test_bad_chat_requests_get_400_naming_the_field(served, body, field):
    _, _, _, base_url = served
    response = httpx.post(f"{base_url}/v1/chat/completions", json={"model": "tiny", **body})
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error" and field in error["message"]


def test_bad_completion_requests_and_unknown_model(served):
    _, _, client, base_url = served
    for body, field in [({"prompt": []}, "prompt"), ({"prompt": "x", "echo": True}, "echo"),
                        ({"prompt": [1, 2]}, "prompt")]:
        response = httpx.post(f"{base_url}/v1/completions", json={"model": "tiny", **body})
        assert response.status_code == 400 and field in response.json()["error"]["message"]
    with pytest.raises(openai.NotFoundError, match="not found"):
        client.chat.completions.create(model="other", messages=HELLO)
    with pytest.raises(openai.BadRequestError, match="exceed the model's context"):
        client.completions.create(model="tiny", prompt="hello " * 300, max_tokens=4)


def test_concurrent_requests_are_correct_batched_and_isolated(served):
    local, backend, _, base_url = served
    prompts = [f"Numbers {i} plus {i}" for i in range(8)] + ["boom"]
    expected = {p: c[0].text for p, c in zip(prompts, local.complete(prompts[:-1], SamplingParams(max_tokens=6)))}
    backend.calls.clear()
    backend.delay = 0.2  # a slow first call lets the other requests queue up behind it
    answers: dict[str, httpx.Response] = {}
    barrier = threading.Barrier(len(prompts))

    def ask(prompt: str) -> None:
        barrier.wait()
        answers[prompt] = httpx.post(f"{base_url}/v1/completions", timeout=30,
                                     json={"model": "tiny", "prompt": prompt, "max_tokens": 6, "temperature": 0})

    threads = [threading.Thread(target=ask, args=(p,)) for p in prompts]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    backend.delay = 0.0
    for prompt in prompts[:-1]:
        assert answers[prompt].status_code == 200
        assert answers[prompt].json()["choices"][0]["text"] == expected[prompt]
    assert answers["boom"].status_code == 400 and "boom" in answers["boom"].json()["error"]["message"]
    assert sum(1 for n in backend.calls if n > 1) >= 1  # some waiting requests shared a backend call


def test_error_completions_become_502_not_empty_answers():
    class FailingBackend:
        model_id = "failing"

        def chat(self, conversations, params):
            return [[Completion(text="", finish_reason="error", error="upstream 500")] * params.n
                    for _ in conversations]

        complete = chat

    with start_in_background(create_app(FailingBackend(), "failing")) as server:
        response = httpx.post(f"{server.base_url}/v1/chat/completions",
                              json={"model": "failing", "messages": HELLO})
    assert response.status_code == 502
    assert "upstream 500" in response.json()["error"]["message"]
