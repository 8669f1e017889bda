"""VLLMBackend's online-RL side, against the FakeVLLM stand-in: sampling from token ids with one seed per
sample, loading weights into the engine in this process, and the log-probs an engine reports."""
import sys

import pytest
import torch
from safetensors.torch import save_file

from alignkit.generation.backend import SamplingParams
from alignkit.generation.local import _row_seed
from alignkit.models.tiny import tiny_tokenizer
from tests.helpers.generation import FakeVLLM

ENV = "VLLM_ENABLE_V1_MULTIPROCESSING"


@pytest.fixture
def engine_folder(tmp_path, monkeypatch):
    """A folder vLLM could start from (tokenizer and two weights), the fake vllm module installed, and the
    engine in this process."""
    monkeypatch.setitem(sys.modules, "vllm", FakeVLLM)
    monkeypatch.setattr(FakeVLLM, "engines", [])
    monkeypatch.setenv(ENV, "0")
    tiny_tokenizer("chatml").save_pretrained(tmp_path)
    save_file({"a.weight": torch.zeros(2, 3), "b.bias": torch.zeros(4)}, str(tmp_path / "model.safetensors"))
    return str(tmp_path)


def backend_at(folder, **options):
    from alignkit.generation.vllm_backend import VLLMBackend

    return VLLMBackend(folder, tokenizer=folder, **options)


def test_token_id_prompts_reach_vllm_as_they_are_one_seeded_request_per_sample(engine_folder):
    backend = backend_at(engine_folder)
    prompts = [[3, 11, 40, 41], [3, 12]]
    params = SamplingParams(max_tokens=5, temperature=1.0, n=3, seed=7, return_tokens=True)
    out = backend.complete_ids(prompts, params)
    (_, requests, fields), = backend.llm.calls
    assert requests == [{"prompt_token_ids": ids} for ids in prompts for _ in range(3)]
    assert [f["n"] for f in fields] == [1] * 6
    # seeded per sample as LocalBackend seeds its rows: from the seed, the prompt's ids and the sample's index
    assert [f["seed"] for f in fields] == [_row_seed(7, ids, j) for ids in prompts for j in range(3)]
    assert len({f["seed"] for f in fields}) == 6
    assert [len(group) for group in out] == [3, 3]
    for ids, group in zip(prompts, out):
        assert all(c.prompt_tokens == len(ids) and c.token_ids for c in group)
    # a sample is the same whatever else the call holds
    again = backend.complete_ids(prompts[1:], params)
    assert [c.token_ids for c in again[0]] == [c.token_ids for c in out[1]]


def test_without_a_seed_vllm_draws_n_per_prompt(engine_folder):
    backend = backend_at(engine_folder)
    out = backend.complete_ids([[3, 11]], SamplingParams(max_tokens=4, temperature=0.0, n=2, return_tokens=True))
    (_, requests, fields), = backend.llm.calls
    assert requests == [{"prompt_token_ids": [3, 11]}] and fields[0]["n"] == 2 and fields[0]["seed"] is None
    assert len(out[0]) == 2


def test_an_empty_prompt_is_refused(engine_folder):
    with pytest.raises(ValueError, match="prompt 1: no token ids"):
        backend_at(engine_folder).complete_ids([[1], []], SamplingParams(return_tokens=True))


@pytest.mark.parametrize("mode,filled", [(None, False), ("processed_logprobs", True)])
def test_logprobs_of_a_tempered_draw_only_from_an_engine_that_reports_them(engine_folder, mode, filled):
    options = {"logprobs_mode": mode} if mode else {}
    backend = backend_at(engine_folder, **options)
    out = backend.complete_ids([[3, 11]], SamplingParams(max_tokens=4, temperature=0.7, n=1, seed=1,
                                                         return_tokens=True))
    fields = backend.llm.calls[0][2][0]
    assert (fields["logprobs"] == 0) is filled
    assert (out[0][0].logprobs is not None) is filled
    if filled:
        assert len(out[0][0].logprobs) == len(out[0][0].token_ids)


def test_weights_are_loaded_one_tensor_at_a_time_then_the_prefix_cache_is_reset(engine_folder):
    backend = backend_at(engine_folder)
    new = [("a.weight", torch.ones(2, 3)), ("b.bias", torch.full((4,), 2.0))]
    assert backend.push_weights(iter(new)) == 2
    assert backend.llm.events == [("load_weights", "a.weight"), ("load_weights", "b.bias"), ("reset_prefix_cache",)]
    assert torch.equal(backend.llm.weights["a.weight"], torch.ones(2, 3))
    with pytest.raises(KeyError, match="base_model"):  # a name the engine does not know fails loudly
        backend.push_weights([("base_model.model.a.weight", torch.ones(2, 3))])


def test_an_engine_in_another_process_gives_one_clear_error(engine_folder, monkeypatch):
    monkeypatch.setenv(ENV, "1")
    backend = backend_at(engine_folder)
    with pytest.raises(ValueError, match=f"{ENV}=0"):
        backend.push_weights([("a.weight", torch.ones(2, 3))])
    assert backend.llm.events == []


def test_vllm_installed_is_found_without_importing_it(monkeypatch):
    from alignkit.generation.vllm_backend import vllm_installed

    monkeypatch.setitem(sys.modules, "vllm", None)
    assert not vllm_installed()
    monkeypatch.setitem(sys.modules, "vllm", FakeVLLM)
    assert vllm_installed()
