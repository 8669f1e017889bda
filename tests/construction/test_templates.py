"""`alignkit data templates`: rendering, few-shot exemplars, chain of thought, caps, held-out tasks, bad
records and template errors, on small task files written by each test and on the shipped ones."""
import json
import os
import re

import pytest
import yaml

from alignkit.config import ConfigError, load_config
from alignkit.construction.task_templates import load_task_file
from alignkit.construction.templates import SHIPPED, TemplatesConfig, run_templates
from alignkit.data.errors import RecordError
from tests.helpers.files import read_jsonl, write_jsonl

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))


def color_task(tmp_path, name="color", *, train=12, test=4, templates=None, rows=None, **extra):
    """A labelled task whose record ids (`train-3`, `test-1`) show in every prompt; train records with an
    odd number carry a rationale."""
    if rows is None:
        rows = [{"split": "train", "id": f"train-{i}", "label": i % 2, **({"why": f"why-{i}"} if i % 2 else {})}
                for i in range(train)]
        rows += [{"split": "test", "id": f"test-{i}", "label": i % 2} for i in range(test)]
    data = write_jsonl(tmp_path / f"{name}.jsonl", rows)
    spec = {"task": name, "type": "classification",
            "data": {"path": data, "split_column": "split", "train": "train", "test": "test"},
            "columns": {"item": "id"}, "answer": {"column": "label", "labels": {0: "red", 1: "blue"}},
            "rationale": "why",
            "templates": templates or [
                {"name": "plain", "prompt": "Item {{ item }}. Options: {{ options | join('/') }}",
                 "target": "{{ answer }}", "cot_prompt": "Item {{ item }}, reason first.",
                 "cot_target": "{{ rationale }} So: {{ answer }}"},
                {"name": "terse", "prompt": "{{ item }}? red or blue", "target": "{{ answer }}"}]}
    spec.update(extra)
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec), encoding="utf-8")
    return str(path)


def config(tmp_path, tasks, **keys):
    keys = {"few_shot_fraction": 0.0, "cot_fraction": 0.0, **keys}
    return TemplatesConfig(output_dir=str(tmp_path / "out"), tasks=tasks, **keys)


def ids(text):
    return re.findall(r"(?:train|test)-\d+", text)


def test_options_render_into_the_prompt_and_the_target_is_the_option_text(tmp_path):
    run_templates(config(tmp_path, [color_task(tmp_path)], templates_per_record=2))
    rows = read_jsonl(tmp_path / "out" / "train.jsonl")
    assert len(rows) == 24 and {r["template"] for r in rows} == {"plain", "terse"}
    for row in rows:
        number = int(ids(row["messages"][-2]["content"])[0].split("-")[1])
        assert row["messages"][-1] == {"role": "assistant", "content": ["red", "blue"][number % 2]}
        if row["template"] == "plain":
            assert row["messages"][-2]["content"].endswith("Options: red/blue")


def test_few_shot_exemplars_come_from_train_never_the_example_itself(tmp_path):
    rows = [{"split": "train", "id": f"train-{i}", "label": i % 2} for i in range(8)]
    rows.append({"split": "train", "id": "train-0", "label": 0})  # the same inputs as train-0: never its exemplar
    rows += [{"split": "test", "id": f"test-{i}", "label": 0} for i in range(4)]
    # 7 shots from 8 records (7 for train-0 and its twin): one offered itself or its twin would surely draw it.
    cfg = config(tmp_path, [color_task(tmp_path, rows=rows), color_task(tmp_path, "other")], shots=7,
                 few_shot_fraction=1.0, eval_shots=2, heldout_tasks=["other"])
    run_templates(cfg)
    out = tmp_path / "out"
    for row in read_jsonl(out / "train.jsonl"):
        if row["task"] != "color":
            continue
        messages = row["messages"]
        own = ids(messages[-2]["content"])[0]
        assert row["shots"] == 7 and len(messages) == 16
        assert [m["role"] for m in messages] == ["user", "assistant"] * 8
        shown = [ids(m["content"])[0] for m in messages[:-2:2]]
        assert own not in shown and all(s.startswith("train-") for s in shown)
        # the exemplar's answer is its own label, rendered with the example's template
        for user, assistant in zip(messages[:-2:2], messages[1:-2:2]):
            assert assistant["content"] == ["red", "blue"][int(ids(user["content"])[0].split("-")[1]) % 2]
    for name in ("valid.jsonl", "heldout.jsonl"):
        for row in read_jsonl(out / name):
            assert row["messages"][-1]["role"] == "user" and row["shots"] == 2
            shown = [ids(m["content"])[0] for m in row["messages"][:-1:2]]
            assert len(shown) == 2 and all(s.startswith("train-") for s in shown)


def test_few_shot_fraction_mixes_zero_and_few_shot(tmp_path):
    task = color_task(tmp_path, train=60)
    run_templates(config(tmp_path, [task], few_shot_fraction=0.5, shots=2))
    shots = [r["shots"] for r in read_jsonl(tmp_path / "out" / "train.jsonl")]
    assert set(shots) == {0, 2} and 15 <= shots.count(2) <= 45


def test_chain_of_thought_only_for_records_with_a_rationale(tmp_path):
    cfg = config(tmp_path, [color_task(tmp_path)], templates_per_record=2, cot_fraction=1.0,
                 few_shot_fraction=1.0, shots=2)
    result = run_templates(cfg)
    rows = read_jsonl(tmp_path / "out" / "train.jsonl")
    for row in rows:
        number = int(ids(row["messages"][-2]["content"])[0].split("-")[1])
        expected = row["template"] == "plain" and number % 2 == 1
        assert row["cot"] is expected
        if expected:
            assert row["messages"][-1]["content"] == f"why-{number} So: blue"
            assert row["messages"][-2]["content"].endswith("reason first.")
            # its exemplars are worked the same way, so each has a rationale
            assert all(m["content"].startswith("why-") for m in row["messages"][1:-2:2])
    assert json.loads((tmp_path / "out" / "summary.json").read_text())["tasks"]["color"]["cot"] == 6
    assert result.written["train.jsonl"] == 24
    run_templates(config(tmp_path, [color_task(tmp_path)], cot_fraction=0.0))
    assert not any(r["cot"] for r in read_jsonl(tmp_path / "out" / "train.jsonl"))


def test_cap_per_task_and_seeded_order(tmp_path):
    big, small = color_task(tmp_path, "big", train=40), color_task(tmp_path, "small", train=6)
    result = run_templates(config(tmp_path, [big, small], max_per_task=10, seed=3))
    rows = read_jsonl(tmp_path / "out" / "train.jsonl")
    assert sum(r["task"] == "big" for r in rows) == 10 and sum(r["task"] == "small" for r in rows) == 6
    steps = result.counts.to_dict()
    assert steps["big train"] == {"seen": 40, "kept": 10, "dropped": {"over cap": 30}}
    assert steps["small train"] == {"seen": 6, "kept": 6, "dropped": {"over cap": 0}}
    first = (tmp_path / "out" / "train.jsonl").read_bytes()
    run_templates(config(tmp_path, [big, small], max_per_task=10, seed=3))
    assert (tmp_path / "out" / "train.jsonl").read_bytes() == first  # same seed, same bytes
    # all templates, no cap: another seed gives the same examples in another order
    everything = {"templates_per_record": 2}
    run_templates(config(tmp_path, [big, small], seed=1, **everything))
    one = (tmp_path / "out" / "train.jsonl").read_text().splitlines()
    run_templates(config(tmp_path, [big, small], seed=2, **everything))
    two = (tmp_path / "out" / "train.jsonl").read_text().splitlines()
    assert one != two and sorted(one) == sorted(two)


def test_heldout_tasks_are_never_trained_and_every_test_example_is_scored(tmp_path, monkeypatch):
    from alignkit.data.prompts import read_prompt_records
    from alignkit.rewards.interface import Sample
    from alignkit.rewards.verifiable import ExactMatchReward

    monkeypatch.chdir(REPO)
    cfg = config(tmp_path, list(SHIPPED), heldout_tasks=["sentiment", "paraphrase"], templates_per_record=3,
                 eval_shots=1)
    run_templates(cfg)
    out = tmp_path / "out"
    train = read_jsonl(out / "train.jsonl")
    assert {r["task"] for r in train} == {"nli", "extractive_qa", "summarization"}
    gold = {}
    for task, names in (("sentiment", {"neg": "negative", "pos": "positive"}), ("paraphrase", {0: "no", 1: "yes"})):
        for line, row in enumerate(read_jsonl(os.path.join(REPO, f"configs/data/tasks/{task}.jsonl")), start=1):
            if row["split"] == "test":
                gold[f"configs/data/tasks/{task}.jsonl:{line}"] = names[row["label"]]
    heldout = read_prompt_records(str(out / "heldout.jsonl"))
    assert len(heldout) == 3 * len(gold) == 72
    assert {p.metadata["origin"] for p in heldout} == set(gold)
    for prompt in heldout:
        assert prompt.metadata["answer"] == gold[prompt.metadata["origin"]]
        assert prompt.metadata["answer"] in prompt.metadata["options"]
        assert prompt.messages[-1]["role"] == "user" and len(prompt.messages) == 3  # one exemplar first
    reward = ExactMatchReward()
    right = reward.score([Sample(p.messages, f" {p.metadata['answer'].upper()}\n", p.record_fields()) for p in heldout])
    assert right.scores == [1.0] * 72
    valid = read_jsonl(out / "valid.jsonl")
    assert {r["task"] for r in valid} == {"nli", "extractive_qa", "summarization"}


def test_bad_records_stop_the_job_or_are_counted(tmp_path):
    rows = [{"split": "train", "id": "train-0", "label": 0}, {"split": "train", "label": 1},
            {"split": "train", "id": "train-2", "label": 7}, {"split": "test", "id": "test-0", "label": 1},
            {"id": "loose", "label": 0}, {"split": "validation", "id": "elsewhere", "label": 0}]
    task = color_task(tmp_path, rows=rows)
    with pytest.raises(RecordError, match=r"color\.jsonl:2: id: missing"):
        run_templates(config(tmp_path, [task]))
    assert not (tmp_path / "out").exists()
    result = run_templates(config(tmp_path, [task], skip_bad=True))
    dropped = read_jsonl(tmp_path / "out" / "dropped.jsonl")
    assert [(d["split"], d["where"].rsplit(":", 1)[1], d["field"]) for d in dropped] == [
        ("train", "2", "id"), ("train", "3", "label"), ("input", "5", "split")]
    steps = result.counts.to_dict()
    assert steps["color train"]["kept"] == 1 and steps["color train"]["dropped"] == {
        "id: missing": 1, "label: 7 is not one of the labels 0, 1": 1}
    assert steps["color input"]["seen"] == 1 and steps["color test"]["kept"] == 1
    assert len(read_jsonl(tmp_path / "out" / "train.jsonl")) == 1  # the validation record is not this job's


def test_extractive_answer_must_be_a_span_of_the_passage(tmp_path):
    rows = [{"split": s, "c": "The cat sat on the mat.", "q": "Where?", "a": a}
            for s, a in (("train", "on the mat"), ("train", "under the table"), ("test", "the mat"))]
    spec = {"task": "qa", "type": "extractive_qa", "columns": {"passage": "c", "question": "q"},
            "data": {"path": write_jsonl(tmp_path / "qa.jsonl", rows), "split_column": "split"},
            "answer": {"column": "a", "span_of": "passage"},
            "templates": [{"name": "t", "prompt": "{{ passage }} {{ question }}", "target": "{{ answer }}"}]}
    (tmp_path / "qa.yaml").write_text(yaml.safe_dump(spec))
    with pytest.raises(RecordError, match=r"qa\.jsonl:2: a: not a span of c"):
        run_templates(config(tmp_path, [str(tmp_path / "qa.yaml")]))


@pytest.mark.parametrize("template, message", [
    ({"prompt": "Item {{ itme }}", "target": "{{ answer }}"}, r"template 'bad' prompt: names 'itme'"),
    ({"prompt": "{{ item }} is {{ answer }}", "target": "{{ answer }}"},
     r"template 'bad' prompt: names 'answer': a prompt may not see the answer"),
    ({"prompt": "{{ item }}", "target": "{{ answer }} {{ rationale }}"}, r"template 'bad' target: names 'rationale'"),
    ({"prompt": "{{ item.shade }}", "target": "{{ answer }}"}, r"template 'bad' prompt: .*has no attribute 'shade'"),
    ({"prompt": "{{ item", "target": "{{ answer }}"}, r"template 'bad' prompt: jinja2 syntax error at line 1"),
    ({"prompt": "{{ item }}"}, r"templates\[0\]\.target: missing"),
])
def test_template_errors_name_file_template_and_variable_before_writing(tmp_path, template, message):
    task = color_task(tmp_path, templates=[{"name": "bad", **template}])
    with pytest.raises(ConfigError, match=re.escape(task) + ": " + message):
        run_templates(config(tmp_path, [task]))
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("change, message", [
    ({"colour": 1}, r"colour: unknown key"),
    ({"type": "classification", "answer": {"column": "label"}}, r"answer\.labels: a classification task must name"),
    ({"columns": {"answer": "id"}}, r"columns\.answer: must be a variable name other than"),
    ({"data": {"path": "x.jsonl"}}, r"data\.split_column: a local file needs"),
    ({"rationale": None, "templates": [{"name": "t", "prompt": "{{ item }}", "target": "{{ answer }}",
                                        "cot_target": "{{ answer }}"}]},
     r"templates\[0\]\.cot_target: the file names no rationale"),
])
def test_template_file_errors_name_file_and_key(tmp_path, change, message):
    (tmp_path / "x.jsonl").write_text('{"split": "train"}\n')
    if "data" in change:
        change["data"]["path"] = str(tmp_path / "x.jsonl")
    task = color_task(tmp_path, **change)
    with pytest.raises(ConfigError, match=re.escape(task) + ": " + message):
        load_task_file(task)


def test_config_errors_name_the_key(tmp_path):
    task = color_task(tmp_path)
    with pytest.raises(ConfigError, match=r"^few_shot_fraction: must be a number in \[0, 1\], got 1.5$"):
        load_config(TemplatesConfig, None, ["output_dir=x", "few_shot_fraction=1.5"])
    with pytest.raises(ConfigError, match=r"heldout_tasks: 'colr' is not one of the tasks \(color\)"):
        run_templates(config(tmp_path, [task], heldout_tasks=["colr"]))
    with pytest.raises(ConfigError, match=r"heldout_tasks: holds every task"):
        run_templates(config(tmp_path, [task], heldout_tasks=["color"]))


def test_input_from_a_datasets_folder_with_class_labels_and_nested_columns(tmp_path):
    import datasets

    def split(n, offset):
        return datasets.Dataset.from_dict(
            {"q": [f"question {offset + i}" for i in range(n)], "label": [i % 3 for i in range(n)],
             "meta": [{"hints": [f"hint {offset + i}"]} for i in range(n)]},
            features=datasets.Features({"q": datasets.Value("string"),
                                        "label": datasets.ClassLabel(names=["low", "mid", "high"]),
                                        "meta": {"hints": datasets.Sequence(datasets.Value("string"))}}))
    folder = tmp_path / "hub_copy"
    datasets.DatasetDict({"training": split(9, 0), "evaluation": split(3, 100)}).save_to_disk(str(folder))
    spec = {"task": "levels", "type": "classification",
            "data": {"path": str(folder), "train": "training", "test": "evaluation"},
            "columns": {"question": "q", "hint": "meta.hints.0"},
            "answer": {"column": "label", "labels": {0: "low", 1: "mid", 2: "high"}},
            "templates": [{"name": "t", "prompt": "{{ question }} ({{ hint }})", "target": "{{ answer }}"}]}
    (tmp_path / "levels.yaml").write_text(yaml.safe_dump(spec))
    other = color_task(tmp_path)
    run_templates(config(tmp_path, [str(tmp_path / "levels.yaml"), other], heldout_tasks=["levels"]))
    heldout = read_jsonl(tmp_path / "out" / "heldout.jsonl")
    assert [(r["messages"][-1]["content"], r["answer"]) for r in heldout] == [
        ("question 100 (hint 100)", "low"), ("question 101 (hint 101)", "mid"), ("question 102 (hint 102)", "high")]
    assert heldout[0]["origin"] == f"{folder}:record 1"


def test_shipped_templates_render_on_shipped_inputs(tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)
    run_templates(config(tmp_path, list(SHIPPED), templates_per_record=10, cot_fraction=1.0,
                         few_shot_fraction=0.5, heldout_tasks=["sentiment"]))
    out = tmp_path / "out"
    train, valid, heldout = (read_jsonl(out / n) for n in ("train.jsonl", "valid.jsonl", "heldout.jsonl"))
    assert not read_jsonl(out / "dropped.jsonl")
    for path in SHIPPED:
        task = load_task_file(path)
        assert len(task.templates) >= 3
        rows = [r for r in train + valid + heldout if r["task"] == task.task]
        assert {r["template"] for r in rows} == {t.name for t in task.templates}
        for row in rows:
            assert all(m["content"].strip() and "{" not in m["content"] for m in row["messages"])
        if task.labels:
            # an answer-only prompt must name every option, or exact match would be unfair
            for row in rows:
                prompt = row["messages"][-2 if row in train else -1]["content"]
                assert all(option in prompt for option in task.options), (row["template"], prompt)
            assert all(r["answer"] in task.options for r in valid + heldout if r["task"] == task.task)
    assert any(r["cot"] for r in train if r["task"] == "nli")


def test_cli_writes_sft_readable_data(tmp_path, monkeypatch, tiny_tok, capsys):
    from alignkit.cli import main
    from alignkit.data.formats import load_conversations
    from alignkit.data.sft import build_sft_examples

    monkeypatch.chdir(REPO)
    out = tmp_path / "job"
    assert main(["data", "templates", "--config", "configs/data/templates.yaml", f"output_dir={out}"]) == 0
    printed = capsys.readouterr().out
    summary = json.loads((out / "summary.json").read_text())
    assert f"wrote {summary['written']['train.jsonl']} rows to train.jsonl" in printed
    assert "nli train" in printed and "over cap" in printed
    conversations, skips = load_conversations(str(out / "train.jsonl"))
    assert skips.skipped == 0 and len(conversations) == summary["written"]["train.jsonl"] > 0
    examples, _ = build_sft_examples(conversations, tiny_tok, max_length=1024, train_on="last_assistant")
    assert len(examples) == len(conversations) and all(e.num_targets > 0 for e in examples)
    assert not any(r["task"] == "sentiment" for r in read_jsonl(out / "train.jsonl"))
    assert main(["data", "templates", "--config", "configs/data/templates.yaml", f"output_dir={out}",
                 "shots=0"]) == 2
    assert "shots: must be a whole number >= 1" in capsys.readouterr().err
