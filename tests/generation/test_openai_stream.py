"""OpenAIBackend's streaming: against alignkit's own server (real content), and a scripted server for
retries before the first chunk and streams that break off."""
import json

import pytest
import torch
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse

from alignkit.generation.backend import SamplingParams
from alignkit.generation.local import LocalBackend
from alignkit.generation.openai_backend import OpenAIBackend
from alignkit.models.tiny import tiny_tokenizer
from alignkit.serving.app import create_app
from alignkit.serving.background import start_in_background
from tests.helpers.generation import CONVERSATIONS, sharp_model


def joined(deltas):
    texts, finishes = {}, {}
    for delta in deltas:
        key = (delta.prompt, delta.sample)
        assert key not in finishes
        texts[key] = texts.get(key, "") + delta.text
        if delta.finish_reason is not None:
            finishes[key] = delta
    return texts, finishes


@pytest.fixture(scope="module")
def server():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    tokenizer = tiny_tokenizer("chatml")
    with start_in_background(create_app(LocalBackend(sharp_model(tokenizer), tokenizer), "tiny")) as running:
        yield OpenAIBackend(base_url=running.base_url + "/v1", api_key="x", model="tiny", max_retries=0)
    torch.set_num_threads(previous)


def test_streamed_chat_and_completions_equal_the_whole_answers(server):
    params = SamplingParams(max_tokens=12, n=2, temperature=1.0, seed=4)
    for stream, whole, prompts in [(server.stream_chat, server.chat, CONVERSATIONS[:2]),
                                   (server.stream_complete, server.complete, ["Paris is", "hello world"])]:
        texts, finishes = joined(stream(prompts, params))
        for i, samples in enumerate(whole(prompts, params)):
            for j, completion in enumerate(samples):
                assert texts[(i, j)] == completion.text
                finish = finishes[(i, j)]
                assert (finish.finish_reason, finish.prompt_tokens, finish.completion_tokens) == \
                       (completion.finish_reason, completion.prompt_tokens, completion.completion_tokens)
    with pytest.raises(ValueError, match="logprobs"):
        server.stream_chat(CONVERSATIONS[:1], SamplingParams(logprobs=1))


def scripted_app(steps: list[str]) -> FastAPI:
    """Each call takes the next step: "503" (an error status), "ok" (a whole stream), "cut" (text, then the
    stream ends with no finish_reason and no [DONE]), "event" (text, then an error event)."""
    app = FastAPI()
    calls = []

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        body = await request.json()
        step = steps[len(calls)] if len(calls) < len(steps) else "ok"
        calls.append(body)
        if step == "503":
            return JSONResponse({"error": {"message": "busy", "type": "x"}}, 503, headers={"retry-after": "0"})

        def chunk(**choice):
            return "data: " + json.dumps({"id": "c", "object": "chat.completion.chunk", "created": 0, "model": "m",
                                          "choices": [{"index": 0, "logprobs": None, "finish_reason": None,
                                                       **choice}]}) + "\n\n"

        def events():
            yield chunk(delta={"role": "assistant", "content": ""})
            yield chunk(delta={"content": "Hel"})
            yield chunk(delta={"content": "lo"})
            if step == "cut":
                return
            if step == "event":
                yield 'data: {"error": {"message": "model crashed", "type": "server_error"}}\n\n'
                return
            yield chunk(delta={}, finish_reason="stop")
            yield "data: " + json.dumps({"id": "c", "object": "chat.completion.chunk", "created": 0, "model": "m",
                                         "choices": [], "usage": {"prompt_tokens": 5, "completion_tokens": 2,
                                                                  "total_tokens": 7}}) + "\n\n"
            yield "data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    app.state.calls = calls
    return app


def test_retries_before_the_first_chunk_and_usage_from_the_last():
    app = scripted_app(["503", "503", "ok"])
    with start_in_background(app) as running:
        backend = OpenAIBackend(base_url=running.base_url + "/v1", api_key="x", model="m", max_retries=3,
                                backoff_base=0.01)
        texts, finishes = joined(backend.stream_chat([[{"role": "user", "content": "hi"}]], SamplingParams()))
    assert texts == {(0, 0): "Hello"}
    assert (finishes[(0, 0)].finish_reason, finishes[(0, 0)].prompt_tokens, finishes[(0, 0)].completion_tokens) == \
           ("stop", 5, 2)
    assert (backend.usage.requests, backend.usage.retries, backend.usage.completion_tokens) == (3, 2, 2)
    body = app.state.calls[-1]
    assert body["stream"] is True and body["stream_options"] == {"include_usage": True}


@pytest.mark.parametrize("step, message", [("cut", "without a finish_reason"), ("event", "model crashed")])
def test_a_stream_that_breaks_off_ends_in_an_error_never_a_short_answer(step, message):
    with start_in_background(scripted_app([step])) as running:
        backend = OpenAIBackend(base_url=running.base_url + "/v1", api_key="x", model="m", max_retries=3,
                                backoff_base=0.01)
        texts, finishes = joined(backend.stream_chat([[{"role": "user", "content": "hi"}]], SamplingParams()))
    assert texts == {(0, 0): "Hello"}  # what was sent stays sent, and the sample ends as failed
    assert finishes[(0, 0)].finish_reason == "error" and message in finishes[(0, 0)].error
    assert backend.usage.requests == 1 and backend.usage.failures == 1  # nothing retried once text was out


def test_a_request_that_keeps_failing_ends_every_sample_in_an_error():
    with start_in_background(scripted_app(["503"] * 5)) as running:
        backend = OpenAIBackend(base_url=running.base_url + "/v1", api_key="x", model="m", max_retries=1,
                                backoff_base=0.01)
        deltas = list(backend.stream_chat([[{"role": "user", "content": "hi"}]], SamplingParams(n=2)))
    assert [(d.sample, d.text, d.finish_reason) for d in deltas] == [(0, "", "error"), (1, "", "error")]
    assert "after 2 attempts" in deltas[0].error and backend.usage.failures == 1
