"""Response formats whose following is a fact: a JSON object with one given key, capital letters only,
or a fixed closing phrase. The demo's held-out evaluation and the `format` reward both call
`follows_format`, so a trained policy is rewarded for exactly what the demo reports.
"""
from __future__ import annotations

import json

FORMATS = ("json", "upper", "ending")
CLOSING_PHRASE = "Any other questions?"  # the demo's "ending" task asks for this phrase


def follows_format(fmt: str, response: str, *, json_key: str = "answer", ending: str = CLOSING_PHRASE) -> bool:
    """Whether `response` is in format `fmt`: "json" (an object whose only key is `json_key`),
    "upper" (has letters, all capitals) or "ending" (something, then `ending` at the very end)."""
    text = response.strip()
    if fmt == "json":
        try:
            value = json.loads(text)
        except ValueError:
            return False
        return isinstance(value, dict) and set(value) == {json_key}
    if fmt == "upper":
        letters = [c for c in text if c.isalpha()]
        return bool(letters) and all(c.isupper() for c in letters)
    if fmt == "ending":
        return text.endswith(ending) and len(text) > len(ending)
    raise ValueError(f"unknown format {fmt!r}; use one of {', '.join(FORMATS)}")
