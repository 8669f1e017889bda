"""What every training stage does once its examples are built: hold out an eval split when no eval
set was given, refuse an empty training set, and report what was kept."""
from __future__ import annotations

import random

from alignkit.data.errors import SkipReport


def split_eval(examples: list, fraction: float, seed: int) -> tuple[list, list]:
    """(train, eval): a seeded `fraction` of the examples held out, both in their original order."""
    if fraction <= 0:
        return examples, []
    order = list(range(len(examples)))
    random.Random(seed).shuffle(order)
    held = set(order[:max(1, int(len(order) * fraction))])
    return [e for i, e in enumerate(examples) if i not in held], [examples[i] for i in sorted(held)]


def data_report(train: list, eval_: list, skips: SkipReport, lengths, mix, *, noun: str = "examples") -> dict:
    """Print the one-line summary and return the report dict; an empty training set is an error."""
    if not train:
        raise ValueError("no training example left after filtering: " + lengths.summary())
    print(f"data: {len(train)} train / {len(eval_)} eval {noun}; {skips.summary()}; {lengths.summary()}", flush=True)
    return {"records": skips.to_dict(), "length": lengths.to_dict(), "mix": mix.to_dict() if mix else None,
            "train_examples": len(train), "eval_examples": len(eval_)}
