"""VLLMBackend's streaming and `alignkit serve --model vllm:...`, against a stand-in for vLLM whose engine
has the add_request / step / abort_request API of `vllm.LLM().llm_engine` (no GPU or vLLM here)."""
import sys
from types import SimpleNamespace as NS

import openai
import pytest

from alignkit.data.chat import tokenize_prompt
from alignkit.generation.backend import SamplingParams
from tests.helpers.generation import FakeVLLM

HELLO = [{"role": "user", "content": "hello"}]


def script(sample: int) -> list[str]:
    """The token texts sample `sample` produces: a stop string "###" arrives in pieces near the end."""
    return [f"s{sample}", " Hel", "lo", " wor", "ld", " #", "#", "# tail", " more"]


class SteppingEngine:
    """vLLM's LLMEngine as a stand-in: each step() adds one token of `script` to every running sample and
    reports each request's samples with their text so far (vLLM's cumulative output kind). As vLLM does,
    a stop string is cut from the text only when it is complete; until then the running text shows its
    start, which a streaming client must hold back."""

    def __init__(self):
        self.running: dict[str, dict] = {}
        self.added, self.aborted, self.steps = [], [], 0

    def add_request(self, request_id, prompt, params):
        fields = params.fields
        if isinstance(prompt, str) and "too long" in prompt:
            raise ValueError("prompt is longer than the model's context")
        self.added.append((request_id, prompt, fields))
        self.running[request_id] = {"fields": fields, "tokens": 0}

    def has_unfinished_requests(self):
        return bool(self.running)

    def abort_request(self, request_ids):
        self.aborted.extend(request_ids)
        for request_id in request_ids:
            self.running.pop(request_id, None)

    def step(self):
        self.steps += 1
        outputs = []
        for request_id, request in list(self.running.items()):
            request["tokens"] += 1
            fields, samples = request["fields"], []
            for k in range(fields["n"]):
                pieces = script(k)
                count = min(request["tokens"], len(pieces), fields["max_tokens"])
                text, reason = "".join(pieces[:count]), None
                cuts = [text.find(s) for s in fields["stop"] if s in text]
                if cuts:
                    text, reason = text[:min(cuts)], "stop"
                elif count == len(pieces):
                    reason = "stop"  # EOS
                elif count == fields["max_tokens"]:
                    reason = "length"
                samples.append(NS(index=k, text=text, token_ids=list(range(count)), finish_reason=reason))
            outputs.append(NS(request_id=request_id, prompt_token_ids=[1, 2, 3], outputs=samples,
                              finished=all(s.finish_reason for s in samples)))
            if outputs[-1].finished:
                del self.running[request_id]
        return outputs


class StreamingFakeVLLM(FakeVLLM):
    class LLM(FakeVLLM.LLM):
        def __init__(self, **options):
            super().__init__(**options)
            self.llm_engine = SteppingEngine()

        def get_tokenizer(self):
            return self.tokenizer()


@pytest.fixture
def model_folder(tmp_path, monkeypatch):
    from alignkit.models.lora import save_model
    from alignkit.models.tiny import tiny_model, tiny_tokenizer

    monkeypatch.setitem(sys.modules, "vllm", StreamingFakeVLLM)
    tokenizer = tiny_tokenizer()
    save_model(tiny_model(tokenizer), tokenizer, str(tmp_path / "m"))
    return str(tmp_path / "m")


def backend_at(folder):
    from alignkit.generation.specs import build_backend

    return build_backend(f"vllm:{folder}")


def test_deltas_come_step_by_step_hold_back_the_stop_string_and_join_to_the_final_text(model_folder):
    backend = backend_at(model_folder)
    params = SamplingParams(max_tokens=20, n=2, temperature=0.7, seed=3, stop=("###",))
    deltas = list(backend.stream_chat([HELLO], params))
    (_, prompt, fields), = backend.llm.llm_engine.added
    assert prompt == {"prompt_token_ids": tokenize_prompt(backend.llm.get_tokenizer(), HELLO)}
    assert (fields["n"], fields["seed"], fields["stop"]) == (2, 3, ["###"])
    for sample in (0, 1):
        mine = [d for d in deltas if d.sample == sample]
        assert "".join(d.text for d in mine) == f"s{sample} Hello world "
        assert all("#" not in d.text for d in mine)  # "#", "##" were shown by the engine, never sent
        assert len([d for d in mine if d.text]) >= 4  # one per step, not the whole text at the end
        assert [d.finish_reason for d in mine][-1] == "stop" and mine[-1].completion_tokens == 8
        assert mine[-1].prompt_tokens == 3 and all(d.finish_reason is None for d in mine[:-1])
    assert backend.llm.llm_engine.aborted == []


def test_a_chat_template_given_to_the_backend_renders_streamed_prompts(model_folder):
    from alignkit.data.chat import encode_text
    from alignkit.generation.vllm_backend import VLLMBackend

    backend = VLLMBackend(model_folder, chat_template="{% for m in messages %}<{{ m['content'] }}>{% endfor %}")
    list(backend.stream_chat([HELLO], SamplingParams(max_tokens=2)))
    tokenizer = backend.llm.get_tokenizer()
    assert backend.llm.llm_engine.added[0][1] == {"prompt_token_ids": encode_text(tokenizer, "<hello>")}


def test_length_finish_and_raw_prompts(model_folder):
    backend = backend_at(model_folder)
    deltas = list(backend.stream_complete(["Paris is", "Rome is"], SamplingParams(max_tokens=3)))
    assert [p for _, p, _ in backend.llm.llm_engine.added] == ["Paris is", "Rome is"]
    for prompt in (0, 1):
        mine = [d for d in deltas if d.prompt == prompt]
        assert "".join(d.text for d in mine) == "s0 Hello" and mine[-1].finish_reason == "length"


def test_closing_the_stream_aborts_the_requests_and_bad_input_fails_first(model_folder):
    backend = backend_at(model_folder)
    deltas = backend.stream_chat([HELLO], SamplingParams(max_tokens=20))
    assert next(deltas).text == "s0"
    deltas.close()
    engine = backend.llm.llm_engine
    assert engine.aborted == [engine.added[0][0]] and not engine.has_unfinished_requests()
    with pytest.raises(ValueError, match="logprobs"):
        backend.stream_chat([HELLO], SamplingParams(logprobs=1))
    with pytest.raises(ValueError, match="context"):
        next(backend.stream_complete(["ok", "too long"], SamplingParams()))
    assert engine.added[-1][0] in engine.aborted  # the request added before the failure is dropped
    assert not engine.has_unfinished_requests()


def test_serve_with_vllm_streams(model_folder, monkeypatch):
    """`alignkit serve --model vllm:<folder>` builds the vLLM backend and streams through it."""
    import alignkit.serving.app as app_module
    from alignkit.cli import main
    from alignkit.serving.background import start_in_background

    served = {}
    monkeypatch.setattr(app_module.uvicorn, "run", lambda app, **where: served.update(app=app, **where))
    monkeypatch.delenv("ALIGNKIT_API_KEY", raising=False)
    assert main(["serve", "--model", f"vllm:{model_folder}", "--name", "fronted"]) == 0
    with start_in_background(served["app"]) as server:
        client = openai.OpenAI(base_url=server.base_url + "/v1", api_key="x", max_retries=0, timeout=20)
        chunks = list(client.chat.completions.create(model="fronted", messages=HELLO, max_tokens=20, stop="###",
                                                     stream=True, stream_options={"include_usage": True}))
        content = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
        assert "".join(content) == "s0 Hello world " and len(content) >= 4
        assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
        assert chunks[-1].usage.completion_tokens == 8
        texts = [c.choices[0].text for c in client.completions.create(model="fronted", prompt="Paris is",
                                                                      max_tokens=2, stream=True) if c.choices]
        assert "".join(texts) == "s0 Hel"
        assert [m.id for m in client.models.list().data] == ["fronted"]
