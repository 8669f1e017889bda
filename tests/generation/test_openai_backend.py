"""OpenAIBackend over real HTTP: a scripted fake server for retries, our own server for content."""
import asyncio
import time

import pytest
import torch
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from alignkit.generation.backend import SamplingParams
from alignkit.generation.local import LocalBackend
from alignkit.generation.openai_backend import OpenAIBackend
from alignkit.models.tiny import tiny_model, tiny_tokenizer
from alignkit.serving.app import create_app
from alignkit.serving.background import start_in_background

HELLO = [{"role": "user", "content": "hello"}]


class Script:
    """What the fake server does on each successive call: "ok", "500", "429", "400", "slow", "no-n"."""

    def __init__(self):
        self.steps: list[str] = []
        self.calls = 0
        self.in_flight = 0
        self.max_in_flight = 0
        self.bodies: list[dict] = []


def fake_openai_app(script: Script) -> FastAPI:
    app = FastAPI()

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        body = await request.json()
        script.bodies.append(body)
        step = script.steps[script.calls] if script.calls < len(script.steps) else "ok"
        script.calls += 1
        script.in_flight += 1
        script.max_in_flight = max(script.max_in_flight, script.in_flight)
        try:
            await asyncio.sleep(0.6 if step == "slow" else 0.05)
        finally:
            script.in_flight -= 1
        if step in ("500", "429", "400"):
            headers = {"retry-after": "0"} if step == "429" else {}
            return JSONResponse({"error": {"message": f"scripted {step}", "type": "x"}}, int(step), headers=headers)
        n = 1 if step == "no-n" else body.get("n", 1)
        text = body["messages"][-1]["content"].upper()
        return {"id": "c", "object": "chat.completion", "created": 0, "model": body["model"],
                "choices": [{"index": i, "message": {"role": "assistant", "content": f"{text} {i}"},
                             "finish_reason": "stop"} for i in range(n)],
                "usage": {"prompt_tokens": 7, "completion_tokens": 3 * n, "total_tokens": 7 + 3 * n}}

    return app


@pytest.fixture(scope="module")
def fake():
    script = Script()
    with start_in_background(fake_openai_app(script)) as server:
        yield script, server.base_url + "/v1"


@pytest.fixture
def script(fake):
    script, _ = fake
    script.steps, script.calls, script.max_in_flight, script.bodies = [], 0, 0, []
    return script


def backend_for(fake, **options) -> OpenAIBackend:
    options = {"max_retries": 3, "backoff_base": 0.01, "timeout": 5.0, **options}
    return OpenAIBackend(base_url=fake[1], api_key="test", model="fake", **options)


@pytest.mark.parametrize("failure", ["500", "429"])
def test_retries_then_succeeds(fake, script, failure):
    script.steps = [failure, failure, "ok"]
    backend = backend_for(fake)
    (completion,), = backend.chat([HELLO], SamplingParams())
    assert (completion.text, completion.finish_reason, completion.error) == ("HELLO 0", "stop", None)
    assert script.calls == 3
    assert (backend.usage.requests, backend.usage.retries, backend.usage.failures) == (3, 2, 0)
    assert (backend.usage.prompt_tokens, backend.usage.completion_tokens) == (7, 3)


def test_timeout_is_retried(fake, script):
    script.steps = ["slow", "ok"]
    backend = backend_for(fake, timeout=0.3)
    started = time.monotonic()
    (completion,), = backend.chat([HELLO], SamplingParams())
    assert completion.text == "HELLO 0"
    assert backend.usage.retries == 1
    assert time.monotonic() - started < 0.6 + 0.5  # the slow call was abandoned, not waited for


def test_exhausted_retries_give_error_completions_without_raising(fake, script):
    script.steps = ["500"] * 20
    backend = backend_for(fake, max_retries=2)
    results = backend.chat([HELLO, [{"role": "user", "content": "two"}]], SamplingParams(n=2))
    for samples in results:
        assert [c.finish_reason for c in samples] == ["error", "error"]
        assert all(c.text == "" and "after 3 attempts" in c.error and "500" in c.error for c in samples)
    assert (backend.usage.requests, backend.usage.retries, backend.usage.failures) == (6, 4, 2)


def test_client_errors_are_not_retried(fake, script):
    script.steps = ["400", "ok"]
    backend = backend_for(fake)
    (completion,), = backend.chat([HELLO], SamplingParams())
    assert completion.finish_reason == "error" and "BadRequestError" in completion.error
    assert (script.calls, backend.usage.retries, backend.usage.failures) == (1, 0, 1)


def test_one_failing_prompt_does_not_sink_the_batch(fake, script):
    script.steps = ["ok", "400", "ok"]
    backend = backend_for(fake, max_concurrency=1)  # one at a time, so the script order is the prompt order
    results = backend.chat([[{"role": "user", "content": f"p{i}"}] for i in range(3)], SamplingParams())
    assert [r[0].finish_reason for r in results] == ["stop", "error", "stop"]
    assert [r[0].text for r in results] == ["P0 0", "", "P2 0"]


def test_concurrency_is_bounded(fake, script):
    backend = backend_for(fake, max_concurrency=2)
    conversations = [[{"role": "user", "content": f"q{i}"}] for i in range(6)]
    results = backend.chat(conversations, SamplingParams())
    assert [r[0].text for r in results] == [f"Q{i} 0" for i in range(6)]  # order kept
    assert script.max_in_flight == 2


def test_request_fields_and_missing_choices(fake, script):
    script.steps = ["ok", "no-n"]
    backend = backend_for(fake, extra_body={"repetition_penalty": 1.1})
    params = SamplingParams(max_tokens=9, temperature=0.5, top_p=0.9, top_k=4, n=2, seed=3, stop=("x", "y"))
    full = backend.chat([HELLO], params)[0]
    assert [c.text for c in full] == ["HELLO 0", "HELLO 1"]
    assert [c.completion_tokens for c in full] == [3, 3]  # the request's 6 shared out
    body = script.bodies[0]
    assert {k: body[k] for k in ("max_tokens", "temperature", "top_p", "top_k", "n", "seed", "stop",
                                 "repetition_penalty")} == {
        "max_tokens": 9, "temperature": 0.5, "top_p": 0.9, "top_k": 4, "n": 2, "seed": 3, "stop": ["x", "y"],
        "repetition_penalty": 1.1}
    short = backend.chat([HELLO], params)[0]
    assert short[0].finish_reason == "stop"
    assert short[1].finish_reason == "error" and "1 choices for n=2" in short[1].error


def test_key_and_url_from_environment(fake, script, monkeypatch):
    monkeypatch.setenv("OPENAI_BASE_URL", fake[1])
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    backend = OpenAIBackend(model="fake", backoff_base=0.01)
    assert backend.chat([HELLO], SamplingParams())[0][0].text == "HELLO 0"
    monkeypatch.delenv("OPENAI_BASE_URL")
    with pytest.raises(ValueError, match="OPENAI_API_KEY"):
        OpenAIBackend(model="fake")


def test_against_our_server_matches_local_backend():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        tokenizer = tiny_tokenizer("chatml")
        local = LocalBackend(tiny_model(tokenizer), tokenizer)
        with start_in_background(create_app(local, "tiny")) as server:
            remote = OpenAIBackend(base_url=server.base_url + "/v1", model="tiny", backoff_base=0.01)
            conversations = [HELLO, [{"role": "user", "content": "What is the capital of France?"}]]
            params = SamplingParams(max_tokens=6, temperature=0.8, n=2, seed=11, logprobs=2)
            over_http = remote.chat(conversations, params)
            direct = local.chat(conversations, params)
            raw_params = SamplingParams(max_tokens=5, logprobs=1)
            raw_http = remote.complete(["Paris is", "The quick"], raw_params)
            raw_direct = local.complete(["Paris is", "The quick"], raw_params)
        for http_samples, direct_samples in zip(over_http + raw_http, direct + raw_direct, strict=True):
            for a, b in zip(http_samples, direct_samples, strict=True):
                assert (a.text, a.finish_reason, a.prompt_tokens, a.completion_tokens) == \
                       (b.text, b.finish_reason, b.prompt_tokens, b.completion_tokens)
                assert [list(s) for s in a.top_logprobs] == [list(s) for s in b.top_logprobs]
                assert all(s_a == pytest.approx(s_b) for s_a, s_b in zip(a.top_logprobs, b.top_logprobs))
        assert remote.usage.requests == 4 and remote.usage.failures == 0
        assert remote.usage.completion_tokens == sum(c.completion_tokens for r in direct + raw_direct for c in r)
    finally:
        torch.set_num_threads(previous)


def token_server(bodies: list[dict]) -> FastAPI:
    """Answers "ab" as tokens 5 and 9, sending ids the two ways vLLM can: a `token_ids` list on chat
    choices, and `token_id:<id>` token strings on completions; log-probs only when asked."""
    app = FastAPI()

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        body = await request.json()
        bodies.append(body)
        logprobs = {"content": [{"token": t, "logprob": lp, "bytes": list(t.encode()), "top_logprobs": []}
                                for t, lp in (("a", -0.1), ("b", -0.2))]} if body.get("logprobs") else None
        return {"id": "c", "object": "chat.completion", "created": 0, "model": body["model"],
                "choices": [{"index": 0, "message": {"role": "assistant", "content": "ab"}, "finish_reason": "stop",
                             "logprobs": logprobs, "token_ids": [5, 9]}],
                "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}}

    @app.post("/v1/completions")
    async def complete(request: Request):
        body = await request.json()
        bodies.append(body)
        logprobs = {"tokens": ["token_id:5", "token_id:9"], "token_logprobs": [-0.3, -0.4], "top_logprobs": None,
                    "text_offset": [0, 1]} if body.get("logprobs") is not None else None
        return {"id": "c", "object": "text_completion", "created": 0, "model": body["model"],
                "choices": [{"index": 0, "text": "ab", "finish_reason": "length", "logprobs": logprobs}],
                "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}}

    return app


def test_token_ids_and_logprobs_where_the_server_sends_them():
    bodies: list[dict] = []
    with start_in_background(token_server(bodies)) as server:
        backend = OpenAIBackend(base_url=server.base_url + "/v1", api_key="test", model="m", backoff_base=0.01)
        (greedy,), = backend.chat([HELLO], SamplingParams(return_tokens=True))
        (warm,), = backend.chat([HELLO], SamplingParams(temperature=0.7, return_tokens=True))
        (raw,), = backend.complete(["x"], SamplingParams(temperature=1.0, return_tokens=True))
        (plain,), = backend.chat([HELLO], SamplingParams())
    assert (greedy.token_ids, greedy.logprobs, greedy.top_logprobs) == ([5, 9], [-0.1, -0.2], None)
    assert bodies[0]["logprobs"] is True and "top_logprobs" not in bodies[0]
    # Servers report the model's own log-probs, which are not those of a temperature-0.7 draw.
    assert (warm.token_ids, warm.logprobs) == ([5, 9], None) and "logprobs" not in bodies[1]
    assert (raw.token_ids, raw.logprobs, raw.top_logprobs) == ([5, 9], [-0.3, -0.4], None)
    assert bodies[2]["logprobs"] == 0
    assert (plain.token_ids, plain.logprobs) == (None, None) and "logprobs" not in bodies[3]
