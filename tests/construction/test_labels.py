"""`alignkit data label`: AI preference labels from a judge in both orders, on scripted stand-in judges."""
from __future__ import annotations

import json
import os

import pytest

from alignkit.config import ConfigError, load_config
from alignkit.construction import filters, labels
from alignkit.construction.labels import LabelConfig, run_label
from alignkit.data.errors import RecordError
from alignkit.generation.backend import Completion
from tests.helpers.construction import RuleBackend, standin_server
from tests.helpers.judges import shown_outputs
from tests.helpers.files import output_bytes, read_jsonl, write_jsonl

OUTPUT_FILES = ("pairs.jsonl", "dropped.jsonl")
CONFIG = os.path.join(os.path.dirname(__file__), "..", "..", "configs", "data", "label.yaml")


def judge_rule(prompt: str, sample: int, seed) -> str:
    """Prefers the output with GOOD in it; a reply about a GARBLE output has no verdict; a BIAS output makes
    it answer "A" whatever the order; with neither output GOOD it always answers "B" (position bias too)."""
    shown = shown_outputs(prompt)
    both = shown["A"] + shown["B"]
    if "GARBLE" in both:
        return "Both have merit; I cannot choose."
    if "BIAS" in both:
        return "The first one.\nVerdict: A"
    return "Reasons.\nVerdict: A" if "GOOD" in shown["A"] else "Reasons.\nVerdict: B"


def user(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


# What `alignkit generate --n K` writes: messages + responses (ranked: false), and the first sample as response.
RESPONSES = [
    ("p1", ["GOOD one", "plain one"]),                    # 1 pair: kept
    ("p2", ["plain", "GOOD x", "also plain"]),            # 3 pairs: kept (b), orders disagree, kept (a)
    ("p3", ["GOOD a", "BIAS b"]),                         # orders disagree
    ("p4", ["GOOD  same", "GOOD same\n"]),                # identical up to whitespace: never judged
    ("p5", ["GOOD", "GARBLE"]),                           # unparseable verdict
    ("p6", ["only one", "   "]),                          # an empty response, then fewer than 2 responses
]


def responses_file(tmp_path) -> str:
    return write_jsonl(tmp_path / "samples.jsonl", [
        {"messages": user(prompt), "prompt": prompt, "response": texts[0], "responses": texts, "ranked": False,
         "model": "policy"} for prompt, texts in RESPONSES])


def config(tmp_path, name="out", **keys) -> LabelConfig:
    keys.setdefault("principles", None)
    return LabelConfig(output_dir=str(tmp_path / name), progress=False, **keys)


# ---- the rules ----

def test_pair_outcome_keeps_only_agreement_and_names_every_other_case():
    ok = {"ab": None, "ba": None}
    assert labels.pair_outcome({"ab": "a", "ba": "a"}, ok) == ("kept", "a")
    assert labels.pair_outcome({"ab": "b", "ba": "b"}, ok) == ("kept", "b")
    assert labels.pair_outcome({"ab": "a", "ba": "b"}, ok) == ("orders disagree", None)
    assert labels.pair_outcome({"ab": "tie", "ba": "a"}, ok) == ("orders disagree", None)
    assert labels.pair_outcome({"ab": "tie", "ba": "tie"}, ok) == ("tie in both orders", None)
    assert labels.pair_outcome({"ab": "a", "ba": None}, {"ab": None, "ba": "no verdict line"}) == \
        ("unparseable verdict", None)
    assert labels.pair_outcome({"ab": None, "ba": None}, {"ab": "backend error: 500", "ba": "backend error: x"}) == \
        ("judge error", None)
    assert labels.pair_outcome({"ab": None, "ba": None}, {"ab": "backend error: 500", "ba": "no verdict"}) == \
        ("unparseable verdict", None)


def test_pairings_identity_and_unusable_responses():
    assert labels.pair_indices(3, "all") == [(0, 1), (0, 2), (1, 2)]
    assert labels.pair_indices(3, "first_vs_rest") == [(0, 1), (0, 2)]
    assert labels.pair_indices(1, "all") == []
    assert filters.same_text("a  b\n", " a b") and not filters.same_text("a b", "ab")
    assert labels.response_problem(" \n") == "empty"
    assert labels.response_problem("text", "error") == "generation error"
    assert labels.response_problem("text", "length") is None


def test_match_by_prompt_keeps_file_order_and_names_missing_files():
    unit = labels.Unit
    first = {"k1": unit(user("1"), "a:1", [{"text": "a1", "origin": "A"}]),
             "k2": unit(user("2"), "a:2", [{"text": "a2", "origin": "A"}])}
    second = {"k3": unit(user("3"), "b:1", [{"text": "b3", "origin": "B"}]),
              "k1": unit(user("1"), "b:2", [{"text": "b1", "origin": "B"}])}
    matched = labels.match_by_prompt([("a", first), ("b", second)])
    assert [m.prompt for m in matched] == [user("1"), user("2"), user("3")]
    assert [r["text"] for r in matched[0].responses] == ["a1", "b1"] and matched[0].source == "a:1"
    assert matched[1].missing == ["b"] and matched[2].missing == ["a"] and matched[0].missing == []


# ---- the job ----

def test_responses_list_exact_counts_and_chosen_sides(tmp_path):
    judge = RuleBackend(judge_rule, model_id="rule-judge")
    result = run_label(config(tmp_path, responses=[responses_file(tmp_path)]), judge_backend=judge)
    steps = result.counts.to_dict()
    assert steps["prompts"] == {"seen": 6, "kept": 5, "dropped": {"repeated prompt": 0, "missing from a file": 0,
                                                                   "fewer than 2 responses": 1}}
    assert steps["responses"] == {"seen": 13, "kept": 12, "dropped": {"empty": 1, "generation error": 0}}
    assert steps["pairs"] == {"seen": 7, "kept": 3, "dropped": {
        "identical responses": 1, "unparseable verdict": 1, "judge error": 0, "orders disagree": 2,
        "tie in both orders": 0}}
    assert len(judge.prompts) == 2 * 6  # both orders of every pair but the identical one

    rows = read_jsonl(tmp_path / "out" / "pairs.jsonl")
    assert [(r["prompt"], r["chosen"][0]["content"], r["rejected"][0]["content"]) for r in rows] == [
        (user("p1"), "GOOD one", "plain one"), (user("p2"), "GOOD x", "plain"), (user("p2"), "GOOD x", "also plain")]
    for row in rows:
        assert row["judge"] == "rule-judge" and row["origins"]["chosen"].startswith("policy[")
        # Row-relative orders: "ab" showed the chosen response as A, so its reply must read A.
        assert row["rationale"]["ab"].endswith("Verdict: A") and row["rationale"]["ba"].endswith("Verdict: B")
    assert len({row["id"] for row in rows}) == 3

    dropped = read_jsonl(tmp_path / "out" / "dropped.jsonl")
    reasons = [(d["stage"], d["reason"]) for d in dropped]
    assert sorted(reasons) == sorted([("pair", "orders disagree"), ("pair", "orders disagree"),
                                      ("pair", "identical responses"), ("pair", "unparseable verdict"),
                                      ("response", "empty"), ("prompt", "fewer than 2 responses")])
    garbled = next(d for d in dropped if d["reason"] == "unparseable verdict")
    assert garbled["verdicts"] == {"ab": None, "ba": None} and all(garbled["failures"].values())
    assert garbled["rationale"]["ab"] == "Both have merit; I cannot choose."
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    # Both orders gave a verdict on 5 pairs (p1, p2 x3, p3); 3 of them agree.
    assert summary["agreement_between_orders"] == {"agreed": 3, "disagreed": 2, "rate": 0.6}
    assert summary["written"] == {"pairs.jsonl": 3, "dropped.jsonl": 6} == result.written


def test_first_vs_rest_and_ties(tmp_path):
    path = write_jsonl(tmp_path / "s.jsonl", [{"messages": user("q"), "responses": ["EVEN 1", "GOOD", "EVEN 2"]}])

    def rule(prompt, sample, seed):
        shown = shown_outputs(prompt)
        if "EVEN" in shown["A"] and "EVEN" in shown["B"]:
            return "Verdict: tie"
        return judge_rule(prompt, sample, seed)

    judge = RuleBackend(rule)
    result = run_label(config(tmp_path, responses=[path], pairs="first_vs_rest", allow_tie=True), judge_backend=judge)
    assert result.counts.to_dict()["pairs"]["kept"] == 1
    assert result.counts.to_dict()["pairs"]["dropped"]["tie in both orders"] == 1
    assert "Verdict: tie" in judge.prompts[0]  # the prompt offers the tie


def test_several_model_files_matched_by_prompt(tmp_path):
    a = write_jsonl(tmp_path / "a.jsonl", [
        {"messages": user("q1"), "response": "GOOD from a", "model": "model-a"},
        {"messages": user("q2"), "response": "plain from a", "model": "model-a"},
        {"messages": user("q3"), "response": "GOOD only a", "model": "model-a"},
        {"messages": user("q4"), "response": "", "finish_reason": "error", "model": "model-a"}])
    b = write_jsonl(tmp_path / "b.jsonl", [
        {"messages": user("q2"), "response": "GOOD from b", "model": "model-b"},
        {"messages": user("q1"), "response": "plain from b", "model": "model-b"},
        {"messages": user("q4"), "response": "GOOD b", "model": "model-b"},
        {"messages": user("q5"), "response": "GOOD only b", "model": "model-b"}])
    result = run_label(config(tmp_path, responses=[a, b]), judge_backend=RuleBackend(judge_rule))
    rows = read_jsonl(tmp_path / "out" / "pairs.jsonl")
    assert [(r["prompt"], r["origins"]) for r in rows] == [
        (user("q1"), {"chosen": "model-a", "rejected": "model-b"}),
        (user("q2"), {"chosen": "model-b", "rejected": "model-a"})]
    steps = result.counts.to_dict()
    assert steps["prompts"]["dropped"] == {"repeated prompt": 0, "missing from a file": 2, "fewer than 2 responses": 1}
    assert steps["responses"]["dropped"] == {"empty": 0, "generation error": 1}
    missing = [d for d in read_jsonl(tmp_path / "out" / "dropped.jsonl") if d["reason"] == "missing from a file"]
    assert [(d["prompt"], d["missing"]) for d in missing] == [(user("q3"), [b]), (user("q5"), [a])]


def test_a_prompt_twice_in_one_file_is_an_error_naming_file_and_line(tmp_path):
    a = write_jsonl(tmp_path / "a.jsonl", [{"messages": user("q1"), "response": "x"},
                                           {"messages": user("q2"), "response": "y"},
                                           {"messages": user("q1"), "response": "z"}])
    b = write_jsonl(tmp_path / "b.jsonl", [{"messages": user("q1"), "response": "w"}])
    with pytest.raises(RecordError, match=rf"^{a}:3: messages: the same prompt as {a}:1"):
        run_label(config(tmp_path, responses=[a, b]), judge_backend=RuleBackend(judge_rule))


@pytest.mark.parametrize("record, message", [
    ({"messages": user("q"), "response": "only one"}, r"s\.jsonl:1: responses: missing; one file needs several"),
    ({"messages": user("q"), "responses": ["ok", 3]}, r"s\.jsonl:1: responses\[1\]: expected a string, got a number"),
])
def test_bad_response_records_name_file_line_and_field(tmp_path, record, message):
    path = write_jsonl(tmp_path / "s.jsonl", [record])
    with pytest.raises(RecordError, match=message):
        run_label(config(tmp_path, responses=[path]), judge_backend=RuleBackend(judge_rule))


def test_principles_appear_in_the_judge_prompt(tmp_path):
    path = write_jsonl(tmp_path / "s.jsonl", [{"messages": user("q"), "responses": ["GOOD", "plain"]}])
    own = tmp_path / "mine.yaml"
    own.write_text("principles:\n  - Prefer the answer a careful teacher would give.\n  - Prefer brevity.\n")
    cases = {str(own): ["1. Prefer the answer a careful teacher would give.", "2. Prefer brevity."],
             "": ["1. Prefer the response that does what the user asked"],  # alignkit's own file
             None: []}
    for index, (principles, expected) in enumerate(cases.items()):
        judge = RuleBackend(judge_rule)
        run_label(config(tmp_path, f"run{index}", responses=[path], principles=principles), judge_backend=judge)
        assert len(judge.prompts) == 2
        for prompt in judge.prompts:
            assert all(line in prompt for line in expected)
            assert ("these principles" in prompt) == bool(expected)


def test_judge_backend_errors_are_counted_apart_from_unparseable_replies(tmp_path):
    class Failing(RuleBackend):
        def chat(self, conversations, params):
            out = super().chat(conversations, params)
            return [[Completion("", finish_reason="error", error="503") if "DOWN" in c[-1]["content"] else r[0]]
                    for c, r in zip(conversations, out)]

    path = write_jsonl(tmp_path / "s.jsonl", [{"messages": user("q"), "responses": ["GOOD", "DOWN", "GARBLE"]}])
    result = run_label(config(tmp_path, responses=[path]), judge_backend=Failing(judge_rule))
    dropped = result.counts.to_dict()["pairs"]["dropped"]
    # GOOD/DOWN: both orders fail at the backend; DOWN/GARBLE too; GOOD/GARBLE: no verdict in the reply.
    assert (dropped["judge error"], dropped["unparseable verdict"]) == (2, 1)
    failures = [d["failures"] for d in read_jsonl(tmp_path / "out" / "dropped.jsonl")]
    assert failures[0] == {"ab": "backend error: 503", "ba": "backend error: 503"}


def test_a_rerun_resumes_only_under_the_same_principles(tmp_path):
    path = write_jsonl(tmp_path / "s.jsonl", [{"messages": user("q"), "responses": ["GOOD", "plain"]}])
    own = tmp_path / "mine.yaml"
    own.write_text("principles:\n  - Prefer the kind one.\n")
    run_label(config(tmp_path, responses=[path], principles=str(own)), judge_backend=RuleBackend(judge_rule))
    # Sampling keys decide nothing when responses come from files: changing them still resumes.
    changed = config(tmp_path, responses=[path], principles=str(own))
    changed.generator.temperature = 0.1
    judge = RuleBackend(judge_rule)
    run_label(changed, judge_backend=judge)
    assert judge.prompts == []
    own.write_text("principles:\n  - Prefer the blunt one.\n")
    with pytest.raises(ConfigError, match="principle_texts"):
        run_label(config(tmp_path, responses=[path], principles=str(own)), judge_backend=RuleBackend(judge_rule))


@pytest.mark.parametrize("text, message", [
    ("rules:\n  - x\n", r"expected the one key `principles`"),
    ("principles: []\n", r"principles: must be a non-empty list"),
    ("principles:\n  - fine\n  - ''\n", r"principles\[1\]: must be a non-empty string"),
])
def test_bad_principles_files_are_one_line_errors(tmp_path, text, message):
    path = tmp_path / "p.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=rf"^{path}: {message}"):
        labels.load_principles(str(path))


@pytest.mark.parametrize("overrides, message", [
    ([], r"^responses: must be a list of files, or empty with `prompts` set"),
    (["responses=[a.jsonl]", "prompts=p.jsonl"], r"^responses: must be .* not both"),
    (["prompts=p.jsonl", "n=1"], r"^n: must be a whole number >= 2"),
    (["prompts=p.jsonl", "strategy=rules+vibes"], r"^strategy: must be a judge strategy"),
    (["prompts=p.jsonl", "pairs=some"], r"^pairs: must be one of all, first_vs_rest"),
    (["prompts=p.jsonl", "judge.temperature=-1"], r"^judge.temperature: must be a number >= 0"),
])
def test_bad_config_is_a_one_line_error_naming_the_key(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(LabelConfig, None, ["output_dir=x", *overrides])


def sampling_rule(prompt: str, sample: int, seed) -> str:
    # The seed shows in the text, so a test can see the generator's seed reached the backend.
    return f"GOOD answer to {prompt} (seed {seed})" if sample == 0 else f"plain {sample} to {prompt} (seed {seed})"


def sampled_config(tmp_path, name="out", **keys) -> LabelConfig:
    prompts = write_jsonl(tmp_path / "prompts.jsonl", [{"messages": user(f"q{i}")} for i in range(5)]
                          + [{"messages": user("q1")}])  # a repeat: dropped and counted
    cfg = config(tmp_path, name, prompts=prompts, n=3, batch_size=2, **keys)
    cfg.generator.seed = 7
    return cfg


def test_sampled_responses_through_a_generator(tmp_path):
    generator, judge = RuleBackend(sampling_rule), RuleBackend(judge_rule)
    result = run_label(sampled_config(tmp_path), backend=generator, judge_backend=judge)
    assert generator.prompts == [f"q{i}" for i in range(5)]  # each distinct prompt sampled once (n=3 per call)
    steps = result.counts.to_dict()
    assert steps["prompts"] == {"seen": 6, "kept": 5, "dropped": {"repeated prompt": 1, "missing from a file": 0,
                                                                   "fewer than 2 responses": 0}}
    # Per prompt: GOOD vs plain 1 and GOOD vs plain 2 are kept; plain vs plain is position bias.
    assert steps["pairs"]["kept"] == 10 and steps["pairs"]["dropped"]["orders disagree"] == 5
    rows = read_jsonl(tmp_path / "out" / "pairs.jsonl")
    assert all(row["chosen"][0]["content"].startswith("GOOD answer") and "(seed 7)" in row["chosen"][0]["content"]
               for row in rows)
    assert rows[0]["origins"] == {"chosen": "rule[0]", "rejected": "rule[1]"}


def test_failed_samples_are_counted_never_judged(tmp_path):
    class Flaky(RuleBackend):
        def chat(self, conversations, params):
            out = super().chat(conversations, params)
            return [[Completion("", finish_reason="error", error="boom") if k == 2 else c for k, c in enumerate(cs)]
                    for cs in out]

    judge = RuleBackend(judge_rule)
    result = run_label(sampled_config(tmp_path), backend=Flaky(sampling_rule), judge_backend=judge)
    steps = result.counts.to_dict()
    assert steps["responses"] == {"seen": 15, "kept": 10, "dropped": {"empty": 0, "generation error": 5}}
    assert steps["pairs"] == {"seen": 5, "kept": 5, "dropped": {k: 0 for k in labels.PAIR_REASONS}}
    assert len(judge.prompts) == 10


def test_determinism_two_runs_write_the_same_bytes(tmp_path):
    for name in ("one", "two"):
        run_label(sampled_config(tmp_path, name), backend=RuleBackend(sampling_rule),
                  judge_backend=RuleBackend(judge_rule))
    assert output_bytes(tmp_path / "one", OUTPUT_FILES) == output_bytes(tmp_path / "two", OUTPUT_FILES)


class CrashingJudge(RuleBackend):
    """Raises on its chat call number `crash_at` (1-based), like a process killed mid-job."""

    def __init__(self, rule, crash_at: int):
        super().__init__(rule)
        self.calls, self.crash_at = 0, crash_at

    def chat(self, conversations, params):
        self.calls += 1
        if self.calls == self.crash_at:
            raise KeyboardInterrupt("killed")
        return super().chat(conversations, params)


def test_a_crashed_job_rerun_writes_what_an_uninterrupted_one_does(tmp_path):
    run_label(sampled_config(tmp_path, "straight"), backend=RuleBackend(sampling_rule),
              judge_backend=RuleBackend(judge_rule))
    # batch_size 2: chunks of 2, 2 and 1 prompts, one judge call each; the third never returns.
    with pytest.raises(KeyboardInterrupt):
        run_label(sampled_config(tmp_path, "crashed"), backend=RuleBackend(sampling_rule),
                  judge_backend=CrashingJudge(judge_rule, crash_at=3))
    journal = read_jsonl(tmp_path / "crashed" / "journal.jsonl")
    assert len(journal) == 1 + 4  # header, then the two finished chunks
    assert not (tmp_path / "crashed" / "pairs.jsonl").exists()
    generator, judge = RuleBackend(sampling_rule), RuleBackend(judge_rule)
    run_label(sampled_config(tmp_path, "crashed"), backend=generator, judge_backend=judge)
    assert generator.prompts == []  # journaled prompts are skipped; the last one's samples come from the cache
    assert len(judge.prompts) == 2 * 3  # the last prompt's three pairs, both orders
    assert output_bytes(tmp_path / "crashed", OUTPUT_FILES) == output_bytes(tmp_path / "straight", OUTPUT_FILES)


def test_cli_end_to_end_with_a_standin_judge_server(tmp_path, monkeypatch, capsys):
    from alignkit.cli import main
    from alignkit.data.preference import load_pairs

    monkeypatch.setenv("OPENAI_API_KEY", "x")
    samples = responses_file(tmp_path)
    with standin_server(judge_rule) as (url, log):
        code = main(["data", "label", "--config", CONFIG, f"output_dir={tmp_path / 'cli'}",
                     "prompts=", f"responses=[{samples}]", f"judge.model=openai:standin@{url}", "progress=false",
                     "principles=null"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "wrote 3 rows to pairs.jsonl" in printed and "orders disagree 2" in printed
    assert len(log.prompts) == 12
    pairs, report = load_pairs(str(tmp_path / "cli" / "pairs.jsonl"))
    assert report.skipped == 0
    assert [(p.prompt, p.chosen[0]["content"], p.rejected[0]["content"]) for p in pairs] == [
        (user("p1"), "GOOD one", "plain one"), (user("p2"), "GOOD x", "plain"), (user("p2"), "GOOD x", "also plain")]
    assert read_jsonl(tmp_path / "cli" / "pairs.jsonl")[0]["judge"] == "standin"


def test_verdicts_read_from_log_probabilities_in_both_orders(tmp_path):
    """A judge whose text never holds a verdict line, but whose probabilities at the first token prefer the
    GOOD output, or always "A" (position bias: the orders disagree and the pair is dropped)."""
    class Probabilities(RuleBackend):
        def chat(self, conversations, params):
            assert params.logprobs == 5
            out = []
            for conversation in conversations:
                shown = shown_outputs(conversation[-1]["content"])
                favoured = "A" if "BIAS" in shown["A"] + shown["B"] or "GOOD" in shown["A"] else "B"
                other = "B" if favoured == "A" else "A"
                out.append([Completion(favoured, top_logprobs=[{favoured: -0.2, other: -1.8, "The": -3.0}])])
            return out

    path = write_jsonl(tmp_path / "s.jsonl", [{"messages": user("q1"), "responses": ["plain", "GOOD one"]},
                                              {"messages": user("q2"), "responses": ["BIAS x", "BIAS y"]}])
    result = run_label(config(tmp_path, responses=[path], use_logprobs=True), judge_backend=Probabilities(None))
    assert result.counts.to_dict()["pairs"]["kept"] == 1
    assert result.counts.to_dict()["pairs"]["dropped"]["orders disagree"] == 1
    (row,) = read_jsonl(tmp_path / "out" / "pairs.jsonl")
    assert row["chosen"][0]["content"] == "GOOD one" and row["rejected"][0]["content"] == "plain"
    with pytest.raises(ConfigError, match="use_logprobs: must be false with a strategy that reasons"):
        load_config(LabelConfig, None, ["output_dir=o", "responses=[x]", "use_logprobs=true", "strategy=rules+cot"])
