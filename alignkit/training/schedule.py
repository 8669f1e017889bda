"""Learning-rate schedule: linear warm-up, then cosine or linear decay (or constant)."""
from __future__ import annotations

import math

import torch


def lr_factor(step: int, *, total: int, warmup: int, kind: str, min_ratio: float) -> float:
    if warmup and step < warmup:
        return (step + 1) / warmup
    if kind == "constant":
        return 1.0
    span = max(1, total - warmup)
    progress = min(1.0, (step - warmup) / span)
    if kind == "cosine":
        decay = 0.5 * (1 + math.cos(math.pi * progress))
    elif kind == "linear":
        decay = 1 - progress
    else:
        raise ValueError(f"unknown schedule {kind!r}: use cosine, linear or constant")
    return min_ratio + (1 - min_ratio) * decay


def make_scheduler(optimizer, *, total: int, warmup: int, kind: str, min_ratio: float):
    lr_factor(0, total=total, warmup=warmup, kind=kind, min_ratio=min_ratio)  # validates `kind` early
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(s, total=total, warmup=warmup, kind=kind, min_ratio=min_ratio))
