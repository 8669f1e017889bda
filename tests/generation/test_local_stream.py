"""LocalBackend's streaming: deltas that join to exactly the non-streamed text, hold back what a stop
string or a split UTF-8 character may still change, and stop the generation when closed."""
import pytest

from alignkit.generation.backend import SamplingParams
from alignkit.generation.local import LocalBackend, _IncrementalText, streamable_text
from alignkit.models.tiny import tiny_tokenizer
from tests.helpers.generation import CONVERSATIONS, decode, one_thread, sharp_model  # noqa: F401 (fixture)


@pytest.fixture(scope="module")
def backend():
    tokenizer = tiny_tokenizer("chatml")
    return LocalBackend(sharp_model(tokenizer), tokenizer, batch_size=3)


def collect(deltas):
    """{(prompt, sample): (joined text, number of pieces with text, finishing delta)}."""
    texts, pieces, finishes = {}, {}, {}
    for delta in deltas:
        key = (delta.prompt, delta.sample)
        assert key not in finishes, f"a delta after {key} finished"
        texts[key] = texts.get(key, "") + delta.text
        pieces[key] = pieces.get(key, 0) + bool(delta.text)
        if delta.finish_reason is not None:
            finishes[key] = delta
    return {key: (texts[key], pieces[key], finishes.get(key)) for key in texts}


def assert_same_as_whole(streamed, whole):
    assert set(streamed) == {(i, j) for i, samples in enumerate(whole) for j in range(len(samples))}
    for i, samples in enumerate(whole):
        for j, completion in enumerate(samples):
            text, _, finish = streamed[(i, j)]
            assert text == completion.text
            assert (finish.finish_reason, finish.prompt_tokens, finish.completion_tokens) == \
                   (completion.finish_reason, completion.prompt_tokens, completion.completion_tokens)


def test_streamable_text_holds_back_what_may_still_change():
    assert streamable_text("hello wor", ()) == ("hello wor", False)
    assert streamable_text("abc###def", ("###",)) == ("abc", True)
    assert streamable_text("abc##", ("###",)) == ("abc", False)  # "##" may become the stop string
    assert streamable_text("abc#x", ("###",)) == ("abc#x", False)
    assert streamable_text("say END", ("ENDING", "D")) == ("say EN", True)  # the first stop string in the text
    assert streamable_text("say EN", ("ENDING", "NX")) == ("say ", False)  # the longest held-back tail wins
    assert streamable_text("ab\ufffd\ufffd", ()) == ("ab", False)  # a character still missing bytes
    assert streamable_text("a\ufffdb", ()) == ("a\ufffdb", False)  # a replacement in the middle stays


def test_incremental_text_over_split_characters_and_a_stop_string():
    tokenizer = tiny_tokenizer("chatml")
    ids = tokenizer("a中é b##x###tail", add_special_tokens=False)["input_ids"]
    assert any("\ufffd" in decode(tokenizer, ids[:k]) for k in range(len(ids)))  # characters do split
    text = _IncrementalText(lambda part: decode(tokenizer, part), {tokenizer.eos_token_id}, ("###",))
    pieces = [text.add(token_id) for token_id in ids]
    assert text.ended
    assert all("\ufffd" not in piece for piece in pieces)
    assert "".join(pieces) == "a中é b##x"
    assert text.rest("a中é b##x") == ""
    # Nothing of the stop string was ever sent, even while it was incomplete.
    assert max(len(piece) for piece in pieces) < len("a中é b##x") and "###" not in "".join(pieces)
    assert text.add(ids[0]) == ""  # tokens after the end are ignored
    with pytest.raises(RuntimeError, match="not the start of the final text"):
        _sent("xyz").rest("abc")


def _sent(already: str) -> _IncrementalText:
    text = _IncrementalText(lambda part: already, set(), ())
    text.add(1)
    return text


@pytest.mark.parametrize("params", [
    SamplingParams(max_tokens=20),
    SamplingParams(max_tokens=12, n=3, temperature=1.0, seed=5),
    SamplingParams(max_tokens=16, n=2, temperature=0.8, top_k=20, seed=1),
    SamplingParams(max_tokens=30, n=2, stop=("e", "th")),
])
def test_streamed_chat_is_the_non_streamed_chat(backend, params):
    streamed = collect(backend.stream_chat(CONVERSATIONS, params))
    assert_same_as_whole(streamed, backend.chat(CONVERSATIONS, params))
    if not params.stop:  # text really came in pieces, not in one delta at the end
        assert all(pieces > 1 for _, pieces, _ in streamed.values())


def test_stop_strings_in_the_middle_of_tokens(backend):
    (full,), = backend.chat([CONVERSATIONS[1]], SamplingParams(max_tokens=30))
    start = next(i for i in range(3, len(full.text) - 3) if "\ufffd" not in full.text[i:i + 3])
    stop = (full.text[start:start + 3], full.text[start + 1:start + 2] + "never")
    params = SamplingParams(max_tokens=30, stop=stop)
    streamed = collect(backend.stream_chat([CONVERSATIONS[1]], params))
    assert streamed[(0, 0)][0] == full.text[:start] and streamed[(0, 0)][2].finish_reason == "stop"
    assert_same_as_whole(streamed, backend.chat([CONVERSATIONS[1]], params))


def test_streamed_completions_of_several_prompts(backend):
    prompts = ["Paris is", "The quick brown fox", "Numbers 0 1 2", "hello world"]  # two batches of 3 rows
    params = SamplingParams(max_tokens=10, n=2, temperature=0.9, seed=3)
    assert_same_as_whole(collect(backend.stream_complete(prompts, params)), backend.complete(prompts, params))


def test_bad_input_is_refused_before_the_first_delta(backend):
    with pytest.raises(ValueError, match="exceed the model's context"):
        backend.stream_complete(["hello " * 300], SamplingParams(max_tokens=4))
    with pytest.raises(ValueError, match="logprobs"):
        backend.stream_chat(CONVERSATIONS[:1], SamplingParams(logprobs=2))
    with pytest.raises(ValueError, match="conversation 0"):
        backend.stream_chat([[{"role": "robot", "content": "x"}]], SamplingParams())
    tokenizer = tiny_tokenizer("chatml")
    errors = LocalBackend(sharp_model(tokenizer), tokenizer, overlong="error")
    (finish,) = [d for d in errors.stream_complete(["hello " * 300], SamplingParams(max_tokens=4))]
    assert finish.finish_reason == "error" and "context" in finish.error and finish.text == ""


def test_closing_the_stream_stops_the_generation(backend, monkeypatch):
    generated = []
    original = LocalBackend._generate_batch

    def recording(self, *args, **kwargs):
        outputs = original(self, *args, **kwargs)
        generated.extend(len(output.token_ids) for output in outputs)
        return outputs

    monkeypatch.setattr(LocalBackend, "_generate_batch", recording)
    params = SamplingParams(max_tokens=300)
    (whole,), = backend.chat(CONVERSATIONS[:1], params)
    assert whole.finish_reason == "length" and generated == [300]
    deltas = backend.stream_chat(CONVERSATIONS[:1], params)
    first = next(deltas)
    assert first.text
    deltas.close()  # returns once the generating thread has stopped
    assert len(generated) == 2 and generated[1] < 300
