"""LocalBackend against an independent token-by-token decoder over the same tiny model."""
import math

import pytest
import torch

from alignkit.generation.backend import SamplingParams
from alignkit.generation.local import LocalBackend, generate_texts
from alignkit.models.tiny import tiny_model, tiny_tokenizer
from tests.helpers.generation import (CONVERSATIONS, FakeVLLM, chat_ids, decode, one_thread,  # noqa: F401 (fixture)
                                      reference_greedy, sharp_model)


@pytest.fixture(scope="module")
def chatml():
    tokenizer = tiny_tokenizer("chatml")
    return tokenizer, sharp_model(tokenizer)


def test_greedy_matches_reference_decoder_across_padded_batches(chatml):
    tokenizer, model = chatml
    backend = LocalBackend(model, tokenizer, batch_size=3)
    results = backend.chat(CONVERSATIONS, SamplingParams(max_tokens=16))
    assert len({len(chat_ids(tokenizer, c)) for c in CONVERSATIONS}) == len(CONVERSATIONS)  # padding is exercised
    assert len({r[0].text for r in results}) == len(CONVERSATIONS)  # outputs depend on the prompt
    for conversation, (completion,) in zip(CONVERSATIONS, results):
        expected = reference_greedy(model, chat_ids(tokenizer, conversation), 16, {tokenizer.eos_token_id})
        assert completion.text == decode(tokenizer, expected)
        assert completion.completion_tokens == len(expected)
        assert completion.prompt_tokens == len(chat_ids(tokenizer, conversation))
        assert completion.finish_reason == "length"


def test_model_generation_config_does_not_leak_into_decoding():
    tokenizer = tiny_tokenizer("chatml")
    model = sharp_model(tokenizer)
    # Shipped configs (Llama-3, Qwen) turn on sampling and penalties; SamplingParams must win.
    model.generation_config.update(do_sample=True, temperature=0.6, top_p=0.9, top_k=20, repetition_penalty=1.5,
                                   no_repeat_ngram_size=1)
    results = LocalBackend(model, tokenizer).chat(CONVERSATIONS, SamplingParams(max_tokens=16))
    for conversation, (completion,) in zip(CONVERSATIONS, results):
        expected = reference_greedy(model, chat_ids(tokenizer, conversation), 16, {tokenizer.eos_token_id})
        assert completion.text == decode(tokenizer, expected)


def test_batched_equals_unbatched(chatml):
    tokenizer, model = chatml
    params = SamplingParams(max_tokens=12, logprobs=2)
    batched = LocalBackend(model, tokenizer, batch_size=8).chat(CONVERSATIONS, params)
    one_by_one = LocalBackend(model, tokenizer, batch_size=1).chat(CONVERSATIONS, params)
    for (a,), (b,) in zip(batched, one_by_one):
        assert (a.text, a.completion_tokens, a.finish_reason) == (b.text, b.completion_tokens, b.finish_reason)
        for step_a, step_b in zip(a.top_logprobs, b.top_logprobs, strict=True):
            assert list(step_a) == list(step_b)
            assert all(math.isclose(step_a[k], step_b[k], abs_tol=1e-4) for k in step_a)


def test_eos_ends_generation_even_when_pad_equals_eos():
    tokenizer = tiny_tokenizer("chatml")
    model = sharp_model(tokenizer, seed=1)
    conversation = CONVERSATIONS[3]  # earlier turns put <|im_end|> (the EOS) inside the prompt
    free_run = reference_greedy(model, chat_ids(tokenizer, conversation), 12, set())
    # Declare the 4th generated token to be EOS, so generation must end right there.
    new_eos = tokenizer.convert_ids_to_tokens(free_run[3])
    end = free_run.index(free_run[3]) + 1
    tokenizer.eos_token = new_eos
    tokenizer.pad_token = new_eos
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    backend = LocalBackend(model, tokenizer, batch_size=2)
    results = backend.chat([conversation, CONVERSATIONS[0]], SamplingParams(max_tokens=12))
    stopped = results[0][0]
    assert stopped.finish_reason == "stop"
    assert stopped.completion_tokens == end
    assert stopped.text == decode(tokenizer, free_run[:end - 1])
    other = reference_greedy(model, chat_ids(tokenizer, CONVERSATIONS[0]), 12, {tokenizer.eos_token_id})
    assert results[1][0].text == decode(tokenizer, [t for t in other if t != tokenizer.eos_token_id])


def test_stop_strings_cut_text_and_end_early(chatml):
    tokenizer, model = chatml
    backend = LocalBackend(model, tokenizer, batch_size=4)
    prompt = [CONVERSATIONS[1]]
    full = backend.chat(prompt, SamplingParams(max_tokens=40))[0][0].text
    start = next(i for i in range(3, len(full) - 2) if "\ufffd" not in full[i:i + 2])
    stop = full[start:start + 2]
    cut = full.find(stop)
    result = backend.chat(prompt, SamplingParams(max_tokens=40, stop=(stop, "never appears")))[0][0]
    assert result.text == full[:cut]
    assert result.finish_reason == "stop"
    assert result.completion_tokens < 40
    missing = backend.chat(prompt, SamplingParams(max_tokens=40, stop=("never appears",)))[0][0]
    assert (missing.text, missing.finish_reason) == (full, "length")


def test_stop_string_that_is_a_special_token_acts_like_eos():
    tokenizer = tiny_tokenizer("chatml")
    model = sharp_model(tokenizer)
    start_id = tokenizer.convert_tokens_to_ids("<|im_start|>")
    # A head biased towards <|im_start|>: a special token, so it never shows up in decoded text
    # and only its id can end generation.
    head = torch.nn.Linear(model.config.hidden_size, model.config.vocab_size, bias=True)
    with torch.no_grad():
        head.weight.copy_(model.lm_head.weight)
        head.bias.zero_()
        head.bias[start_id] = 1e4
    model.lm_head = head
    backend = LocalBackend(model, tokenizer)
    free = backend.chat(CONVERSATIONS[:1], SamplingParams(max_tokens=5))[0][0]
    assert (free.text, free.finish_reason, free.completion_tokens) == ("", "length", 5)
    stopped = backend.chat(CONVERSATIONS[:1], SamplingParams(max_tokens=5, stop=("<|im_start|>",)))[0][0]
    assert (stopped.text, stopped.finish_reason, stopped.completion_tokens) == ("", "stop", 1)


def test_seed_reproducible_and_independent_of_batch_mates(chatml):
    tokenizer, model = chatml
    backend = LocalBackend(model, tokenizer, batch_size=8)
    params = SamplingParams(max_tokens=10, temperature=1.0, n=3, seed=123)
    first = backend.chat(CONVERSATIONS, params)
    again = backend.chat(CONVERSATIONS, params)
    assert [[c.text for c in r] for r in first] == [[c.text for c in r] for r in again]
    alone = LocalBackend(model, tokenizer, batch_size=1).chat([CONVERSATIONS[2]], params)
    assert [c.text for c in alone[0]] == [c.text for c in first[2]]
    assert len({c.text for c in first[2]}) == 3  # the n samples differ from each other
    other_seed = backend.chat(CONVERSATIONS, SamplingParams(max_tokens=10, temperature=1.0, n=3, seed=124))
    assert [[c.text for c in r] for r in other_seed] != [[c.text for c in r] for r in first]


def test_top_k_one_sampling_is_greedy(chatml):
    tokenizer, model = chatml
    backend = LocalBackend(model, tokenizer)
    greedy = backend.chat(CONVERSATIONS, SamplingParams(max_tokens=8))
    top1 = backend.chat(CONVERSATIONS, SamplingParams(max_tokens=8, temperature=1.5, top_k=1, n=2))
    for (g,), samples in zip(greedy, top1):
        assert [s.text for s in samples] == [g.text, g.text]


def test_greedy_n_returns_n_equal_completions(chatml):
    tokenizer, model = chatml
    results = LocalBackend(model, tokenizer).chat(CONVERSATIONS[:2], SamplingParams(max_tokens=6, n=3))
    for samples in results:
        assert len(samples) == 3 and len({s.text for s in samples}) == 1
        assert samples[0] is not samples[1]


def test_logprobs_sum_to_sequence_log_likelihood(chatml):
    tokenizer, model = chatml
    backend = LocalBackend(model, tokenizer, batch_size=4)
    results = backend.chat(CONVERSATIONS, SamplingParams(max_tokens=10, logprobs=3))
    for conversation, (completion,) in zip(CONVERSATIONS, results):
        prompt = chat_ids(tokenizer, conversation)
        generated = reference_greedy(model, prompt, 10, {tokenizer.eos_token_id})
        with torch.no_grad():
            logprobs = torch.log_softmax(model(torch.tensor([prompt + generated])).logits[0].float(), -1)
        expected = sum(float(logprobs[len(prompt) - 1 + t, token]) for t, token in enumerate(generated))
        chosen = [next(iter(step.values())) for step in completion.top_logprobs]
        assert len(chosen) == len(generated)
        assert math.isclose(sum(chosen), expected, abs_tol=1e-3)
        for step in completion.top_logprobs:
            values = list(step.values())
            assert len(step) == 3  # greedy picks the most likely token, so it is one of the top 3
            assert values[0] == max(values)
            assert math.log(sum(math.exp(v) for v in values)) <= 1e-6


def test_sampled_logprobs_include_the_sampled_token(chatml):
    tokenizer, model = chatml
    result = LocalBackend(model, tokenizer).complete(
        ["The quick brown fox"], SamplingParams(max_tokens=8, temperature=2.0, seed=5, logprobs=1))[0][0]
    assert len(result.top_logprobs) == result.completion_tokens == 8
    for step in result.top_logprobs:
        assert 1 <= len(step) <= 2 and all(v <= 0 for v in step.values())


@pytest.mark.parametrize("template", ["llama3", "inst"])
def test_bos_is_never_doubled(template):
    tokenizer = tiny_tokenizer(template)
    model = tiny_model(tokenizer)
    backend = LocalBackend(model, tokenizer)
    seen: list[list[int]] = []
    original = model.generate

    def spy(**kwargs):
        for ids, mask in zip(kwargs["input_ids"].tolist(), kwargs["attention_mask"].tolist()):
            seen.append([i for i, m in zip(ids, mask) if m])
        return original(**kwargs)

    model.generate = spy
    backend.chat(CONVERSATIONS[:2], SamplingParams(max_tokens=2))
    backend.complete(["Paris is"], SamplingParams(max_tokens=2))
    rendered = tokenizer.apply_chat_template(CONVERSATIONS[0], tokenize=False, add_generation_prompt=True)
    backend.complete([rendered], SamplingParams(max_tokens=2))  # a template rendered by the caller
    assert len(seen) == 4
    for ids in seen:
        assert ids[0] == tokenizer.bos_token_id and ids.count(tokenizer.bos_token_id) == 1


def test_mode_is_restored_and_bad_input_is_named(chatml):
    tokenizer, model = chatml
    backend = LocalBackend(model, tokenizer)
    model.train()
    backend.complete(["hello"], SamplingParams(max_tokens=2))
    assert model.training
    model.eval()
    with pytest.raises(ValueError, match=r"conversation 1, message 0: field 'role'"):
        backend.chat([CONVERSATIONS[0], [{"role": "robot", "content": "x"}]], SamplingParams(max_tokens=2))
    with pytest.raises(ValueError, match="stop must be a tuple"):
        backend.chat(CONVERSATIONS[:1], SamplingParams(max_tokens=2, stop="x"))
    with pytest.raises(ValueError, match="prompt 0 is empty"):
        backend.complete([""], SamplingParams(max_tokens=2))
    with pytest.raises(ValueError, match="prompt 1: .* exceed the model's context of 512"):
        backend.complete(["hi", "hello " * 300], SamplingParams(max_tokens=2))
    # A data job's backend answers the others and returns the long prompt's samples as errors.
    lenient = LocalBackend(model, tokenizer, overlong="error")
    short, long = lenient.complete(["hi", "hello " * 300], SamplingParams(max_tokens=2, temperature=1.0, n=2, seed=0))
    assert short == backend.complete(["hi"], SamplingParams(max_tokens=2, temperature=1.0, n=2, seed=0))[0]
    assert [c.finish_reason for c in long] == ["error", "error"]
    assert "exceed the model's context of 512" in long[0].error and long[0].text == ""


def test_generate_texts_keeps_order_for_mixed_prompts(chatml):
    tokenizer, model = chatml
    backend = LocalBackend(model, tokenizer, batch_size=2)
    params = SamplingParams(max_tokens=5)
    prompts = ["Paris is", CONVERSATIONS[1], "The quick brown fox jumps", CONVERSATIONS[0]]
    results = generate_texts(backend, prompts, params, progress=False, chunk_size=3)
    direct_chat = backend.chat([CONVERSATIONS[1], CONVERSATIONS[0]], params)
    direct_raw = backend.complete(["Paris is", "The quick brown fox jumps"], params)
    assert [r[0].text for r in results] == [direct_raw[0][0].text, direct_chat[0][0].text,
                                           direct_raw[1][0].text, direct_chat[1][0].text]
    with pytest.raises(ValueError, match="prompt 1: expected a string or a list"):
        generate_texts(backend, ["ok", 3], params, progress=False)


def test_vllm_backend_maps_parameters_and_outputs(monkeypatch):
    import sys
    from alignkit.generation.vllm_backend import VLLMBackend

    monkeypatch.setitem(sys.modules, "vllm", FakeVLLM)
    backend = VLLMBackend("/models/x", max_model_len=2048, enforce_eager=True)
    assert backend.llm.options["model"] == "/models/x" and backend.llm.options["enforce_eager"] is True
    params = SamplingParams(max_tokens=7, temperature=0.5, top_p=0.9, n=2, seed=4, stop=("\n",), logprobs=2)
    (first, second), = backend.chat(CONVERSATIONS[:1], params)
    kind, messages, fields, add_generation_prompt = backend.llm.calls[0]
    assert (kind, messages, add_generation_prompt) == ("chat", CONVERSATIONS[:1], True)
    assert fields == {"n": 2, "temperature": 0.5, "top_p": 0.9, "top_k": -1, "seed": 4, "stop": ["\n"],
                      "max_tokens": 7, "logprobs": 2}
    assert (first.text, first.finish_reason, first.prompt_tokens, first.completion_tokens) == ("ab", "stop", 3, 2)
    assert first.top_logprobs == [{"a": -0.1, "b": -2.5}, {"b": -3.0, "a": -0.2, "c": -1.0}]
    assert list(first.top_logprobs[1]) == ["b", "a", "c"]  # chosen first, then by rank
    assert second.finish_reason == "error" and "abort" in second.error
    backend.complete(["Paris is"], SamplingParams(top_k=5))
    assert backend.llm.calls[1][2]["top_k"] == 5


def test_vllm_backend_without_vllm_says_so(monkeypatch):
    import sys
    from alignkit.generation.vllm_backend import VLLMBackend

    monkeypatch.setitem(sys.modules, "vllm", None)  # makes `import vllm` fail even where it is installed
    with pytest.raises(ImportError, match="VLLMBackend needs vLLM"):
        VLLMBackend("/models/x")


def test_vllm_judge_specs_resolve_like_local_ones(monkeypatch, tmp_path):
    import sys
    from alignkit.generation.specs import BackendOptions, build_backend
    from alignkit.models.lora import save_model
    from alignkit.models.tiny import tiny_model, tiny_tokenizer

    monkeypatch.setitem(sys.modules, "vllm", FakeVLLM)
    tok = tiny_tokenizer()
    save_model(tiny_model(tok), tok, str(tmp_path / "m"))
    backend = build_backend(f"vllm:{tmp_path / 'm'}", BackendOptions(dtype="bf16"))
    assert backend.llm.options["model"] == str(tmp_path / "m") and backend.llm.options["dtype"] == "bfloat16"
    # Its own cache id: neither the transformers judge's nor the fp32 one's.
    assert backend.model_id.startswith(f"vllm:{tmp_path / 'm'}#") and backend.model_id.endswith("@bf16")
    (tmp_path / "adapter").mkdir()
    (tmp_path / "adapter" / "adapter_config.json").write_text("{}")
    with pytest.raises(ValueError, match="LoRA adapter folder"):
        build_backend(f"vllm:{tmp_path / 'adapter'}")
