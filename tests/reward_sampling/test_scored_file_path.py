"""The scored-file path people run by hand: `alignkit generate --n 4` -> `alignkit score --rewards` ->
pairs by a rule -> `alignkit dpo`, with the reward deciding which response of a pair is chosen."""
from __future__ import annotations

import json

from alignkit.cli import main
from alignkit.data.preference import load_pairs
from tests.helpers.files import write_jsonl

LENGTH = "tests.helpers.rl_rewards:completion_length"
QUESTIONS = ["hello", "What is the capital of France?", "Numbers 0 1 2", "write a poem about the sea"]


def test_generate_score_pairs_and_dpo_with_the_reward_deciding_the_order(tmp_path, model_dir, capsys):
    prompts = write_jsonl(tmp_path / "prompts.jsonl", [{"messages": [{"role": "user", "content": q}]}
                                                       for q in QUESTIONS])
    generated, scored = tmp_path / "gen.jsonl", tmp_path / "scored.jsonl"
    assert main(["generate", "--model", model_dir, "--prompts", prompts, "--out", str(generated), "--n", "4",
                 "--temperature", "1.0", "--seed", "0", "--max-tokens", "8"]) == 0
    rewards = tmp_path / "rewards.yaml"
    rewards.write_text(f"rewards:\n  - {{kind: python, function: '{LENGTH}'}}\n")
    assert main(["score", "--rewards", str(rewards), "--input", str(generated), "--out", str(scored)]) == 0
    assert f"wrote 4 scored records (16 responses) to {scored}" in capsys.readouterr().out

    rows = [json.loads(line) for line in scored.read_text(encoding="utf-8").splitlines()]
    reward_of = {}
    for row in rows:
        assert len(row["responses"]) == 4 and "reward" not in row
        assert row["rewards"] == [float(len(r)) for r in row["responses"]]  # the reward the file names
        assert row["failures"] == [None] * 4 and row["reward_components"] == {"python": row["rewards"]}
        reward_of.update({(row["prompt"], r): s for r, s in zip(row["responses"], row["rewards"])})

    pairs, _ = load_pairs([str(scored)], rule="best_vs_worst")
    untied = [row for row in rows if len(set(row["rewards"])) > 1]
    assert len(untied) >= 3  # the samples differ, so the order is the reward's, not a tie's
    assert {pair.prompt[-1]["content"] for pair in pairs} == {row["prompt"] for row in untied}
    for pair in pairs:
        question = pair.prompt[-1]["content"]
        chosen, rejected = pair.chosen[-1]["content"], pair.rejected[-1]["content"]
        row = next(r for r in rows if r["prompt"] == question)
        assert reward_of[(question, chosen)] == max(row["rewards"]) > reward_of[(question, rejected)]
        assert reward_of[(question, rejected)] == min(row["rewards"])

    out = tmp_path / "dpo"
    assert main(["dpo", f"model.name={model_dir}", f"data.train=[{scored}]", "data.pair_rule=best_vs_worst",
                 f"train.output_dir={out}", "train.max_steps=1", "train.batch_size=2", "train.precision=fp32",
                 "train.progress=false", "train.resume=none", f"reference_cache={tmp_path / 'refcache'}"]) == 0
    assert json.loads((out / "summary.json").read_text())["steps"] == 1
