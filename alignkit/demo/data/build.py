"""Write the demo's instruction data: short questions answered in a requested, checkable format.

Run `python -m alignkit.demo.data.build` to regenerate the JSONL files beside this script. The
facts are split between train and held-out files, so the held-out figure measures a learnt
behaviour (following the format) on questions the model never trained on.
"""
from __future__ import annotations

import json
import random
from pathlib import Path

from alignkit.atomic_write import write_jsonl_atomic
from alignkit.rewards.formats import CLOSING_PHRASE

CAPITALS = [("France", "Paris"), ("Japan", "Tokyo"), ("Italy", "Rome"), ("Spain", "Madrid"),
            ("Germany", "Berlin"), ("Egypt", "Cairo"), ("Canada", "Ottawa"), ("Kenya", "Nairobi"),
            ("Peru", "Lima"), ("Norway", "Oslo"), ("Greece", "Athens"), ("Ireland", "Dublin"),
            ("Portugal", "Lisbon"), ("Austria", "Vienna"), ("Poland", "Warsaw"), ("Chile", "Santiago"),
            ("Cuba", "Havana"), ("Sweden", "Stockholm"), ("Finland", "Helsinki"), ("Thailand", "Bangkok"),
            ("Russia", "Moscow"), ("Argentina", "Buenos Aires"), ("Mexico", "Mexico City"),
            ("India", "New Delhi"), ("China", "Beijing"), ("Turkey", "Ankara"), ("Australia", "Canberra"),
            ("Brazil", "Brasilia"), ("Denmark", "Copenhagen"), ("Hungary", "Budapest")]
OPPOSITES = [("hot", "cold"), ("big", "small"), ("fast", "slow"), ("up", "down"), ("happy", "sad"),
             ("light", "dark"), ("open", "closed"), ("early", "late"), ("full", "empty"), ("hard", "soft"),
             ("old", "new"), ("rich", "poor"), ("wet", "dry"), ("loud", "quiet"), ("strong", "weak"),
             ("long", "short"), ("true", "false"), ("inside", "outside"), ("win", "lose"), ("first", "last")]
ANIMALS = [("cow", "moo"), ("dog", "woof"), ("cat", "meow"), ("duck", "quack"), ("sheep", "baa"),
           ("owl", "hoot"), ("lion", "roar"), ("snake", "hiss"), ("frog", "croak"), ("horse", "neigh"),
           ("pig", "oink"), ("bee", "buzz")]

ENDING = CLOSING_PHRASE  # one phrase for the data and the check that scores it
FORMATS = {
    "json": 'Reply only with a JSON object of the form {"answer": "..."}.',
    "upper": "Answer in capital letters only.",
    "ending": f'End your reply with the exact phrase "{ENDING}"',
}


def questions(rng: random.Random):
    """(question, short answer, full-sentence answer) triples, tagged with a fact id for splitting."""
    for country, city in CAPITALS:
        yield f"capital:{country}", f"What is the capital of {country}?", city, f"The capital of {country} is {city}."
    for a, b in OPPOSITES:
        yield f"opposite:{a}", f'What is the opposite of "{a}"?', b, f'The opposite of "{a}" is "{b}".'
    for animal, sound in ANIMALS:
        yield f"sound:{animal}", f"What sound does a {animal} make?", sound, f"A {animal} says {sound}."
    for i in range(40):
        x, y = rng.randint(2, 40), rng.randint(2, 40)
        yield f"sum:{x}+{y}", f"What is {x} plus {y}?", str(x + y), f"{x} plus {y} is {x + y}."


def answer(fmt: str, short: str, sentence: str) -> str:
    if fmt == "json":
        return json.dumps({"answer": short})
    if fmt == "upper":
        return sentence.upper()
    return f"{sentence} {ENDING}"


def build(out_dir: Path, seed: int = 0) -> dict[str, int]:
    rng = random.Random(seed)
    facts = list(questions(rng))
    rng.shuffle(facts)
    held = {fid for fid, *_ in facts[: len(facts) // 4]}
    train, test = [], []
    for fid, question, short, sentence in facts:
        for fmt, instruction in FORMATS.items():
            prompt = f"{question} {instruction}"
            record = {"messages": [{"role": "user", "content": prompt},
                                   {"role": "assistant", "content": answer(fmt, short, sentence)}],
                      "format": fmt, "answer": short}
            (test if fid in held else train).append(record)
    rng.shuffle(train)
    return write_files(out_dir, {"sft_train.jsonl": train, "heldout.jsonl": test})


def write_files(out_dir: Path, files: dict[str, list[dict]]) -> dict[str, int]:
    """Write each list of rows as a JSONL file; return the row counts."""
    for name, rows in files.items():
        write_jsonl_atomic(out_dir / name, rows)
    return {name: len(rows) for name, rows in files.items()}


if __name__ == "__main__":
    print(build(Path(__file__).parent))
