"""Ids and seeded choices that depend on their inputs alone, the same in every run and process.

Data jobs name journaled units by them; the annotation app orders each annotator's sides by them.
"""
from __future__ import annotations

import hashlib
import json
from typing import Any


def stable_id(*parts: Any) -> str:
    """A short id that depends on `parts` alone (their JSON), the same in every run."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, ensure_ascii=False).encode("utf-8")).hexdigest()[:16]


def draw(n: int, *key: Any) -> int:
    """An index in [0, n) that depends on `key` alone: a seeded choice that no batching or resume changes."""
    return int(stable_id(*key), 16) % n
