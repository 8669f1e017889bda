"""Conditional (control-token) training data: learn from good and bad responses alike.

Each response is trained on with a control text in its prompt saying what kind of response it
is; at generation time the prompt carries the control text of the kind wanted.
- Pairs: the chosen response gets `good`, the rejected one `bad` (both are trained on).
- Scored responses, any instruction layout plus `"scores": {"helpfulness": 4, ...}` describing
  the last assistant turn (e.g. `{"prompt", "completion", "scores"}` or `{"messages", "scores"}`):
  the scores become control tokens such as `[helpfulness: 4] [verbosity: 1]`, so one model can
  be steered along several objectives at once by asking for the scores wanted.
The control text goes in a system turn (`placement: system`, before any existing system text)
or in front of the first user turn (`placement: prefix`). Training covers the response only.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from alignkit.data.errors import RecordError, SkipReport
from alignkit.data.formats import Conversation, required, to_conversation
from alignkit.data.preference import detect_preference_format, to_pair
from alignkit.data.readers import DataSpec, Record, load_parsed

PLACEMENTS = ("system", "prefix")


@dataclass
class ControlConfig:
    placement: str = "system"  # system: control text opens the system turn | prefix: it opens the first user turn
    good: str = "[quality: good]"  # control text for chosen responses (and for generation)
    bad: str = "[quality: bad]"  # control text for rejected responses
    objectives: list[str] = field(default_factory=list)  # scored data: score names to use, in this order; empty: all
    decimals: int = 0  # scored data: scores are rounded to this many decimals in the control text

    def check(self) -> None:
        if self.placement not in PLACEMENTS:
            raise ValueError(f"control.placement must be one of {PLACEMENTS}, not {self.placement!r}")
        if not self.good.strip() or not self.bad.strip() or self.good.strip() == self.bad.strip():
            raise ValueError("control.good and control.bad must be different non-empty texts")
        if self.decimals < 0:
            raise ValueError(f"control.decimals must be >= 0, got {self.decimals}")


def condition(messages: list[dict], control: str, placement: str = "system") -> list[dict]:
    """The conversation with `control` added where `placement` says (a new list; input untouched)."""
    if placement not in PLACEMENTS:
        raise ValueError(f"placement must be one of {PLACEMENTS}, not {placement!r}")
    out = [dict(m) for m in messages]
    if placement == "system":
        if out and out[0]["role"] == "system":
            out[0]["content"] = f"{control}\n{out[0]['content']}" if out[0]["content"] else control
        else:
            out.insert(0, {"role": "system", "content": control})
        return out
    first_user = next(i for i, m in enumerate(out) if m["role"] == "user")
    out[first_user]["content"] = f"{control}\n{out[first_user]['content']}"
    return out


def score_control(scores: dict[str, float], objectives: list[str] | None = None, decimals: int = 0) -> str:
    """Control text for wanted (or observed) scores: `[helpfulness: 4] [verbosity: 1]`."""
    names = list(objectives) if objectives else sorted(scores)
    missing = [name for name in names if name not in scores]
    if missing:
        raise ValueError(f"no score given for {missing}")
    parts = []
    for name in names:
        value = round(float(scores[name]), decimals)
        text = f"{value:.{decimals}f}" if decimals else str(int(value))
        parts.append(f"[{name}: {text}]")
    return " ".join(parts)


def _scores(data: dict, objectives: list[str]) -> dict[str, float]:
    raw = required(data, "scores")
    if not isinstance(raw, dict) or not raw:
        raise RecordError("scores", f"expected an object of name -> number, got {raw!r}")
    for name in objectives:
        if name not in raw:
            raise RecordError(f"scores.{name}", "missing (listed in control.objectives)")
    scores = {}
    for name, value in raw.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise RecordError(f"scores.{name}", f"expected a finite number, got {value!r}")
        scores[str(name)] = float(value)
    return scores


def _scored_conversation(data: dict, cfg: ControlConfig) -> list[dict]:
    scores = _scores(data, cfg.objectives)
    # Any instruction layout works (messages, prompt/completion, ...); the scores describe its last turn.
    messages = to_conversation({k: v for k, v in data.items() if k != "scores"})
    control = score_control(scores, cfg.objectives or None, cfg.decimals)
    return condition(messages[:-1], control, cfg.placement) + messages[-1:]


def control_conversations(record: Record, cfg: ControlConfig) -> list[Conversation]:
    """Training conversations from one record: two from a pair, one from a scored response."""
    data = record.data
    place = dict(source=record.path, line=record.line, unit=record.unit)
    if data.get("scores") is not None:
        return [Conversation(_scored_conversation(data, cfg), **place)]
    kind = detect_preference_format(data)
    if kind != "pair":
        raise RecordError("", f"control training reads pair or scored records, not {kind} records")
    pair = to_pair(data)
    good = condition(pair.prompt, cfg.good, cfg.placement) + pair.chosen
    bad = condition(pair.prompt, cfg.bad, cfg.placement) + pair.rejected
    return [Conversation(good, **place), Conversation(bad, **place)]


def load_control(sources: Any, cfg: ControlConfig, *, skip_bad: bool = False) -> tuple[list[Conversation], SkipReport]:
    """Conversations (control text in the prompt, response last) from pair and scored records."""
    cfg.check()

    def parse(record: Record, spec: DataSpec) -> list[Conversation]:
        return control_conversations(record, cfg)

    return load_parsed(sources, parse, skip_bad=skip_bad)
