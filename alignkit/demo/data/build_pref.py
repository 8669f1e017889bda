"""Write the demo's preference pairs: same prompts as the SFT data, chosen follows the request.

Run `python -m alignkit.demo.data.build_pref` (after `build`) to regenerate `pref_train.jsonl`
and `pref_heldout.jsonl` beside this script. Each prompt asks a question in one of the demo's
formats; chosen is the correct answer in that format, rejected is one of:
- plain:        the right answer as a plain sentence, ignoring the requested format;
- other_format: the right answer in another of the demo's formats;
- wrong_answer: the requested format, with a wrong answer.
The kind is stored as `subset`, so `alignkit rm-eval` reports accuracy for each. Held-out pairs
use exactly the facts held out of the SFT data (read from heldout.jsonl), so no held-out
question is ever trained on in either stage.
"""
from __future__ import annotations

import json
import random
from pathlib import Path

from alignkit.demo.data.build import FORMATS, answer, questions, write_files

KINDS = ("plain", "other_format", "wrong_answer")


def wrong_fact(fid: str, short: str, sentence: str, same_kind: list[tuple[str, str]], rng: random.Random):
    """(wrong short answer, sentence with it) from another fact of the same kind."""
    others = [s for other_fid, s in same_kind if s.lower() != short.lower() and other_fid != fid]
    wrong = rng.choice(others)
    head, _, tail = sentence.rpartition(short)  # the answer is the last mention in the sentence
    return wrong, f"{head}{wrong}{tail}"


def rejected(kind: str, fmt: str, fid: str, short: str, sentence: str, same_kind, rng: random.Random) -> str:
    if kind == "plain":
        return sentence  # normal case, no JSON, no closing phrase: breaks every requested format
    if kind == "other_format":
        return answer(rng.choice([f for f in FORMATS if f != fmt]), short, sentence)
    wrong, wrong_sentence = wrong_fact(fid, short, sentence, same_kind, rng)
    return answer(fmt, wrong, wrong_sentence)


def heldout_prompts(folder: Path) -> set[str]:
    with open(folder / "heldout.jsonl") as f:
        return {json.loads(line)["messages"][0]["content"] for line in f}


def build(out_dir: Path, seed: int = 1, train_kinds_per_prompt: int = 2) -> dict[str, int]:
    rng = random.Random(seed)
    facts = list(questions(random.Random(0)))  # seed 0: the facts (and sums) of build.py
    by_kind: dict[str, list[tuple[str, str]]] = {}
    for fid, _, short, _ in facts:
        by_kind.setdefault(fid.split(":")[0], []).append((fid, short))
    held = heldout_prompts(out_dir)
    train, test = [], []
    for fid, question, short, sentence in facts:
        for fmt, instruction in FORMATS.items():
            prompt = f"{question} {instruction}"
            is_held = prompt in held
            # Held-out pairs cover every kind, so each subset's accuracy can be read separately.
            kinds = list(KINDS) if is_held else rng.sample(KINDS, train_kinds_per_prompt)
            for kind in kinds:
                bad = rejected(kind, fmt, fid, short, sentence, by_kind[fid.split(":")[0]], rng)
                row = {"prompt": prompt, "chosen": answer(fmt, short, sentence), "rejected": bad,
                       "format": fmt, "subset": kind}
                (test if is_held else train).append(row)
    missing = held - {row["prompt"] for row in test}
    if missing:
        raise RuntimeError(f"{len(missing)} held-out prompts of heldout.jsonl are not among the demo facts; "
                           "rebuild both files (python -m alignkit.demo.data.build first)")
    rng.shuffle(train)
    return write_files(out_dir, {"pref_train.jsonl": train, "pref_heldout.jsonl": test})


if __name__ == "__main__":
    print(build(Path(__file__).parent))
