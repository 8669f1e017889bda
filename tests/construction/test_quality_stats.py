"""`alignkit data stats` against a file small enough to count by hand, token counts from a tokenizer folder,
languages, the shipped configs, and the three commands end to end through the CLI."""
import json

import pytest

from alignkit.cli import main
from alignkit.config import load_config
from alignkit.construction.quality import DecontaminateConfig, DedupConfig, StatsConfig, run_stats
from alignkit.construction.stats import distribution
from alignkit.data.readers import DataSpec
from tests.helpers.files import write_jsonl

# prompt words / response words / turns, counted by hand beside each record
HAND = [
    {"messages": [{"role": "user", "content": "one two three"}, {"role": "assistant", "content": "a b"}]},  # 3 / 2 / 2
    {"instruction": "four words right here", "input": "", "output": "x y z w v"},  # 4 / 5 / 2
    {"prompt": "just a prompt with six words"},  # 6 / none / 1
    {"messages": [{"role": "system", "content": "be terse please"},  # system: not a prompt word, not a turn
                  {"role": "user", "content": "u1 u2"}, {"role": "assistant", "content": "a1"},
                  {"role": "user", "content": "u3"}, {"role": "assistant", "content": "a2 a3 a4"}]},  # 3 / 4 / 4
    {"prompt": "pick one of these", "chosen": "the first", "rejected": "the second one please"},  # 4 / 2 / 2
]


def stats_config(tmp_path, *paths, **keys):
    cfg = StatsConfig(output_dir=str(tmp_path / "out"), data=[DataSpec(str(p)) for p in paths], progress=False, **keys)
    cfg.validate()
    return cfg


def test_distribution_of_a_handful_of_numbers():
    assert distribution([3, 4, 6, 3, 4]) == {"mean": 4.0, "median": 4.0, "p10": 3.0, "p90": 5.2, "max": 6}
    assert distribution([]) is None


def test_stats_of_a_hand_counted_file_of_sft_prompt_and_preference_records(tmp_path):
    path = write_jsonl(tmp_path / "hand.jsonl", HAND)
    result = run_stats(stats_config(tmp_path, path, languages=False))
    stats = json.loads((tmp_path / "out" / "summary.json").read_text())["stats"]
    assert stats == {
        "records": 5,
        # prompt words 3 4 6 3 4 -> sorted 3 3 4 4 6: p10 at 0.4 of the way from 3 to 3, p90 0.6 from 4 to 6
        "prompt_words": {"mean": 4.0, "median": 4.0, "p10": 3.0, "p90": 5.2, "max": 6},
        # response words 2 5 4 2 (the prompt record has none) -> 2 2 4 5
        "response_words": {"mean": 3.25, "median": 3.0, "p10": 2.0, "p90": 4.7, "max": 5},
        # turns 2 2 1 4 2 -> 1 2 2 2 4
        "turns": {"mean": 2.2, "median": 2.0, "p10": 1.4, "p90": 3.2, "max": 4},
        "empty_responses": 1,
    }
    assert result.written == {} and result.counts.to_dict() == {"records": {"seen": 5, "kept": 5, "dropped": {}}}


def test_tokens_are_counted_per_turn_with_the_tokenizer(tmp_path, tiny_tok):
    path = write_jsonl(tmp_path / "hand.jsonl", HAND[:2])
    run_stats(stats_config(tmp_path, path, languages=False), tokenizer=tiny_tok)
    stats = json.loads((tmp_path / "out" / "summary.json").read_text())["stats"]

    def count(text):
        return len(tiny_tok(text, add_special_tokens=False).input_ids)

    prompt, response = [count("one two three"), count("four words right here")], [count("a b"), count("x y z w v")]
    assert prompt != [3, 4]  # tokens are not words here, so the check below means something
    assert (stats["prompt_tokens"]["mean"], stats["prompt_tokens"]["max"]) == (sum(prompt) / 2, max(prompt))
    assert (stats["response_tokens"]["mean"], stats["response_tokens"]["max"]) == (sum(response) / 2, max(response))


def test_languages_are_detected_the_same_every_time_and_unknown_counted(tmp_path, capsys):
    rows = [{"prompt": "Le chat dort sur le canapé pendant que la pluie tombe doucement dehors."},
            {"prompt": "Der Hund läuft schnell durch den großen grünen Park am frühen Morgen."},
            {"prompt": "The quick brown fox jumps over the lazy dog near the quiet river bank."},
            {"prompt": "The children built a small wooden boat and sailed it across the pond."},
            {"prompt": "123 + 456 = 579"}]
    path = write_jsonl(tmp_path / "langs.jsonl", rows)
    found = []
    for _ in range(2):
        run_stats(stats_config(tmp_path, path))
        found.append(json.loads((tmp_path / "out" / "summary.json").read_text())["stats"]["languages"])
    assert found[0] == found[1] == {"en": 2, "de": 1, "fr": 1, "unknown": 1}
    assert "languages            en 2, de 1, fr 1, unknown 1" in capsys.readouterr().out


def test_the_shipped_configs_load_and_validate(shared_data):
    for name, cls in (("dedup", DedupConfig), ("decontaminate", DecontaminateConfig), ("stats", StatsConfig)):
        cfg = load_config(cls, f"configs/data/{name}.yaml")
        assert cfg.output_dir == f"runs/data/{name}" and cfg.data


@pytest.mark.parametrize("command", ["dedup", "decontaminate", "stats"])
def test_each_command_end_to_end_through_the_cli(tmp_path, capsys, command):
    rows = [{"instruction": "Name three primary colours.", "output": "Red, yellow and blue."},
            {"instruction": "name three primary colours", "output": "Red, yellow and blue!"},
            {"prompt": "Summarise the plot of a short story about a dragon.",
             "completion": "A dragon learns to share."}]
    data = write_jsonl(tmp_path / "train.jsonl", rows)
    evals = write_jsonl(tmp_path / "eval.jsonl", [{"question": "Summarise the plot of a short story about a dragon. "
                                                               "A dragon learns to share."}])
    out = tmp_path / command
    extra = [f"eval_files=[{evals}]"] if command == "decontaminate" else []
    code = main(["data", command, "--config", f"configs/data/{command}.yaml", f"output_dir={out}", f"data=[{data}]",
                 "languages=false", "progress=false", *extra])
    printed = capsys.readouterr().out
    assert code == 0
    assert f"alignkit data {command}: {out}" in printed and "records              " in printed
    summary = json.loads((out / "summary.json").read_text())
    if command == "stats":
        assert summary["stats"]["records"] == 3 and summary["written"] == {}
        return
    kept = [json.loads(line) for line in (out / "data.jsonl").read_text().splitlines()]
    dropped_line = {"dedup": 2, "decontaminate": 3}[command]
    assert kept == [row for index, row in enumerate(rows, start=1) if index != dropped_line]
    assert "wrote 2 rows to data.jsonl" in printed and "wrote 1 rows to dropped.jsonl" in printed
    assert summary["written"] == {"data.jsonl": 2, "dropped.jsonl": 1} and summary["stats"]["records"] == 2


def test_a_bad_record_is_a_one_line_cli_error(tmp_path, capsys):
    data = write_jsonl(tmp_path / "train.jsonl", [{"messages": [{"role": "user", "content": "hi"}]},
                                                  {"chosen": "a", "rejected": "b"}])
    code = main(["data", "stats", f"output_dir={tmp_path / 'out'}", f"data=[{data}]", "progress=false"])
    error = capsys.readouterr().err.strip()
    assert code == 2 and len(error.splitlines()) == 1
    assert f"{data}:2: prompt: missing" in error
