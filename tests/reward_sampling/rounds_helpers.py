"""Expert iteration and iterative DPO in tests: a reward that prefers a known letter (and cannot score some
samples), tiny prompt files, arguments for a tiny round-based run, and the definitions the runs are
checked against, written out plainly from samples.jsonl."""
import json

from tests.helpers.files import write_jsonl
from tests.helpers.rl_runs import write_prompts

REWARD = "tests.reward_sampling.rounds_helpers:prefers_e"
# A failure scores far above any real reward: a selection or pairing that let one through would pick it.
FAILURE_REWARD = 100.0


def prefers_e(prompt, completion, metadata):
    """How many times "e" occurs in the completion; None (cannot score) when its length is a multiple of 3."""
    if len(completion) % 3 == 0:
        return None
    return float(completion.count("e"))


def read_jsonl(path) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def round_args(model_dir, tmp_path, out, **extra) -> list[str]:
    """key=value arguments shared by both methods: 3 prompts a round, 4 samples of up to 8 tokens each."""
    heldout = write_jsonl(tmp_path / "heldout.jsonl", [{"messages": [{"role": "user", "content": q}]}
                                                        for q in ("say hello", "name a colour")])
    args = {"model.name": model_dir, "prompts": f"[{write_prompts(tmp_path / 'prompts.jsonl')}]",
            "heldout": f"[{heldout}]",
            "rewards": f'[{{kind: python, function: "{REWARD}", failure_reward: {FAILURE_REWARD}}}]',
            "sampling.n": 4, "sampling.max_tokens": 8, "sampling.seed": 3, "rounds": 2, "prompts_per_round": 3,
            "max_length": 64, "output_dir": str(out)}
    args.update(extra)
    return [f"{k}={v}" for k, v in args.items()]


def usable(record: dict, keep_truncated: bool) -> list[int]:
    """Indices of one samples.jsonl record's samples that may be trained on: scored, not empty, not cut
    short (unless keep_truncated), and not a copy of an earlier sample's text."""
    seen, out = set(), []
    for i, text in enumerate(record["responses"]):
        if record["failures"][i] is not None or not text.strip() or text in seen:
            continue
        if record["finish_reasons"][i] == "length" and not keep_truncated:
            continue
        seen.add(text)
        out.append(i)
    return out
