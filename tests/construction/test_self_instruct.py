"""Self-instruct on a scripted model: proposals parsed strictly, each filter's count, answers, resume, the CLI."""
import json
import re

import pytest

from alignkit.cli import main
from alignkit.config import ConfigError, load_config
from alignkit.construction.self_instruct import SelfInstructConfig, draw_examples, read_reply, run_self_instruct
from alignkit.data.errors import DataError, RecordError
from alignkit.generation.backend import Completion
from tests.helpers.construction import CompletionBackend, RuleBackend, standin_server
from tests.helpers.crash import Crash
from tests.helpers.files import write_jsonl
from tests.helpers.files import read_jsonl

OUTPUT_FILES = ("instructions.jsonl", "sft.jsonl", "dropped.jsonl")


SEEDS = [{"instruction": "Explain how rainbows form.", "output": "Light bends in raindrops."},
         {"instruction": "Write a limerick about a sleepy cat.", "output": "..."},
         {"instruction": "Convert the distance to miles:", "input": "5 kilometres", "output": "3.1 miles"},
         {"instruction": "Name three uses of baking soda in cleaning.", "output": "Ovens, sinks, grout."}]

# What the model proposes, by (round, prompt index). Every prompt shows 3 examples, so new tasks start at 4.
PROPOSALS = {
    (1, 0): "4. Describe the water cycle in simple terms.\n"  # kept
            "5. Draw a picture of a sunset.\n"  # blocklist (draw)
            "6. Hi there.\n"  # length (2 words)
            '7. "Summarise the news for a busy reader."\n'  # non_letter_start
            "8. Explain how rainbows form!",  # duplicate of a seed once normalised
    (1, 1): "Sure! Here are new tasks:\n4. Explain gravity to a child.",  # unparseable: a preamble
    (1, 2): "1. Explain gravity to a child.\n2. Plan a picnic.",  # unparseable: the list restarted
    (2, 0): "4. Describe the water cycle in very simple terms.\n"  # rouge_l with round 1's kept task
            "5. Write a short story about a lighthouse keeper.\n"  # kept
            "6. Write a short story about a lighthouse keeper's dog.",  # rouge_l with the task just kept
    (2, 1): Completion("4. List five facts about the moons of Jupiter.\n"  # kept: the third, so the target
                       "5. Plan a weekend hiking trip for beginners.\n"  # over_target
                       "6. Summarise the plot of", finish_reason="length"),  # cut_off: the last line of a cut reply
    (2, 2): Completion("", finish_reason="error", error="HTTP 500"),  # backend_error
}


def rule(text, sample, seed):
    found = re.match(r"ROUND (\d+) PROMPT (\d+)", text)
    if found:
        return PROPOSALS.get((int(found.group(1)), int(found.group(2))), "no reply scripted")
    if "lighthouse" in text:
        return Completion("Once upon a time, on a rocky", finish_reason="length")
    return f"An answer to: {text}"


def job(tmp_path, name="out", **changes):
    seeds = write_jsonl(tmp_path / "seeds.jsonl", SEEDS)
    prompts = tmp_path / "prompts.yaml"
    prompts.write_text("chat: |\n  ROUND {{ round }} PROMPT {{ index }}\n"
                       "  {% for task in examples %}\n  {{ loop.index }}. {{ task }}\n  {% endfor %}\n"
                       "  Continue from {{ first }}.\n")
    keys = dict(output_dir=str(tmp_path / name), seed_tasks=seeds, prompts=str(prompts), target=3, max_rounds=4,
                prompts_per_round=3, examples_per_prompt=3, machine_examples=1, new_per_prompt=5, max_words=20,
                progress=False)
    keys.update(changes)
    cfg = SelfInstructConfig(**keys)
    cfg.generator.batch_size = 1
    return cfg


def test_each_filter_counts_what_it_removed_and_the_kept_set_is_exact(tmp_path):
    backend = CompletionBackend(rule)
    result = run_self_instruct(job(tmp_path), backend=backend)
    steps = result.counts.to_dict()
    assert steps["proposals"] == {"seen": 6, "kept": 3, "dropped": {"error": 1, "unparseable": 2}}
    assert steps["instructions"] == {"seen": 11, "kept": 3, "dropped": {
        "cut off": 1, "length": 1, "blocklist": 1, "non-letter start": 1, "duplicate": 1, "ROUGE-L": 2,
        "over target": 1}}
    assert steps["answers"] == {"seen": 3, "kept": 2, "dropped": {"error": 0, "empty": 0, "cut off": 1}}

    out = tmp_path / "out"
    kept = read_jsonl(out / "instructions.jsonl")
    assert [(row["instruction"], row["round"]) for row in kept] == [
        ("Describe the water cycle in simple terms.", 1), ("Write a short story about a lighthouse keeper.", 2),
        ("List five facts about the moons of Jupiter.", 2)]
    sft = read_jsonl(out / "sft.jsonl")
    assert [row["messages"][0]["content"] for row in sft] == [kept[0]["instruction"], kept[2]["instruction"]]
    assert sft[0]["messages"][1] == {"role": "assistant", "content": f"An answer to: {kept[0]['instruction']}"}

    dropped = {row.get("instruction") or row.get("reply"): row for row in read_jsonl(out / "dropped.jsonl")}
    near = dropped["Describe the water cycle in very simple terms."]
    assert near["reason"] == "ROUGE-L" and near["similar_to"] == "Describe the water cycle in simple terms."
    same_round = dropped["Write a short story about a lighthouse keeper's dog."]
    assert same_round["similar_to"] == "Write a short story about a lighthouse keeper."
    assert same_round["rouge_l"] >= 0.7
    assert dropped["Explain how rainbows form!"]["similar_to"] == "Explain how rainbows form."
    assert dropped["Draw a picture of a sunset."]["keyword"] == "picture"  # the first of the list that matches
    assert dropped["6. Summarise the plot of"]["reason"] == "cut off"
    assert dropped["Write a short story about a lighthouse keeper."]["step"] == "answers"

    # The target was met in round 2: no third round was asked for.
    assert not any(prompt.startswith("ROUND 3") for prompt in backend.prompts)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["rounds"] == 2 and summary["written"] == {"instructions.jsonl": 3, "sft.jsonl": 2,
                                                              "dropped.jsonl": 12}


def test_later_rounds_show_machine_written_examples_beside_seeds(tmp_path):
    backend = CompletionBackend(rule)
    run_self_instruct(job(tmp_path), backend=backend)
    seeds = {" ".join(f"{s['instruction']}\n{s.get('input', '')}".split()) for s in SEEDS}
    for prompt in backend.prompts:
        if not prompt.startswith("ROUND"):
            continue
        shown = re.findall(r"^\d+\. (.*)$", prompt, re.M)
        machine = [task for task in shown if task not in seeds]
        assert len(shown) == 3
        assert machine == ([] if prompt.startswith("ROUND 1") else ["Describe the water cycle in simple terms."])


def test_cut_off_answers_are_kept_when_asked(tmp_path):
    result = run_self_instruct(job(tmp_path, keep_cut_off=True), backend=CompletionBackend(rule))
    assert result.counts.to_dict()["answers"]["kept"] == 3


def test_draw_examples_mixes_as_configured_and_depends_on_the_rng_alone():
    import random

    seeds, machine = [f"seed {i}" for i in range(10)], [f"machine {i}" for i in range(5)]
    first = draw_examples(seeds, machine, 6, 2, random.Random(7))
    assert sorted(first) == sorted(set(first)) and len(first) == 6
    assert sum(task.startswith("machine") for task in first) == 2
    assert draw_examples(seeds, machine, 6, 2, random.Random(7)) == first
    assert sum(t.startswith("machine") for t in draw_examples(seeds, machine[:1], 6, 2, random.Random(7))) == 1


@pytest.mark.parametrize("text, finish, expected", [
    ("4. Write a poem.\n\n5. Plan a trip.", "stop", (["Write a poem.", "Plan a trip."], None)),
    ("4) Write a poem.", "stop", (["Write a poem."], None)),
    ("4. Write a poem.\n6. Plan a trip.", "stop", (None, None)),  # a number skipped
    ("Write a poem.", "stop", (None, None)),
    ("", "stop", (None, None)),
    ("4. Write a poem.\n5. Plan a", "length", (["Write a poem."], "5. Plan a")),
    ("4. Write a po", "length", ([], "4. Write a po")),
])
def test_replies_are_read_strictly(text, finish, expected):
    assert read_reply(text, finish, 4) == expected


def outputs(folder):
    summary = json.loads((folder / "summary.json").read_text())
    summary.pop("output_dir")
    return [(folder / name).read_bytes() for name in OUTPUT_FILES], summary


def test_two_runs_are_equal_and_a_rerun_makes_no_calls(tmp_path):
    run_self_instruct(job(tmp_path, "a"), backend=CompletionBackend(rule))
    run_self_instruct(job(tmp_path, "b"), backend=CompletionBackend(rule))
    assert outputs(tmp_path / "a") == outputs(tmp_path / "b")
    silent = CompletionBackend(rule, crash_at=1)  # any call would crash: everything comes from the journal
    run_self_instruct(job(tmp_path, "a"), backend=silent)
    assert silent.calls == 0 and outputs(tmp_path / "a") == outputs(tmp_path / "b")


# A call a prompt (batch_size 1): 3 calls a round, then 3 answers. Crash at the second prompt of round 2, or at
# the second answer.
@pytest.mark.parametrize("crash_at", [5, 8])
def test_a_crashed_job_resumes_to_the_same_outputs(tmp_path, crash_at):
    run_self_instruct(job(tmp_path, "straight"), backend=CompletionBackend(rule))
    with pytest.raises(Crash):
        run_self_instruct(job(tmp_path, "crashed"), backend=CompletionBackend(rule, crash_at=crash_at))
    assert not (tmp_path / "crashed" / "sft.jsonl").exists()
    resumed = CompletionBackend(rule)
    run_self_instruct(job(tmp_path, "crashed"), backend=resumed)
    assert outputs(tmp_path / "crashed") == outputs(tmp_path / "straight")
    # Only what was neither journaled nor cached: round 2's last two prompts (its first reply is in the cache)
    # and the 3 answers, or the last 2 answers.
    assert resumed.calls == (5 if crash_at == 5 else 2)


def test_bad_seed_records_and_prompt_files_fail_in_one_line(tmp_path):
    cfg = job(tmp_path)
    write_jsonl(cfg.seed_tasks, [SEEDS[0], {"instruction": "", "output": "x"}])
    with pytest.raises(RecordError, match=r"seeds.jsonl:2: instruction: must be a non-empty string"):
        run_self_instruct(cfg, backend=CompletionBackend(rule))
    cfg = job(tmp_path)
    (tmp_path / "prompts.yaml").write_text("chat: '{{ examples }} {{ first }} {{ topic }}'\n")
    with pytest.raises(DataError, match=r"prompts.yaml: chat: unknown template variable\(s\) \['topic'\]"):
        run_self_instruct(cfg, backend=CompletionBackend(rule))
    (tmp_path / "prompts.yaml").write_text("propse: '{{ examples }} {{ first }}'\n")
    with pytest.raises(DataError, match=r"prompts.yaml: unknown key\(s\) \['propse'\]"):
        run_self_instruct(cfg, backend=CompletionBackend(rule))
    with pytest.raises(ConfigError, match="rouge_threshold"):
        load_config(SelfInstructConfig, None, ["rouge_threshold=1.5"])


def standin_rule(text, sample, seed):
    """Over HTTP with alignkit's own proposal prompt: new tasks numbered as asked, then plain answers."""
    asked = re.search(r"numbered (\d+) to (\d+)", text) or re.search(r"\n(\d+)\.$", text)  # chat | complete
    if not asked:
        return f"Here is an answer: {text[:40]}"
    tasks = ["Explain why bread goes stale.", "Compare tea and coffee for a morning routine.",
             "Write a toast for a friend's retirement.", "Suggest a name for a hiking club."]
    first = int(asked.group(1))
    listed = "\n".join(f"{first + i}. {task}" for i, task in enumerate(tasks))
    return listed if asked.re.pattern.startswith("numbered") else listed[len(str(first)) + 1:] + "\nThe end."


def test_the_cli_runs_the_shipped_config_over_http(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("OPENAI_API_KEY", "x")
    out = tmp_path / "cli"
    with standin_server(standin_rule) as (url, log):
        code = main(["data", "self-instruct", "--config", "configs/data/self_instruct.yaml", f"output_dir={out}",
                     f"generator.model=openai:standin@{url}", "target=3", "max_rounds=2", "prompts_per_round=2",
                     "progress=false"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "instructions" in printed and "wrote 3 rows to instructions.jsonl" in printed
    kept = read_jsonl(out / "instructions.jsonl")
    assert [row["instruction"] for row in kept] == ["Explain why bread goes stale.",
                                                    "Compare tea and coffee for a morning routine.",
                                                    "Write a toast for a friend's retirement."]
    assert len(read_jsonl(out / "sft.jsonl")) == 3 and len(log.prompts) == 2 + 3  # one round of 2 prompts, 3 answers


def test_a_continuation_is_read_up_to_the_first_line_that_is_not_the_next_task():
    from alignkit.construction.self_instruct import read_continuation

    text = " Plan a picnic.\n5. Explain tides.\n\n6. Name a fish.\nAnswer: 7. Not a task\n8. Not read either."
    assert read_continuation(text, "stop", 4) == (["Plan a picnic.", "Explain tides.", "Name a fish."], None)
    # The list ran to max_tokens: its last task may be half a task.
    assert read_continuation(" Plan a picnic.\n5. Explain ti", "length", 4) == (["Plan a picnic."], "Explain ti")
    # Stopped by a line that is not the list: the last task is whole.
    assert read_continuation(" Plan a picnic.\n\nNow", "length", 4) == (["Plan a picnic."], None)
    assert read_continuation(" \nSure, here you go", "stop", 4) == (None, None)
    assert read_continuation("", "stop", 4) == (None, None)


def test_complete_mode_continues_a_raw_list_and_its_template_must_end_where_the_next_task_begins(tmp_path):
    prompts_seen = []

    def continuation(text, sample, seed):
        prompts_seen.append(text)
        if not re.search(r"\n\d+\.$", text):
            return "An answer."
        if "limerick" in text:
            return " Name three rivers in Africa.\n5. Explain how a lock works.\nThat is all."
        if "baking soda" in text:
            return "\n\nNothing to add."  # no task: the reply is unparseable
        return " Describe the water cycle in simple terms."

    cfg = job(tmp_path, mode="complete", target=3, max_rounds=2)
    prompts = tmp_path / "complete.yaml"
    prompts.write_text("complete: |\n  {% for task in examples %}\n  {{ loop.index }}. {{ task }}\n  {% endfor %}\n"
                       "  {{ first }}.\n")
    cfg.prompts = str(prompts)
    result = run_self_instruct(cfg, backend=RuleBackend(continuation))
    assert prompts_seen[0].endswith("\n4.") and "1. " in prompts_seen[0]  # raw text: no chat template, no ask
    kept = [row["instruction"] for row in read_jsonl(tmp_path / "out" / "instructions.jsonl")]
    assert "Explain how a lock works." in kept and "Name three rivers in Africa." in kept
    assert result.counts.to_dict()["proposals"]["dropped"]["unparseable"] >= 1  # the replies with no task

    prompts.write_text("complete: |\n  {% for task in examples %}{{ task }} {% endfor %}{{ first }}\n  Next:\n")
    with pytest.raises(DataError, match=r"complete.yaml: complete: must end with `\{\{ first \}\}\.`"):
        run_self_instruct(job(tmp_path, "bad", mode="complete", prompts=str(prompts)), backend=RuleBackend(continuation))
