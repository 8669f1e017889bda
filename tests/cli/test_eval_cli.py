"""The evaluation commands through `alignkit.cli.main`, with scripted judges served over real HTTP.

The scripted judges read the two outputs out of the pairwise prompt and decide by a rule the test
controls, so every expected count below follows from how the test data was built.
"""
import asyncio
import json
from pathlib import Path

import pytest
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from alignkit.cli import main
from alignkit.generation.backend import Completion
from alignkit.generation.model_id import local_model_id
from alignkit.generation.specs import BackendSpec, parse_backend_spec
from alignkit.serving.app import create_app
from alignkit.serving.background import start_in_background
from tests.helpers.files import write_jsonl
from tests.helpers.judges import ScriptedJudge, shown_outputs

NATURAL = "llmbar/natural.json"


@pytest.fixture(scope="module")
def judges():
    """A served scripted judge per mode: {mode: (backend, spec string)}."""
    servers, found = [], {}
    for mode in ("good", "garbage", "grader"):
        backend = ScriptedJudge(mode)
        server = start_in_background(create_app(backend, mode))
        servers.append(server)
        found[mode] = (backend, f"openai:{mode}@{server.base_url}/v1")
    yield found
    for server in servers:
        server.stop()


def faulty_app() -> FastAPI:
    """OpenAI-compatible chat endpoint: 500 when the model's output says FAIL500, a hang when it says SLOW,
    otherwise the "good" rule."""
    app = FastAPI()
    app.state.requests = 0

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        app.state.requests += 1
        body = await request.json()
        prompt = body["messages"][-1]["content"]
        if "FAIL500" in prompt:
            return JSONResponse({"error": {"message": "scripted failure", "type": "server_error"}}, 500)
        if "SLOW" in prompt:
            await asyncio.sleep(3)
        text = "Verdict: A" if "GOOD" in shown_outputs(prompt)["A"] else "Verdict: B"
        return {"id": "x", "object": "chat.completion", "created": 0, "model": body["model"],
                "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}}

    return app


def results(out: Path) -> dict:
    return json.loads((out / "results.json").read_text())


def pairwise(tmp_path, spec, model_rows, reference_rows, *extra, out="run"):
    model = write_jsonl(tmp_path / "model.jsonl", model_rows)
    reference = write_jsonl(tmp_path / "reference.jsonl", reference_rows)
    code = main(["eval", "pairwise", "--outputs", model, "--reference", reference, "--judge", spec,
                 "--out", str(tmp_path / out), "--no-progress", *extra])
    return code, tmp_path / out


# 6 items where only the model says GOOD (won in both orders), 2 where only the reference does (lost in both),
# 2 where neither does: the "good" rule then answers B in both orders, one win and one loss, i.e. a tie item.
MODEL = ([{"prompt": f"q{i}", "response": f"GOOD answer {i}", "model": "mine"} for i in range(6)]
         + [{"prompt": f"q{i}", "response": f"weak {i}", "model": "mine"} for i in range(6, 10)])
REFERENCE = ([{"prompt": f"q{i}", "response": f"ref {i}", "model": "theirs"} for i in range(6)]
             + [{"prompt": f"q{i}", "response": f"GOOD ref {i}", "model": "theirs"} for i in range(6, 8)]
             + [{"prompt": f"q{i}", "response": f"ref {i}", "model": "theirs"} for i in range(8, 10)])


def test_pairwise_win_rate_counts_both_orders(tmp_path, judges, capsys):
    code, out = pairwise(tmp_path, judges["good"][1], MODEL, REFERENCE, "--report")
    assert code == 0
    entry = results(out)["sections"]["win_rates"][0]
    assert (entry["model"], entry["reference"]) == ("mine", "theirs")
    assert (entry["wins"], entry["losses"], entry["ties"]) == (6 * 2 + 2, 2 * 2 + 2, 0)
    assert entry["win_rate"] == pytest.approx((6 + 0.5 * 2) / 10)
    assert entry["order_agreement"] == pytest.approx(8 / 10)
    assert entry["failures"] == 0 and entry["standard_error"] > 0 and entry["lc_win_rate"] is not None
    assert len((out / "judgments.jsonl").read_text().splitlines()) == 10
    battles = [json.loads(line) for line in (out / "battles.jsonl").read_text().splitlines()]
    assert len(battles) == 20 and sum(b["winner"] == "a" for b in battles) == 14
    assert (out / "report.html").exists() and (out / "report.json").exists()
    assert "new calls" in capsys.readouterr().out


def test_rerun_is_served_entirely_from_the_cache(tmp_path, judges, capsys):
    backend, spec = judges["good"]
    pairwise(tmp_path, spec, MODEL, REFERENCE)
    first = results(tmp_path / "run")
    seen = backend.prompts_seen
    code, out = pairwise(tmp_path, spec, MODEL, REFERENCE)
    again = results(out)
    assert code == 0 and backend.prompts_seen == seen
    assert again["meta"]["new_judge_calls"] == 0 and again["meta"]["judge_cache_hits"] == 20
    assert again["details"]["judge_backend"]["http"]["requests"] == 0
    assert again["sections"]["win_rates"] == first["sections"]["win_rates"]
    assert "0 new calls" in capsys.readouterr().out.splitlines()[-1]


def test_garbage_judge_is_reported_as_failures_never_wins_or_ties(tmp_path, judges, capsys):
    code, out = pairwise(tmp_path, judges["garbage"][1], MODEL, REFERENCE)
    assert code == 2 and "all 20 judgments failed" in capsys.readouterr().err
    document = results(out)
    entry = document["sections"]["win_rates"][0]
    assert entry["win_rate"] is None and (entry["wins"], entry["ties"], entry["losses"]) == (0, 0, 0)
    assert entry["failures"] == 10 and entry["failure_rate"] == 1.0
    failures = document["details"]["failures"]
    assert failures["n_parse_failures"] == 20 and failures["parse_failure_rate"] == 1.0
    assert failures["n_backend_errors"] == 0


def test_server_errors_and_timeouts_are_counted_and_never_scored(tmp_path):
    app = faulty_app()
    model = [dict(row) for row in MODEL]
    model[0]["response"] = "GOOD but FAIL500"
    model[1]["response"] = "GOOD but SLOW"
    with start_in_background(app) as server:
        spec = f"openai:faulty@{server.base_url}/v1"
        options = ["--judge-timeout", "0.5", "--judge-retries", "1"]
        code, out = pairwise(tmp_path, spec, model, REFERENCE, *options)
        first_requests = app.state.requests
        document = results(out)
        entry, failures = document["sections"]["win_rates"][0], document["details"]["failures"]
        assert code == 0
        # Items 0 and 1 failed in both orders (a retry each); the other 8 are scored as before.
        assert failures["n_backend_errors"] == 4 and failures["n_parse_failures"] == 0
        assert entry["failures"] == 2 and entry["n_scored"] == 8
        assert (entry["wins"], entry["losses"]) == (4 * 2 + 2, 2 * 2 + 2)
        assert entry["win_rate"] == pytest.approx((4 + 0.5 * 2) / 8)
        assert document["details"]["judge_backend"]["http"]["retries"] == 4
        # Errors are never cached: the rerun asks again for exactly the four failed judgments.
        code, out = pairwise(tmp_path, spec, model, REFERENCE, *options)
        assert results(out)["meta"]["new_judge_calls"] == 4
        assert app.state.requests - first_requests == 4 * 2


def test_empty_outputs_file_is_a_clear_error(tmp_path, judges, capsys):
    code, out = pairwise(tmp_path, judges["good"][1], [], REFERENCE)
    assert code == 2 and "model.jsonl: contains no records" in capsys.readouterr().err
    assert not (out / "results.json").exists()


def test_mismatched_outputs_and_reference_list_the_ids(tmp_path, judges, capsys):
    model = [{"id": i, "prompt": "p", "response": "r"} for i in range(4)]
    reference = [{"id": i, "prompt": "p", "response": "r"} for i in (0, 1, 2, 7)]
    code, _ = pairwise(tmp_path, judges["good"][1], model, reference)
    err = capsys.readouterr().err
    assert code == 2 and "matched by ids" in err and "1 only in" in err and "'3'" in err and "'7'" in err


@pytest.mark.parametrize("rows, message", [
    ([{"prompt": "q0", "response": "a"}, {"prompt": "q1"}], "model.jsonl:2: response: missing"),
    ([{"prompt": "q0", "response": 3}], "model.jsonl:1: response: must be a string"),
    ([{"prompt": "q0", "response": "a"}, "{oops"], "model.jsonl:2: invalid JSON"),
    ([{"prompt": "q0", "response": "a"}, {"prompt": "q0", "response": "b"}], "model.jsonl:2: prompt 'q0' appears twice"),
])
def test_bad_output_records_name_file_line_and_field(tmp_path, judges, capsys, rows, message):
    code, _ = pairwise(tmp_path, judges["good"][1], rows, [{"prompt": "q0", "response": "x"}])
    assert code == 2 and message in capsys.readouterr().err


def llmbar_labels(shared_data, n):
    return [pair["label"] for pair in json.loads((Path(shared_data) / NATURAL).read_text())[:n]]


def test_meta_eval_scores_predictions_made_elsewhere(tmp_path, shared_data):
    labels = llmbar_labels(shared_data, 4)
    # Right in order ab every time, wrong in order ba every time, and pair 3's ba verdict failed.
    predictions = [{"id": f"natural-{i}", "order": "ab", "verdict": label} for i, label in enumerate(labels)]
    predictions += [{"id": f"natural-{i}", "order": "ba", "verdict": 3 - label} for i, label in enumerate(labels[:3])]
    predictions.append({"id": "natural-3", "order": "ba", "verdict": None})
    path = write_jsonl(tmp_path / "other_judge.jsonl", predictions)
    code = main(["meta-eval", "--pairs", "natural=" + str(Path(shared_data) / NATURAL), "--limit", "4", "--predictions", path,
                 "--out", str(tmp_path / "me")])
    assert code == 0
    row = results(tmp_path / "me")["sections"]["strategy_comparison"][0]
    assert row["strategy"] == "other_judge" and row["n_items"] == 4
    assert row["accuracy_by_order"] == {"ab": 1.0, "ba": 0.0} and row["mean_accuracy"] == 0.5
    assert row["positional_agreement"] == 0.0 and row["parse_failure_rate"] == pytest.approx(1 / 8)


def test_predictions_with_unknown_ids_exit_2_naming_them(tmp_path, shared_data, capsys):
    path = write_jsonl(tmp_path / "preds.jsonl", [{"id": "natural-0", "verdict": 1}, {"id": "natural-9999", "verdict": 2}])
    code = main(["meta-eval", "--pairs", "natural=" + str(Path(shared_data) / NATURAL), "--predictions", path,
                 "--out", str(tmp_path / "me")])
    err = capsys.readouterr().err
    assert code == 2 and "natural-9999" in err and "preds.jsonl:2" in err
    assert not (tmp_path / "me" / "results.json").exists()


def test_a_bad_predictions_file_stops_meta_eval_before_any_judge_call(tmp_path, shared_data, judges, capsys):
    backend, spec = judges["good"]
    seen = backend.prompts_seen
    path = write_jsonl(tmp_path / "preds.jsonl", [{"id": "natural-0", "order": "ab", "verdict": 1},
                                                  {"id": "natural-0", "order": "sideways", "verdict": 1}])
    code = main(["meta-eval", "--pairs", str(Path(shared_data) / NATURAL), "--limit", "2", "--judge", spec,
                 "--strategies", "plain", "--predictions", path, "--out", str(tmp_path / "me"), "--no-progress"])
    assert code == 2 and "preds.jsonl:2: order" in capsys.readouterr().err
    assert backend.prompts_seen == seen


def test_meta_eval_through_a_served_judge_per_strategy(tmp_path, shared_data, judges):
    labels = llmbar_labels(shared_data, 6)
    # LLMBar outputs never say GOOD, so the "good" rule always answers B: a purely positional judge.
    code = main(["meta-eval", "--pairs", str(Path(shared_data) / NATURAL), "--limit", "6", "--judge",
                 judges["good"][1], "--strategies", "plain,rules+swap", "--out", str(tmp_path / "me"), "--no-progress"])
    assert code == 0
    rows = {row["strategy"]: row for row in results(tmp_path / "me")["sections"]["strategy_comparison"]
            if row["dataset"] == "all"}
    for row in rows.values():
        assert row["accuracy_by_order"]["ab"] == pytest.approx(labels.count(2) / 6)
        assert row["accuracy_by_order"]["ba"] == pytest.approx(labels.count(1) / 6)
        assert row["positional_agreement"] == 0.0 and row["parse_failure_rate"] == 0.0
    predictions = (tmp_path / "me" / "predictions-rules+swap.jsonl").read_text().splitlines()
    assert len(predictions) == 12


def test_grade_single_per_category_and_rubric(tmp_path, shared_data, judges):
    questions = str(Path(shared_data) / "mt_bench" / "question.jsonl")
    rows = [json.loads(line) for line in Path(questions).read_text().splitlines()[:4]]
    # Turn 1 answers say GOOD only for the first two questions; turn 2 answers never do.
    answers = write_jsonl(tmp_path / "answers.jsonl",
                          [{"question_id": r["question_id"], "turns": ["GOOD one" if i < 2 else "meh", "second"]}
                           for i, r in enumerate(rows)])
    spec = judges["grader"][1]
    code = main(["eval", "grade", "--questions", questions, "--answers", answers, "--limit", "4", "--judge", spec,
                 "--turns", "1", "--out", str(tmp_path / "single"), "--no-progress"])
    assert code == 0
    grading = results(tmp_path / "single")["details"]["grading"]
    assert grading["overall"]["mean"] == pytest.approx((8 + 8 + 2 + 2) / 4) and grading["overall"]["n_failed"] == 0
    expected = {}
    for i, r in enumerate(rows):
        expected.setdefault(r["category"], []).append(8 if i < 2 else 2)
    assert {c: s["mean"] for c, s in grading["per_category"].items()} == \
           {c: pytest.approx(sum(v) / len(v)) for c, v in expected.items()}

    rubric = tmp_path / "rubric.txt"
    rubric.write_text("5: says GOOD. 1: does not.")
    code = main(["eval", "grade", "--questions", questions, "--answers", answers, "--limit", "4", "--rubric",
                 str(rubric), "--judge", spec, "--out", str(tmp_path / "rubric"), "--no-progress"])
    document = results(tmp_path / "rubric")
    assert code == 0 and document["meta"]["mode"] == "rubric" and document["meta"]["scale"] == "1-5"
    # The grader's 8 is off the 1-5 scale: a parse failure, never a score.
    assert document["details"]["grading"]["overall"]["n_failed"] == 2
    assert document["details"]["grading"]["overall"]["mean"] == 2


def test_rubric_items_each_with_its_own_rubric(tmp_path, judges):
    items = write_jsonl(tmp_path / "items.jsonl", [
        {"id": "a", "instruction": "Say it.", "response": "GOOD", "rubric": "5 if GOOD"},  # 8: off the 1-5 scale
        {"id": "b", "instruction": "Say it.", "response": "fine", "rubric": "5 if GOOD", "category": "x"},
        {"id": "c", "instruction": "Say it.", "response": "so-so", "category": "x"}])
    rubric = tmp_path / "rubric.txt"
    rubric.write_text("Shared rubric for items without their own.")
    code = main(["eval", "grade", "--items", items, "--rubric", str(rubric), "--judge", judges["grader"][1],
                 "--out", str(tmp_path / "g"), "--no-progress"])
    grading = results(tmp_path / "g")["details"]["grading"]
    assert code == 0 and grading["scale"] == [1, 5]
    assert grading["per_category"]["x"]["mean"] == 2 and grading["per_category"]["all"]["n_failed"] == 1
    assert [item["failed"] for item in grading["items"]] == [True, False, False]


def test_leaderboard_from_outputs_and_from_battles(tmp_path, judges):
    prompts = [f"q{i}" for i in range(8)]
    files = []
    for name, good in (("strong", range(8)), ("middle", range(4)), ("weak", ())):
        rows = [{"prompt": p, "response": ("GOOD " if i in good else "") + name, "model": name}
                for i, p in enumerate(prompts)]
        files.append(write_jsonl(tmp_path / f"{name}.jsonl", rows))
    out = tmp_path / "board"
    code = main(["leaderboard", "--outputs", *files, "--judge", judges["good"][1], "--bootstrap", "50",
                 "--out", str(out), "--no-progress"])
    assert code == 0
    board = results(out)["sections"]["leaderboard"]
    assert [r["model"] for r in board["ratings"]] == ["strong", "middle", "weak"]
    assert len((out / "battles.jsonl").read_text().splitlines()) == 3 * 8 * 2
    code = main(["leaderboard", "--battles", str(out / "battles.jsonl"), "--out", str(tmp_path / "again"),
                 "--bootstrap", "50"])
    again = results(tmp_path / "again")["sections"]["leaderboard"]
    assert code == 0 and [r["rating"] for r in again["ratings"]] == [r["rating"] for r in board["ratings"]]
    # A report draws one leaderboard: two are refused rather than one silently dropped.
    code = main(["report", "--results", str(out / "results.json"), str(tmp_path / "again" / "results.json"),
                 "--out", str(tmp_path / "report")])
    assert code == 2 and not (tmp_path / "report" / "report.html").exists()


def test_report_merges_real_results_files(tmp_path, judges, shared_data):
    pairwise(tmp_path, judges["good"][1], MODEL, REFERENCE)
    labels = llmbar_labels(shared_data, 2)
    preds = write_jsonl(tmp_path / "judge_x.jsonl", [{"id": f"natural-{i}", "verdict": l} for i, l in enumerate(labels)])
    main(["meta-eval", "--pairs", "natural=" + str(Path(shared_data) / NATURAL), "--limit", "2", "--predictions", preds,
          "--out", str(tmp_path / "me")])
    main(["leaderboard", "--battles", str(tmp_path / "run" / "battles.jsonl"), "--out", str(tmp_path / "lb"),
          "--bootstrap", "20"])
    code = main(["report", "--results", str(tmp_path / "run" / "results.json"), str(tmp_path / "me" / "results.json"),
                 str(tmp_path / "lb" / "results.json"), "--out", str(tmp_path / "report"), "--title", "All of it"])
    assert code == 0
    data = json.loads((tmp_path / "report" / "report.json").read_text())
    assert data["title"] == "All of it"
    assert data["win_rates"] == results(tmp_path / "run")["sections"]["win_rates"]
    assert data["strategy_comparison"][0]["accuracy_by_order"] == {"ab": 1.0}
    assert [r["model"] for r in data["leaderboard"]["ratings"]] == ["mine", "theirs"]
    page = (tmp_path / "report" / "report.html").read_text()
    assert "<svg" in page and "judge_x" in page and not list((tmp_path / "report").glob(".tmp-*"))


def test_report_refuses_files_that_are_not_results(tmp_path, capsys):
    bogus = tmp_path / "x.json"
    bogus.write_text('{"hello": 1}')
    assert main(["report", "--results", str(bogus), "--out", str(tmp_path / "r")]) == 2
    assert "not an alignkit results file" in capsys.readouterr().err


@pytest.mark.parametrize("spec, parsed", [
    ("embedded", BackendSpec("local", "embedded")),
    ("openai:gpt-4o-mini", BackendSpec("openai", "gpt-4o-mini")),
    ("openai:judge@http://user:pw@host:8000/v1", BackendSpec("openai", "judge", "http://user:pw@host:8000/v1")),
    ("vllm:/models/llama", BackendSpec("vllm", "/models/llama")),
])
def test_backend_specs(spec, parsed):
    assert parse_backend_spec(spec) == parsed


@pytest.mark.parametrize("spec, message", [("", "empty"), ("openai:@http://h", "no model name"),
                                           ("openai:m@localhost:8000", r"http\(s\) URL"), ("vllm:", "no model path")])
def test_bad_backend_specs(spec, message):
    with pytest.raises(ValueError, match=message):
        parse_backend_spec(spec)


def test_local_model_id_changes_when_the_weights_are_rewritten(tmp_path):
    from alignkit.models.lora import save_model
    from alignkit.models.tiny import tiny_model, tiny_tokenizer

    tok = tiny_tokenizer()
    save_model(tiny_model(tok), tok, str(tmp_path / "m"))
    first = local_model_id(str(tmp_path / "m"))
    assert first == local_model_id(str(tmp_path / "m")) and first.startswith(str(tmp_path / "m") + "#")
    save_model(tiny_model(tok), tok, str(tmp_path / "m"))  # same size, new modification time
    assert local_model_id(str(tmp_path / "m")) != first


def test_local_model_id_tells_dtypes_apart():
    assert local_model_id("embedded") == "embedded:SmolLM2-135M-Instruct"
    assert local_model_id("embedded", "bf16") == "embedded:SmolLM2-135M-Instruct@bf16"


def test_every_loader_of_a_local_model_names_it_by_the_one_rule(model_dir):
    from alignkit.cli.local_model import local_backend
    from alignkit.generation.specs import BackendOptions, build_backend

    expected = local_model_id(model_dir, "bf16")
    assert expected.startswith(model_dir + "#") and expected.endswith("@bf16")
    assert local_backend(model_dir, "bf16", 1).model_id == expected  # generate, chat, eval ifeval
    assert build_backend(model_dir, BackendOptions(dtype="bf16")).model_id == expected  # judges and serve
    assert local_model_id(None) == local_model_id("") == local_model_id("embedded")


def test_swap_reports_the_failed_order_once_in_both_orders():
    from alignkit.judges import JudgeConfig, judge_pairs

    class FailsWhenGoodIsShownFirst:
        model_id = "x"

        def chat(self, conversations, params):
            return [[Completion("hmm" if "GOOD" in shown_outputs(c[-1]["content"])["A"] else "Because.\nVerdict: B")]
                    for c in conversations]

    (judgment,) = judge_pairs(FailsWhenGoodIsShownFirst(), [("Pick one.", "GOOD", "other")], JudgeConfig(strategy="swap"))
    expected = "swap: order ab judgment failed: no 'Verdict:' line"
    assert [r.failure for r in judgment.orders.values()] == [expected, expected]
    assert judgment.verdicts() == {"ab": None, "ba": None}
