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
    ({"messages": HELLO, "stream_options": {"include_usage": True}}, "stream_options is only allowed with stream"),
    ({"messages": HELLO, "stream": True, "logprobs": True}, "logprobs are not supported with stream"),
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


# ---------------------------------------------------------------- API key, request limits, error bodies

KEY = "sk-test-0123456789"


class ParrotBackend:
    """Answers every prompt with "said: <last message>", n times."""

    model_id = "parrot"

    def chat(self, conversations, params):
        return [[Completion(f"said: {c[-1]['content']}", completion_tokens=2)] * params.n for c in conversations]

    def complete(self, prompts, params):
        return [[Completion(f"said: {p}", completion_tokens=2)] * params.n for p in prompts]


def parrot_client(**options):
    from fastapi.testclient import TestClient

    return TestClient(create_app(ParrotBackend(), "parrot", **options))


def assert_openai_error(response, status, *, param=None, code=None, message=""):
    assert response.status_code == status
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert (error["param"], error["code"]) == (param, code)
    assert message in error["message"]
    return error


ROUTES = [("GET", "/v1/models", None), ("POST", "/v1/chat/completions", {"model": "parrot", "messages": HELLO}),
          ("POST", "/v1/completions", {"model": "parrot", "prompt": "hi"}), ("GET", "/v1/unknown", None),
          ("GET", "/openapi.json", None)]


@pytest.mark.parametrize("method, path, body", ROUTES)
def test_every_route_needs_the_api_key(method, path, body):
    client = parrot_client(api_key=KEY)
    for headers, code in [({}, None), ({"Authorization": "Bearer wrong"}, "invalid_api_key"),
                          ({"Authorization": f"Bearer {KEY}x"}, "invalid_api_key"),
                          ({"Authorization": f"Basic {KEY}"}, None), ({"Authorization": "Bearer "}, None)]:
        response = client.request(method, path, json=body, headers=headers)
        assert_openai_error(response, 401, code=code)
        assert response.headers["www-authenticate"] == "Bearer"
        assert KEY not in response.text
    allowed = client.request(method, path, json=body, headers={"Authorization": f"bearer {KEY}"})
    assert allowed.status_code == (404 if path == "/v1/unknown" else 200)


def test_the_openai_client_and_the_judge_backend_use_the_key(monkeypatch):
    from alignkit.generation.specs import BackendOptions, build_backend

    with start_in_background(create_app(ParrotBackend(), "parrot", api_key=KEY)) as server:
        url = server.base_url + "/v1"
        client = openai.OpenAI(base_url=url, api_key=KEY, max_retries=0)
        reply = client.chat.completions.create(model="parrot", messages=HELLO)
        assert reply.choices[0].message.content == "said: hello"
        with pytest.raises(openai.AuthenticationError, match="incorrect API key"):
            openai.OpenAI(base_url=url, api_key="wrong", max_retries=0).models.list()

        # `--judge openai:parrot@<url> --judge-api-key-env SERVE_KEY`, as the eval commands build it.
        options = BackendOptions(api_key_env="SERVE_KEY", max_retries=2)
        monkeypatch.setenv("SERVE_KEY", KEY)
        judge = build_backend(f"openai:parrot@{url}", options)
        (answer,), = judge.chat([HELLO], SamplingParams(max_tokens=4))
        assert (answer.text, answer.finish_reason) == ("said: hello", "stop")
        monkeypatch.setenv("SERVE_KEY", "wrong")
        monkeypatch.delenv("OPENAI_API_KEY", raising=False)
        locked_out = build_backend(f"openai:parrot@{url}", options)
        (failed,), = locked_out.chat([HELLO], SamplingParams(max_tokens=4))
    assert failed.finish_reason == "error" and "AuthenticationError" in failed.error and not failed.text
    assert locked_out.usage.requests == 1  # a 401 is not retried


def test_request_size_limits_give_400_naming_the_field():
    client = parrot_client(max_completions_per_request=4, max_tokens_cap=16, default_max_tokens=8)
    chat = {"model": "parrot", "messages": HELLO}
    assert_openai_error(client.post("/v1/chat/completions", json={**chat, "n": 5}), 400, param="n",
                        message="5 completions")
    assert_openai_error(client.post("/v1/completions", json={"model": "parrot", "prompt": ["a", "b", "c"], "n": 2}),
                        400, param="prompt", message="6 completions")
    assert_openai_error(client.post("/v1/completions", json={"model": "parrot", "prompt": ["x"] * 5}),
                        400, param="prompt")
    assert_openai_error(client.post("/v1/chat/completions", json={**chat, "max_tokens": 17}), 400,
                        param="max_tokens", message="(16)")
    assert_openai_error(client.post("/v1/chat/completions", json={**chat, "max_completion_tokens": 100}), 400,
                        param="max_completion_tokens")
    assert_openai_error(client.post("/v1/completions", json={"model": "parrot", "prompt": "x", "max_tokens": 99}),
                        400, param="max_tokens")
    at_limit = client.post("/v1/completions", json={"model": "parrot", "prompt": ["a", "b"], "n": 2, "max_tokens": 16})
    assert at_limit.status_code == 200 and len(at_limit.json()["choices"]) == 4
    assert client.post("/v1/chat/completions", json={**chat, "n": 4}).status_code == 200


def test_bad_server_options_raise():
    for options, message in [({"api_key": " "}, "api_key is empty"), ({"max_tokens_cap": 0}, "at least 1"),
                             ({"default_max_tokens": 600, "max_tokens_cap": 512}, "default_max_tokens")]:
        with pytest.raises(ValueError, match=message):
            create_app(ParrotBackend(), "parrot", **options)


def test_malformed_json_names_the_position_and_no_param():
    client = parrot_client()
    response = client.post("/v1/chat/completions", content='{"model": "parrot",',
                           headers={"content-type": "application/json"})
    error = assert_openai_error(response, 400, param=None, message="the request body is not valid JSON")
    assert "character 19" in error["message"] and error["type"] == "invalid_request_error"
    for body in ("[1, 2]", "null", ""):
        response = client.post("/v1/completions", content=body, headers={"content-type": "application/json"})
        assert_openai_error(response, 400, param=None, message="the request body must be a JSON object")
    assert_openai_error(client.post("/v1/chat/completions", json={"model": "parrot", "messages": HELLO, "n": 0}),
                        400, param="n", message="n: ")


def test_unknown_routes_methods_and_models_get_openai_errors():
    client = parrot_client()
    assert_openai_error(client.post("/v1/embeddings", json={}), 404, message="no route POST /v1/embeddings")
    wrong_method = client.get("/v1/chat/completions")
    assert_openai_error(wrong_method, 405, message="method not allowed: GET /v1/chat/completions (allowed: POST)")
    assert wrong_method.headers["allow"] == "POST"
    assert_openai_error(client.post("/v1/completions", json={"model": "other", "prompt": "x"}), 404,
                        param="model", code="model_not_found")


def test_exposure_rules():
    from alignkit.serving.app import check_exposure, is_loopback

    assert all(map(is_loopback, ["127.0.0.1", "127.8.0.1", "localhost", "::1", "[::1]"]))
    assert not any(map(is_loopback, ["0.0.0.0", "::", "192.168.1.5", "example.com", "localhost.example.com"]))
    check_exposure("127.0.0.1", None)
    check_exposure("0.0.0.0", KEY)
    check_exposure("0.0.0.0", None, insecure_no_api_key=True)
    with pytest.raises(ValueError, match="refusing to serve on --host 0.0.0.0 without an API key"):
        check_exposure("0.0.0.0", None)
    with pytest.raises(ValueError, match="drop one"):
        check_exposure("127.0.0.1", KEY, insecure_no_api_key=True)


def test_serve_command_checks_the_key_before_loading_the_model(monkeypatch, capsys):
    import alignkit.generation.specs as specs
    import alignkit.serving.app as app_module
    from alignkit.cli import main

    def no_model(*args, **kwargs):
        raise AssertionError("the model must not be loaded when the server cannot start")

    served = {}
    monkeypatch.setattr(specs, "build_backend", no_model)
    monkeypatch.setattr(app_module.uvicorn, "run", lambda app, **where: served.update(app=app, **where))
    monkeypatch.delenv("ALIGNKIT_API_KEY", raising=False)
    for argv, env, message in [(["--host", "0.0.0.0"], None, "without an API key"),
                               (["--host", "0.0.0.0"], "  ", "ALIGNKIT_API_KEY is set but empty"),
                               (["--insecure-no-api-key"], KEY, "drop one of the two"),
                               (["--max-tokens-cap", "100"], KEY, "default_max_tokens (512) must be between")]:
        if env is not None:
            monkeypatch.setenv("ALIGNKIT_API_KEY", env)
        assert main(["serve", *argv]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and message in err and "Traceback" not in err

    monkeypatch.setattr(specs, "build_backend", lambda *args, **kwargs: ParrotBackend())
    monkeypatch.setenv("MY_SERVE_KEY", KEY)
    assert main(["serve", "--host", "0.0.0.0", "--api-key-env", "MY_SERVE_KEY", "--max-tokens-cap", "600"]) == 0
    assert served["host"] == "0.0.0.0"
    from fastapi.testclient import TestClient

    client = TestClient(served["app"])
    assert client.get("/v1/models").status_code == 401
    assert client.get("/v1/models", headers={"Authorization": f"Bearer {KEY}"}).status_code == 200
    too_long = client.post("/v1/completions", headers={"Authorization": f"Bearer {KEY}"},
                           json={"model": "embedded", "prompt": "x", "max_tokens": 601})
    assert_openai_error(too_long, 400, param="max_tokens")
