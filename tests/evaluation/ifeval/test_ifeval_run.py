"""`run_ifeval`, the API behind `alignkit eval ifeval`: answers from a file or from a backend loaded only
after the prompts are read, the coverage note, and the results file."""
from __future__ import annotations

import json

import pytest

from alignkit.data.errors import DataError, RecordError
from alignkit.evaluation.ifeval import run_ifeval
from alignkit.generation.backend import Completion, SamplingParams
from tests.helpers.files import jsonl_path

PROMPTS = [{"key": 1, "prompt": "Say hi", "instruction_id_list": ["punctuation:no_comma"], "kwargs": [{}]},
           {"key": 2, "prompt": "Say bye", "instruction_id_list": ["punctuation:no_comma"], "kwargs": [{}]}]


class Scripted:
    """Answers every conversation with a fixed reply and records what it was asked."""
    model_id = "scripted"

    def __init__(self, reply: str):
        self.reply, self.seen = reply, []

    def chat(self, conversations, params):
        self.seen.append((list(conversations), params))
        return [[Completion(self.reply)] for _ in conversations]

    def complete(self, prompts, params):
        raise AssertionError("run_ifeval sends conversations")


def test_responses_from_a_file_are_scored_and_written(tmp_path):
    prompts = jsonl_path(tmp_path / "input.jsonl", PROMPTS)
    responses = jsonl_path(tmp_path / "responses.jsonl", [{"prompt": "Say hi", "response": "Hi there"}])
    out = tmp_path / "sub" / "result.json"
    result, note = run_ifeval(prompts, out, responses=responses)
    assert (result.prompts.total, result.n_answered, result.missing) == (2, 1, [2])
    assert note.startswith(f"scored 1 of 2 prompts; 1 prompts had no response in {responses}")
    assert json.loads(out.read_text())["prompt_level_strict"] == 0.5


def test_the_backend_is_loaded_after_the_prompts_and_answers_each_one(tmp_path):
    prompts = jsonl_path(tmp_path / "input.jsonl", PROMPTS)
    backend = Scripted("hello, world")  # a comma: fails punctuation:no_comma
    result, note = run_ifeval(prompts, load_backend=lambda: backend, params=SamplingParams(max_tokens=7), limit=1)
    assert note is None and result.prompts.total == 1 and result.prompt_level_strict == 0.0
    (conversations, params), = backend.seen
    assert conversations == [[{"role": "user", "content": "Say hi"}]] and params.max_tokens == 7

    def never():
        raise AssertionError("loaded before the prompts were read")

    with pytest.raises(RecordError, match="invalid JSON"):
        run_ifeval(jsonl_path(tmp_path / "bad.jsonl", ["{not json"]), load_backend=never)


def test_no_matching_response_raises_and_writes_nothing(tmp_path):
    prompts = jsonl_path(tmp_path / "input.jsonl", PROMPTS)
    responses = jsonl_path(tmp_path / "responses.jsonl", [{"prompt": "elsewhere", "response": "x"}])
    out = tmp_path / "result.json"
    with pytest.raises(DataError, match="no response matches any of the 2 prompts"):
        run_ifeval(prompts, out, responses=responses)
    assert not out.exists()


def test_neither_responses_nor_a_backend_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="needs responses"):
        run_ifeval(jsonl_path(tmp_path / "input.jsonl", PROMPTS))
