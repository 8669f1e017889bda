"""End to end: a real model behind `alignkit serve`'s app, judged over HTTP with the openai client; the
`serve` command itself; and the demo's evaluation stage.

The tiny random model cannot follow the verdict format, so these tests check the accounting rather
than the verdicts: every judgment is a verdict or a reported failure, a rerun is served from the cache
without one HTTP request, and an over-long prompt is a backend error, not a verdict.
"""
import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import openai
import pytest

from alignkit.cli import main
from alignkit.demo.evaluation_stage import evaluate_stages
from alignkit.demo.heldout import load_heldout
from alignkit.generation.backend import Completion
from alignkit.generation.local import LocalBackend
from alignkit.serving.app import create_app
from alignkit.serving.background import start_in_background
from tests.helpers.files import write_jsonl


class Counting:
    """The served backend, counting prompts that reach it."""

    def __init__(self, inner):
        self.inner, self.model_id, self.prompts = inner, inner.model_id, 0
        self.lock = threading.Lock()

    def chat(self, conversations, params):
        with self.lock:
            self.prompts += len(conversations)
        return self.inner.chat(conversations, params)

    def complete(self, prompts, params):
        with self.lock:
            self.prompts += len(prompts)
        return self.inner.complete(prompts, params)


@pytest.fixture(scope="module")
def served_tiny():
    from alignkit.models.tiny import tiny_model, tiny_tokenizer

    tok = tiny_tokenizer("chatml")
    backend = Counting(LocalBackend(tiny_model(tok), tok, batch_size=8, model_id="tiny"))
    with start_in_background(create_app(backend, "tiny", default_max_tokens=8)) as server:
        yield backend, f"openai:tiny@{server.base_url}/v1"


def results(out: Path) -> dict:
    return json.loads((out / "results.json").read_text())


def test_pairwise_against_the_served_model_then_a_rerun_from_the_cache(tmp_path, served_tiny):
    backend, spec = served_tiny
    prompts = ["What is the capital of France?", "Say hello.", "List three colours.", "What is 2 plus 2?"]
    model = write_jsonl(tmp_path / "m.jsonl", [{"id": i, "prompt": p, "response": f"answer {i}"}
                                               for i, p in enumerate(prompts)])
    reference = write_jsonl(tmp_path / "r.jsonl", [{"id": i, "prompt": p, "response": "I do not know."}
                                                   for i, p in enumerate(prompts)])
    args = ["eval", "pairwise", "--outputs", model, "--reference", reference, "--judge", spec,
            "--judge-max-tokens", "8", "--out", str(tmp_path / "run"), "--no-progress"]
    code = main(args)
    first = results(tmp_path / "run")
    lines = [json.loads(line) for line in (tmp_path / "run" / "judgments.jsonl").read_text().splitlines()]
    verdicts = [o["verdict"] for line in lines for o in line["orders"].values()]
    failures = first["details"]["failures"]
    entry = first["sections"]["win_rates"][0]
    assert len(verdicts) == 8 and failures["n_judgments"] == 8
    assert failures["n_failed"] == verdicts.count(None) and failures["n_backend_errors"] == 0
    assert entry["wins"] + entry["losses"] + entry["ties"] <= verdicts.count("m") + verdicts.count("r")
    assert code == (2 if failures["n_failed"] == 8 else 0)
    assert first["meta"]["new_judge_calls"] == 8 and first["details"]["judge_backend"]["http"]["requests"] == 8

    seen = backend.prompts
    assert main(args) == code
    again = results(tmp_path / "run")
    assert backend.prompts == seen and again["meta"]["new_judge_calls"] == 0
    assert again["details"]["judge_backend"]["http"]["requests"] == 0
    assert again["sections"] == first["sections"]


def test_meta_eval_against_the_served_model_counts_an_overlong_prompt_as_an_error(tmp_path, served_tiny):
    _, spec = served_tiny
    pairs = [{"input": "Say hi.", "output_1": "hi", "output_2": "no", "label": 1},
             {"input": "Count to two.", "output_1": "one", "output_2": "one two", "label": 2},
             {"input": "Repeat this. " + "word " * 600, "output_1": "a", "output_2": "b", "label": 1}]
    path = tmp_path / "mini.json"
    path.write_text(json.dumps(pairs))
    code = main(["meta-eval", "--pairs", str(path), "--judge", spec, "--strategies", "plain,cot",
                 "--judge-max-tokens", "8", "--judge-retries", "0", "--out", str(tmp_path / "me"), "--no-progress"])
    document = results(tmp_path / "me")
    for strategy in ("plain", "cot"):
        failures = document["details"]["failures"][strategy]
        accuracy = document["details"]["results"][strategy]
        # The third prompt is longer than the model's context: the server answers 400 in both orders.
        assert failures["n_judgments"] == 6 and failures["n_backend_errors"] == 2
        assert accuracy["n_failures"] == failures["n_failed"]
        assert accuracy["failure_rate"] == pytest.approx(failures["n_failed"] / 6)
        correct = sum(accuracy["accuracy"][order] * 3 for order in ("ab", "ba"))
        assert correct <= 6 - failures["n_failed"] + 1e-9
    assert code in (0, 2)
    code = main(["report", "--results", str(tmp_path / "me" / "results.json"), "--out", str(tmp_path / "rep")])
    assert code == 0 and "strategy" in (tmp_path / "rep" / "report.html").read_text()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_serve_command_answers_the_openai_client(tmp_path):
    from alignkit.models.lora import save_model
    from alignkit.models.tiny import tiny_model, tiny_tokenizer

    tok = tiny_tokenizer("chatml")
    save_model(tiny_model(tok), tok, str(tmp_path / "tiny"))
    port = _free_port()
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    server = subprocess.Popen([sys.executable, "-m", "alignkit.cli", "serve", "--model", str(tmp_path / "tiny"),
                               "--name", "tiny", "--port", str(port), "--default-max-tokens", "4"],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
    try:
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused", max_retries=0, timeout=30)
        deadline = time.monotonic() + 90
        while True:
            try:
                models = client.models.list()
                break
            except openai.APIConnectionError:
                assert server.poll() is None, server.stdout.read().decode()
                assert time.monotonic() < deadline, "alignkit serve did not start in 90 s"
                time.sleep(0.5)
        assert [m.id for m in models.data] == ["tiny"]
        reply = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "hello"}])
        assert reply.choices[0].finish_reason in ("stop", "length") and reply.usage.completion_tokens <= 4
    finally:
        server.terminate()
        server.wait(timeout=30)


class PreferGold:
    """In-process judge that picks the output in the requested format (it knows the gold answers)."""

    model_id = "prefer-gold"

    def __init__(self, gold: set[str]):
        self.gold, self.calls = gold, 0

    def chat(self, conversations, params):
        self.calls += len(conversations)
        replies = []
        for conversation in conversations:
            text = conversation[-1]["content"]
            shown_a = text.split("[Output A begins]\n")[1].split("\n[Output A ends]")[0]
            replies.append([Completion("Verdict: A" if shown_a in self.gold else "Verdict: B")])
        return replies

    def complete(self, prompts, params):
        raise AssertionError("the judge only chats")


def test_demo_stage_scores_judges_and_reports(tmp_path):
    rows = load_heldout(9)
    gold = [row["messages"][1]["content"] for row in rows]
    responses = {"base": ["I am not sure."] * 9, "sft": gold}
    judge = PreferGold(set(gold))
    result = evaluate_stages(responses, rows, judge, tmp_path, max_pairs=6)
    base, sft = result["verifiable"]["base"], result["verifiable"]["sft"]
    assert base["format_following"] == 0.0 and sft["format_following"] == 1.0
    assert base["ifeval"]["prompt_strict"] == 0.0
    assert sft["ifeval"]["per_format_strict"]["json"] == 1.0 and sft["ifeval"]["per_format_strict"]["ending"] == 1.0
    (entry,) = result["win_rates"]
    assert (entry["model"], entry["reference"], entry["n_items"]) == ("sft", "base", 6)
    assert entry["win_rate"] == 1.0 and entry["wins"] == 12 and entry["failures"] == 0
    assert judge.calls == 12 and result["judge_cache"]["misses"] == 12
    report = json.loads((tmp_path / "report.json").read_text())
    assert {"win_rates", "ifeval", "before_after", "tables"} <= set(report)
    assert report["before_after"][0]["before"] == 0.0 and report["before_after"][0]["after"] == 1.0
    # Response length per stage, before and after, with no direction called better.
    assert result["lengths"]["base"]["mean_chars"] == len("I am not sure.")
    assert result["lengths"]["sft"]["mean_chars"] == pytest.approx(sum(map(len, gold)) / 9)
    (length_row,) = [e for e in report["before_after"] if e["metric"].startswith("mean response length")]
    assert length_row["higher_is_better"] is None and length_row["after"] == result["lengths"]["sft"]["mean_chars"]
    assert "Response length per stage" in (tmp_path / "report.html").read_text()
    assert (tmp_path / "report.html").exists() and (tmp_path / "evaluation.json").exists()

    again = evaluate_stages(responses, rows, judge, tmp_path, max_pairs=6)
    assert judge.calls == 12 and again["judge_cache"]["misses"] == 0 and again["win_rates"] == result["win_rates"]


def test_demo_stage_with_a_real_model_as_judge_reports_its_failures(tmp_path, tiny_tok, tiny_lm):
    rows = load_heldout(6)
    responses = {"base": ["no"] * 6, "sft": [row["messages"][1]["content"] for row in rows], "dpo": ["yes"] * 6}
    result = evaluate_stages(responses, rows, LocalBackend(tiny_lm, tiny_tok, batch_size=8), tmp_path)
    assert [e["model"] for e in result["win_rates"]] == ["sft", "dpo"]
    for entry in result["win_rates"]:
        stats = result["judgments"][entry["model"]]
        assert stats["n_judgments"] == 12
        assert entry["n_scored"] + entry["failures"] == 6
        assert entry["wins"] + entry["ties"] + entry["losses"] == 2 * entry["n_scored"]


def test_demo_stage_rejects_bad_input(tmp_path):
    rows = load_heldout(3)
    with pytest.raises(ValueError, match="'base'"):
        evaluate_stages({"sft": ["a"] * 3}, rows, None, tmp_path)
    with pytest.raises(ValueError, match="stage 'sft': 2 responses for 3 rows"):
        evaluate_stages({"base": ["a"] * 3, "sft": ["a"] * 2}, rows, None, tmp_path)
