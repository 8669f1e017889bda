"""Streamed answers (`stream: true`) from the real server, read by the official openai client."""
import json
import threading
import time

import httpx
import openai
import pytest
import torch

from alignkit.generation.backend import Completion, SamplingParams, StreamDelta
from alignkit.generation.local import LocalBackend
from alignkit.models.tiny import tiny_tokenizer
from alignkit.serving.app import create_app
from alignkit.serving.background import start_in_background
from tests.helpers.generation import sharp_model

KEY = "sk-stream-0123456789"
HELLO = [{"role": "user", "content": "hello"}]
QUESTION = [{"role": "system", "content": "Answer in JSON."},
            {"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="module")
def served():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    tokenizer = tiny_tokenizer("chatml")
    backend = LocalBackend(sharp_model(tokenizer), tokenizer, batch_size=4)
    with start_in_background(create_app(backend, "tiny", default_max_tokens=8, api_key=KEY)) as server:
        client = openai.OpenAI(base_url=server.base_url + "/v1", api_key=KEY, max_retries=0, timeout=60)
        yield backend, client, server.base_url
    torch.set_num_threads(previous)


def read(stream):
    """(chunks, {choice index: joined text}, {choice index: finish_reason}, usage chunk or None)."""
    chunks, texts, finishes, usage = [], {}, {}, None
    for chunk in stream:
        chunks.append(chunk)
        if chunk.usage is not None:
            assert chunk.choices == [] and usage is None
            usage = chunk
        for choice in chunk.choices:
            assert choice.index not in finishes, "a chunk after the choice finished"
            text = choice.delta.content if chunk.object == "chat.completion.chunk" else choice.text
            texts[choice.index] = texts.get(choice.index, "") + (text or "")
            if choice.finish_reason is not None:
                finishes[choice.index] = choice.finish_reason
    return chunks, texts, finishes, usage


def test_chat_stream_is_the_non_streamed_answer_in_pieces(served):
    _, client, _ = served
    request = dict(model="tiny", messages=QUESTION, max_tokens=20, temperature=0)
    whole = client.chat.completions.create(**request)
    chunks, texts, finishes, usage = read(client.chat.completions.create(
        **request, stream=True, stream_options={"include_usage": True}))
    assert texts == {0: whole.choices[0].message.content}
    assert finishes == {0: whole.choices[0].finish_reason}
    assert {c.object for c in chunks} == {"chat.completion.chunk"} and len({c.id for c in chunks}) == 1
    first = chunks[0].choices[0]
    assert (first.delta.role, first.delta.content, first.finish_reason) == ("assistant", "", None)
    content = [c for c in chunks if c.choices and c.choices[0].delta.content]
    assert len(content) > 1  # 20 tokens arrive in several pieces, not at once
    last = next(c for c in reversed(chunks) if c.choices).choices[0]
    assert last.finish_reason is not None and not last.delta.content and last.delta.role is None
    assert chunks[-1] is usage  # the usage chunk comes last
    assert (usage.usage.prompt_tokens, usage.usage.completion_tokens, usage.usage.total_tokens) == \
           (whole.usage.prompt_tokens, whole.usage.completion_tokens, whole.usage.total_tokens)
    no_usage = read(client.chat.completions.create(**request, stream=True))
    assert no_usage[1] == texts and no_usage[3] is None


def test_chat_stream_with_n_and_a_seed(served):
    backend, client, _ = served
    request = dict(model="tiny", messages=HELLO, max_tokens=12, n=2, temperature=1.0, seed=7)
    whole = client.chat.completions.create(**request)
    _, texts, finishes, usage = read(client.chat.completions.create(
        **request, stream=True, stream_options={"include_usage": True}))
    assert texts == {c.index: c.message.content for c in whole.choices}
    assert texts == {j: c.text for j, c in enumerate(backend.chat([HELLO], SamplingParams(
        max_tokens=12, n=2, temperature=1.0, seed=7))[0])}
    assert finishes == {c.index: c.finish_reason for c in whole.choices}
    assert usage.usage.completion_tokens == whole.usage.completion_tokens
    assert usage.usage.prompt_tokens == whole.usage.prompt_tokens  # the prompt counts once, not n times


def test_completion_stream_of_a_prompt_list_with_n(served):
    _, client, _ = served
    request = dict(model="tiny", prompt=["Paris is", "The quick brown fox"], max_tokens=10, n=2,
                   temperature=0.9, seed=3)
    whole = client.completions.create(**request)
    chunks, texts, finishes, usage = read(client.completions.create(
        **request, stream=True, stream_options={"include_usage": True}))
    assert {c.object for c in chunks} == {"text_completion"}
    assert texts == {c.index: c.text for c in whole.choices} and len(texts) == 4
    assert finishes == {c.index: c.finish_reason for c in whole.choices}
    assert (usage.usage.prompt_tokens, usage.usage.completion_tokens) == \
           (whole.usage.prompt_tokens, whole.usage.completion_tokens)


def test_stop_strings_never_stream_past_the_stop(served):
    _, client, _ = served
    full = client.chat.completions.create(model="tiny", messages=QUESTION, max_tokens=30, temperature=0)
    text = full.choices[0].message.content
    start = next(i for i in range(4, len(text) - 3) if "\ufffd" not in text[i:i + 3])
    stop = text[start:start + 3]
    chunks, texts, finishes, _ = read(client.chat.completions.create(
        model="tiny", messages=QUESTION, max_tokens=30, temperature=0, stop=[stop, "never there"], stream=True))
    assert texts == {0: text[:text.find(stop)]} and finishes == {0: "stop"}
    sent = ""
    for chunk in chunks:  # every prefix sent so far is a prefix of the cut answer
        sent += (chunk.choices[0].delta.content or "") if chunk.choices else ""
        assert texts[0].startswith(sent)
    completion = read(client.completions.create(model="tiny", prompt="Paris is", max_tokens=30, temperature=0,
                                                stop=stop, stream=True))
    whole = client.completions.create(model="tiny", prompt="Paris is", max_tokens=30, temperature=0, stop=stop)
    assert completion[1] == {0: whole.choices[0].text} and completion[2] == {0: whole.choices[0].finish_reason}


def test_streams_need_the_api_key_and_keep_json_errors_before_the_first_chunk(served):
    _, client, base_url = served
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=base_url + "/v1", api_key="wrong", max_retries=0).chat.completions.create(
            model="tiny", messages=HELLO, stream=True)
    no_key = httpx.post(f"{base_url}/v1/completions", json={"model": "tiny", "prompt": "x", "stream": True})
    assert no_key.status_code == 401 and "error" in no_key.json()
    with pytest.raises(openai.BadRequestError, match="exceed the model's context"):
        client.completions.create(model="tiny", prompt="hello " * 300, max_tokens=4, stream=True)
    with pytest.raises(openai.NotFoundError, match="not found"):
        client.chat.completions.create(model="other", messages=HELLO, stream=True)
    with pytest.raises(openai.BadRequestError, match="logprobs are not supported with stream"):
        client.chat.completions.create(model="tiny", messages=HELLO, stream=True, logprobs=True)
    # The server is still whole afterwards.
    assert read(client.chat.completions.create(model="tiny", messages=HELLO, max_tokens=4, stream=True))[2] == \
           {0: "length"}


# ---------------------------------------------------------------- stand-in backends

class ScriptedBackend:
    """Streams `pieces` for every sample, one delta per piece; `gate` (a semaphore) must be released once per
    piece before it is sent, so a test decides when each token exists. After the pieces, `then` decides the
    end: "finish" (finish_reason stop), "raise" (an exception) or "error" (an error delta). `chat` answers
    the whole text, for the requests that do not stream. `closed` is set when the stream is closed or ends."""

    model_id = "scripted"

    def __init__(self, pieces, then="finish", gated=False):
        self.pieces, self.then = list(pieces), then
        self.gate = threading.Semaphore(0) if gated else None
        self.sent = 0
        self.finished = threading.Event()
        self.closed = threading.Event()

    def _deltas(self, params):
        try:
            for piece in self.pieces:
                if self.gate is not None:
                    assert self.gate.acquire(timeout=30), "the test never released this piece"
                self.sent += 1
                for sample in range(params.n):
                    yield StreamDelta(0, sample, piece)
            if self.then == "raise":
                raise RuntimeError("the engine fell over")
            for sample in range(params.n):
                if self.then == "error":
                    yield StreamDelta(0, sample, finish_reason="error", error="upstream went away")
                else:
                    yield StreamDelta(0, sample, finish_reason="stop", prompt_tokens=3,
                                      completion_tokens=len(self.pieces))
            self.finished.set()
        finally:
            self.closed.set()

    def stream_chat(self, conversations, params):
        return self._deltas(params)

    def stream_complete(self, prompts, params):
        return self._deltas(params)

    def chat(self, conversations, params):
        return [[Completion("".join(self.pieces), prompt_tokens=3, completion_tokens=len(self.pieces))] * params.n
                for _ in conversations]

    complete = chat


def test_chunks_arrive_while_the_backend_is_still_generating():
    backend = ScriptedBackend(["one", " two", " three"], gated=True)
    with start_in_background(create_app(backend, "scripted")) as server:
        client = openai.OpenAI(base_url=server.base_url + "/v1", api_key="x", max_retries=0, timeout=20)
        backend.gate.release()  # only the first piece exists; the response starts with it
        stream = iter(client.chat.completions.create(model="scripted", messages=HELLO, stream=True))
        assert next(stream).choices[0].delta.role == "assistant"
        assert next(stream).choices[0].delta.content == "one"
        assert backend.sent == 1 and not backend.finished.is_set()  # it came before the generation ended
        backend.gate.release()
        assert next(stream).choices[0].delta.content == " two"
        assert backend.sent == 2
        backend.gate.release()
        rest = list(stream)
    assert [c.choices[0].delta.content for c in rest] == [" three", None]
    assert rest[-1].choices[0].finish_reason == "stop" and backend.finished.is_set()


@pytest.mark.parametrize("then, message", [("raise", "the engine fell over"), ("error", "upstream went away")])
def test_a_failure_mid_stream_is_an_error_event_not_a_short_answer(then, message):
    backend = ScriptedBackend(["partial", " answer"], then=then)
    with start_in_background(create_app(backend, "scripted")) as server:
        client = openai.OpenAI(base_url=server.base_url + "/v1", api_key="x", max_retries=0, timeout=20)
        received = []
        with pytest.raises(openai.APIError, match=message):
            for chunk in client.chat.completions.create(model="scripted", messages=HELLO, stream=True):
                received.append(chunk.choices[0].delta.content)
        assert received == ["", "partial", " answer"]
        with httpx.stream("POST", f"{server.base_url}/v1/completions", timeout=20,
                          json={"model": "scripted", "prompt": "x", "stream": True}) as response:
            assert response.status_code == 200 and response.headers["content-type"].startswith("text/event-stream")
            events = [line for line in response.iter_lines() if line]
    assert [json.loads(e[len("data: "):])["choices"][0]["text"] for e in events[:2]] == ["partial", " answer"]
    last = json.loads(events[-1][len("data: "):])
    assert message in last["error"]["message"] and last["error"]["type"] == "server_error"
    assert "data: [DONE]" not in events


def test_a_failure_before_the_first_delta_keeps_its_status_code():
    failing = ScriptedBackend([], then="error")
    rejecting = ScriptedBackend([])
    rejecting.stream_chat = lambda conversations, params: (_ for _ in ()).throw(ValueError("prompt 0: too long"))
    for backend, error, message in [(failing, openai.InternalServerError, "upstream went away"),
                                    (rejecting, openai.BadRequestError, "too long")]:
        with start_in_background(create_app(backend, "scripted")) as server:
            client = openai.OpenAI(base_url=server.base_url + "/v1", api_key="x", max_retries=0, timeout=20)
            with pytest.raises(error, match=message) as caught:
                client.chat.completions.create(model="scripted", messages=HELLO, stream=True)
        assert caught.value.status_code == (502 if backend is failing else 400)


def test_a_backend_without_streaming_sends_each_answer_as_one_delta():
    class Whole:
        model_id = "whole"

        def chat(self, conversations, params):
            return [[Completion(f"answer {j}", prompt_tokens=4, completion_tokens=2) for j in range(params.n)]
                    for _ in conversations]

        complete = chat

    with start_in_background(create_app(Whole(), "whole")) as server:
        client = openai.OpenAI(base_url=server.base_url + "/v1", api_key="x", max_retries=0, timeout=20)
        chunks, texts, finishes, usage = read(client.chat.completions.create(
            model="whole", messages=HELLO, n=2, stream=True, stream_options={"include_usage": True}))
    assert texts == {0: "answer 0", 1: "answer 1"} and finishes == {0: "stop", 1: "stop"}
    assert [len([c for c in chunks if c.choices and c.choices[0].index == j and c.choices[0].delta.content])
            for j in (0, 1)] == [1, 1]
    assert (usage.usage.prompt_tokens, usage.usage.completion_tokens) == (4, 4)


def wait_for(condition, what, limit=20.0):
    deadline = time.monotonic() + limit  # an upper bound only: the test never depends on how fast
    while not condition():
        assert time.monotonic() < deadline, f"gave up waiting for {what}"
        time.sleep(0.01)


def test_a_client_that_leaves_mid_stream_stops_the_generation_and_others_are_served():
    backend = ScriptedBackend([f" {i}" for i in range(1000)], gated=True)
    with start_in_background(create_app(backend, "scripted")) as server:
        backend.gate.release()
        with httpx.stream("POST", f"{server.base_url}/v1/chat/completions", timeout=20,
                          json={"model": "scripted", "messages": HELLO, "stream": True}) as response:
            assert next(line for line in response.iter_lines() if '" 0"' in line)
        # The client is gone: piece by piece, until the server closes the backend's stream.
        released = 1
        while not backend.closed.is_set():
            assert released < len(backend.pieces), "the stream was never closed"
            backend.gate.release()
            released += 1
            wait_for(lambda count=released: backend.sent >= count or backend.closed.is_set(), "the next piece")
        assert not backend.finished.is_set()
        reply = httpx.post(f"{server.base_url}/v1/chat/completions", timeout=20,
                           json={"model": "scripted", "messages": HELLO})
        assert reply.status_code == 200


def test_a_stream_holds_the_backend_and_requests_behind_it_are_answered_after_it():
    backend = ScriptedBackend(["a", "b", "c"], gated=True)
    with start_in_background(create_app(backend, "scripted")) as server:
        client = openai.OpenAI(base_url=server.base_url + "/v1", api_key="x", max_retries=0, timeout=20)
        backend.gate.release()
        stream = iter(client.chat.completions.create(model="scripted", messages=HELLO, stream=True))
        assert [next(stream).choices[0].delta.content for _ in range(2)] == ["", "a"]
        answers = []
        waiting = threading.Thread(target=lambda: answers.append(
            client.chat.completions.create(model="scripted", messages=HELLO).choices[0].message.content))
        waiting.start()
        backend.gate.release()
        backend.gate.release()
        assert "".join(c.choices[0].delta.content or "" for c in stream) == "bc"
        waiting.join(20)
    assert answers == ["abc"]


def test_stream_fields_that_do_not_fit_together_get_a_400_saying_so():
    from fastapi.testclient import TestClient

    client = TestClient(create_app(ScriptedBackend(["x"]), "scripted"))
    for path, body, message in [
            ("/v1/chat/completions", {"messages": HELLO, "stream_options": {"include_usage": True}},
             "stream_options is only allowed with stream=true"),
            ("/v1/completions", {"prompt": "x", "stream": True, "logprobs": 0},
             "logprobs are not supported with stream=true"),
            ("/v1/chat/completions", {"messages": HELLO, "stream": True, "stream_options": {"usage": True}},
             "stream_options.usage")]:
        response = client.post(path, json={"model": "scripted", **body})
        assert response.status_code == 400
        assert response.json()["error"]["message"].startswith(message)
