"""Preference data in TRL's layout: pairs, rankings and unpaired feedback.

Record layouts (`format="auto"` picks by key: responses -> ranking, chosen/rejected -> pair,
label -> feedback):
- pair:     {"prompt"?, "chosen", "rejected", "margin"? | "score_chosen"? + "score_rejected"?}
            prompt / chosen / rejected are strings or message lists. With no prompt, chosen and
            rejected are full conversations and their shared prefix is the prompt (TRL's implicit
            prompt). With a prompt, chosen / rejected may still repeat it as full conversations
            (as ultrafeedback_binarized does); the repeated prefix is removed.
- ranking:  {"prompt", "responses": [...], "ranked"?} with responses either best first (strings or
            message lists), or each {"text"|"content"|"messages", "score"}, or beside a list
            "rewards" of one score per response (what `alignkit score` adds to `generate --n`
            output). Scores, when given, always decide the order. Unscored responses are read as
            best first only with `ranked: true`; without scores or that statement the record is
            an error (`generate --n` writes `ranked: false`: its samples must be scored first).
            A record with `messages` (as generate writes) takes them as the whole prompt; its
            `prompt` field is only the last user turn.
- feedback: {"prompt", "completion", "label"} with label true/false, 0/1 or "good"/"bad" (KTO).

Everything is normalised to chat messages: a string prompt becomes one user turn, a string
response one assistant turn.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from alignkit.data.errors import DataError, NothingToKeep, RecordError, SkipReport
from alignkit.data.formats import (Turn, as_list, check_turns, parse_messages, required, require_str,
                                   text_turn, turns_to_messages)
from alignkit.data.readers import DataSpec, Record, load_parsed

PAIR_RULES = ("all_pairs", "best_vs_rest", "best_vs_worst", "margin")
PREFERENCE_FORMATS = ("auto", "pair", "ranking", "feedback")
_TRUE_LABELS = {"good", "true", "1"}
_FALSE_LABELS = {"bad", "false", "0"}


@dataclass
class PreferencePair:
    prompt: list[dict]
    chosen: list[dict]
    rejected: list[dict]
    source: str = ""
    line: int = 0
    margin: float | None = None  # how much better chosen is, when the data says
    unit: str = "line"


@dataclass
class Ranking:
    prompt: list[dict]
    responses: list[list[dict]]
    scores: list[float] | None = None  # None: responses are given best first
    source: str = ""
    line: int = 0
    unit: str = "line"

    def best_first(self) -> list[int]:
        """Response indices from best to worst; equal scores keep their input order."""
        if self.scores is None:
            return list(range(len(self.responses)))
        return sorted(range(len(self.responses)), key=lambda index: -self.scores[index])


@dataclass
class Feedback:
    prompt: list[dict]
    completion: list[dict]
    desirable: bool
    source: str = ""
    line: int = 0
    unit: str = "line"


def detect_preference_format(data: dict) -> str:
    # As in formats.detect_format: non-null keys first, since table rows carry every column.
    for present in (lambda key: data.get(key) is not None, lambda key: key in data):
        if present("responses"):
            return "ranking"
        if present("chosen") or present("rejected"):
            return "pair"
        if present("label"):
            return "feedback"
    raise RecordError("", "cannot tell the preference format: expected 'responses', 'chosen'/'rejected' "
                          f"or 'label'; found keys {sorted(data)}")


# ---- pairs ----

def to_pair(data: dict) -> PreferencePair:
    """Parse one pair record; raises an unplaced `RecordError` naming the bad field."""
    chosen = _response_turns(required(data, "chosen"), "chosen")
    rejected = _response_turns(required(data, "rejected"), "rejected")
    if data.get("prompt") is not None:
        prompt = _prompt_turns(data["prompt"], "prompt")
        chosen = _drop_repeated_prompt(chosen, prompt, "chosen")
        rejected = _drop_repeated_prompt(rejected, prompt, "rejected")
    else:
        prompt, chosen, rejected = _split_implicit_prompt(data, chosen, rejected)
    _check_prompt(prompt)
    _check_response(prompt, chosen, "chosen")
    _check_response(prompt, rejected, "rejected")
    if _same(chosen, rejected):
        raise RecordError("rejected", "identical to chosen")
    return PreferencePair(turns_to_messages(prompt), turns_to_messages(chosen), turns_to_messages(rejected),
                          margin=_pair_margin(data))


def _response_turns(value: Any, field: str) -> list[Turn]:
    if isinstance(value, str):
        return [text_turn(value, field, "assistant")]
    return parse_messages(value, field)


def _prompt_turns(value: Any, field: str) -> list[Turn]:
    if isinstance(value, str):
        return [text_turn(value, field, "user")]
    return parse_messages(value, field)


def _drop_repeated_prompt(response: list[Turn], prompt: list[Turn], field: str) -> list[Turn]:
    if not response or response[0].role == "assistant":
        return response  # a completion only
    if not _same(response[:len(prompt)], prompt):
        raise RecordError(field, "holds a full conversation that does not start with the prompt")
    return response[len(prompt):]


def _split_implicit_prompt(data: dict, chosen: list[Turn],
                           rejected: list[Turn]) -> tuple[list[Turn], list[Turn], list[Turn]]:
    if isinstance(data["chosen"], str) or isinstance(data["rejected"], str):
        raise RecordError("prompt", "missing; without it chosen and rejected must be message lists "
                                    "sharing the prompt")
    if _same(chosen, rejected):
        raise RecordError("rejected", "identical to chosen")
    shared = 0
    while shared < min(len(chosen), len(rejected)) and _same(chosen[shared:shared + 1], rejected[shared:shared + 1]):
        shared += 1
    # The prompt must stop right before an assistant turn in both, so back off to one.
    while shared > 0 and not (shared < len(chosen) and shared < len(rejected)
                              and chosen[shared].role == "assistant" and rejected[shared].role == "assistant"):
        shared -= 1
    if shared == 0:
        raise RecordError("chosen", "chosen and rejected share no prompt (they must start with the same "
                                    "turns, followed by different assistant turns)")
    return chosen[:shared], chosen[shared:], rejected[shared:]


def _check_prompt(prompt: list[Turn]) -> None:
    check_turns(prompt, "prompt", require_assistant=False)
    if prompt[-1].role != "user":
        raise RecordError(prompt[-1].role_field, f"the prompt must end with a user turn, not {prompt[-1].role}")


def _check_response(prompt: list[Turn], response: list[Turn], field: str) -> None:
    if not response:
        raise RecordError(field, "empty (nothing after the prompt)")
    if response[0].role != "assistant":
        raise RecordError(response[0].role_field, f"a response must start with an assistant turn, not {response[0].role}")
    check_turns(prompt + response, field, require_assistant=True)


def _pair_margin(data: dict) -> float | None:
    if data.get("margin") is not None:
        return _number(data["margin"], "margin")
    if data.get("score_chosen") is None and data.get("score_rejected") is None:
        return None
    chosen = _number(required(data, "score_chosen"), "score_chosen")
    rejected = _number(required(data, "score_rejected"), "score_rejected")
    if chosen <= rejected:
        raise RecordError("score_chosen", f"{chosen} is not higher than score_rejected {rejected}")
    return chosen - rejected


# ---- rankings ----

def to_ranking(data: dict) -> Ranking:
    """Parse one ranking record: responses best first, each with a score, or beside `rewards`."""
    prompt = _ranking_prompt(data)
    _check_prompt(prompt)
    items = as_list(required(data, "responses"), "responses")
    if len(items) < 2:
        raise RecordError("responses", f"a ranking needs at least 2 responses, got {len(items)}")
    responses, scores = [], []
    for index, item in enumerate(items):
        field = f"responses[{index}]"
        response, score = _ranked_response(item, field)
        _check_response(prompt, response, field)
        responses.append(response)
        scores.append(score)
    final_scores = _ranking_scores(data, scores)
    _check_duplicates(responses, final_scores)
    return Ranking(turns_to_messages(prompt), [turns_to_messages(r) for r in responses], final_scores)


def _ranking_prompt(data: dict) -> list[Turn]:
    # generate writes the whole prompt as `messages` and only its last user turn as `prompt`.
    if data.get("messages") is not None:
        return _prompt_turns(data["messages"], "messages")
    return _prompt_turns(required(data, "prompt"), "prompt")


def _ranking_scores(data: dict, item_scores: list[float | None]) -> list[float] | None:
    """The scores that order the responses, or None when they are given best first.

    Responses without scores are read as ranked only when the record says `ranked: true`: taking
    samples for a ranking would train on pairs chosen by sampling order.
    """
    scored = [score is not None for score in item_scores]
    if any(scored) and not all(scored):
        missing = scored.index(False)
        raise RecordError(f"responses[{missing}].score", "missing (other responses have scores)")
    rewards = _rewards(data, len(item_scores))
    if rewards is not None and any(scored):
        raise RecordError("rewards", "given beside a score in each response; give one or the other")
    scores = rewards if rewards is not None else (item_scores if any(scored) else None)
    ranked = _ranked(data)
    if scores is not None:
        if ranked is True:
            raise RecordError("ranked", "true, but the responses also have scores, which decide the order; "
                                        "give one or the other")
        return scores
    if ranked is not True:
        # Sampling order is no ranking: guessing would train on pairs picked by chance.
        what = "unranked samples (ranked: false)" if ranked is False else "no scores and no `ranked: true`"
        raise RecordError("responses", f"{what}; add `rewards` with `alignkit score`, give each response a "
                                       "score, or set ranked: true if the responses are best first")
    return None


def _rewards(data: dict, count: int) -> list[float] | None:
    if data.get("rewards") is None:
        return None
    try:
        values = as_list(data["rewards"], "rewards")
    except RecordError:
        raise RecordError("rewards", "expected a list of numbers, one per response") from None
    if len(values) != count:
        raise RecordError("rewards", f"{len(values)} rewards for {count} responses")
    return [_number(value, f"rewards[{index}]") for index, value in enumerate(values)]


def _ranked(data: dict) -> bool | None:
    value = data.get("ranked")
    if value is None or isinstance(value, bool):
        return value
    # CSV cells arrive as text.
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    raise RecordError("ranked", f"expected true or false, got {value!r}")


def _ranked_response(item: Any, field: str) -> tuple[list[Turn], float | None]:
    if not isinstance(item, dict):
        return _response_turns(item, field), None
    keys = [key for key in ("text", "content", "messages") if item.get(key) is not None]
    if len(keys) != 1:
        raise RecordError(field, f"give exactly one of text, content or messages; got {keys or 'none'}")
    key = keys[0]
    value = item[key]
    if key == "messages":
        turns = parse_messages(value, f"{field}.messages")
    else:
        turns = [text_turn(require_str(value, f"{field}.{key}"), f"{field}.{key}", "assistant")]
    score = _number(item["score"], f"{field}.score") if item.get("score") is not None else None
    return turns, score


def _check_duplicates(responses: list[list[Turn]], scores: list[float] | None) -> None:
    # The same text twice with the same score is a harmless tie; ranked differently it contradicts itself.
    for later in range(len(responses)):
        for earlier in range(later):
            if _same(responses[earlier], responses[later]) and (scores is None or scores[earlier] != scores[later]):
                raise RecordError(f"responses[{later}]", f"identical to responses[{earlier}] but ranked differently")


def ranking_to_pairs(ranking: Ranking, rule: str, *, threshold: float = 0.0) -> list[PreferencePair]:
    """Turn a ranking into (better, worse) pairs. Equal scores never make a pair.

    - all_pairs:     every response with every lower-scored one.
    - best_vs_rest:  the top-scored response(s) with every lower-scored one.
    - best_vs_worst: the top-scored response(s) with the bottom-scored one(s).
    - margin:        every pair whose score difference is above `threshold` (needs scores).
    Responses given best first without scores count as strictly ordered. Pairs come out in
    best-first order of the better response, then of the worse one.
    """
    _check_rule(rule, threshold)
    if rule == "margin" and ranking.scores is None:
        raise RecordError("responses", "the margin rule needs scores, but the responses are only ordered")
    count = len(ranking.responses)
    # Ordered responses get stand-in scores count-1 ... 0 for comparing; they are not reported as margins.
    scores = ranking.scores if ranking.scores is not None else [float(count - 1 - i) for i in range(count)]
    order = ranking.best_first()
    top, bottom = scores[order[0]], scores[order[-1]]
    pairs = []
    for better in order:
        for worse in order:
            difference = scores[better] - scores[worse]
            if difference <= 0:
                continue
            keep = (rule == "all_pairs"
                    or rule == "best_vs_rest" and scores[better] == top
                    or rule == "best_vs_worst" and scores[better] == top and scores[worse] == bottom
                    or rule == "margin" and difference > threshold)
            if keep:
                margin = difference if ranking.scores is not None else None
                pairs.append(PreferencePair(ranking.prompt, ranking.responses[better], ranking.responses[worse],
                                            ranking.source, ranking.line, margin, ranking.unit))
    return pairs


def _check_rule(rule: str, threshold: float) -> None:
    if rule not in PAIR_RULES:
        raise ValueError(f"unknown pair rule {rule!r}; expected one of {PAIR_RULES}")
    if not math.isfinite(threshold) or threshold < 0:
        raise ValueError(f"threshold must be a finite number >= 0, got {threshold}")
    if threshold and rule != "margin":
        raise ValueError(f"threshold only applies to rule='margin', not {rule!r}")


# ---- unpaired feedback ----

def to_feedback(data: dict) -> Feedback:
    prompt = _prompt_turns(required(data, "prompt"), "prompt")
    _check_prompt(prompt)
    completion = _response_turns(required(data, "completion"), "completion")
    _check_response(prompt, completion, "completion")
    return Feedback(turns_to_messages(prompt), turns_to_messages(completion), _label(required(data, "label")))


def _label(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in _TRUE_LABELS | _FALSE_LABELS:
        return value.strip().lower() in _TRUE_LABELS
    raise RecordError("label", f'expected true/false, 0/1 or "good"/"bad", got {value!r}')


# ---- loaders ----

def load_pairs(sources: Any, *, rule: str = "all_pairs", threshold: float = 0.0, skip_bad: bool = False,
               fmt: str = "auto", split: str | None = None) -> tuple[list[PreferencePair], SkipReport]:
    """Pairs from pair records, and from ranking records through `rule`.

    A ranking that yields no pair (all scores tied, or no difference above the threshold) is
    counted as skipped in the report, never raised.
    """
    _check_rule(rule, threshold)

    def parse(record: Record, spec: DataSpec) -> list[PreferencePair]:
        kind = _kind(record.data, spec, ("pair", "ranking"))
        if kind == "pair":
            pair = to_pair(record.data)
            pair.source, pair.line, pair.unit = record.path, record.line, record.unit
            return [pair]
        ranking = _placed_ranking(record)
        pairs = ranking_to_pairs(ranking, rule, threshold=threshold)
        if not pairs:
            raise NothingToKeep("responses", f"no pair under rule {rule!r}"
                                + (f" with threshold {threshold}" if rule == "margin" else "") + " (scores tie)")
        return pairs

    return load_parsed(sources, parse, skip_bad=skip_bad, fmt=fmt, split=split)


def load_rankings(sources: Any, *, skip_bad: bool = False, fmt: str = "auto",
                  split: str | None = None) -> tuple[list[Ranking], SkipReport]:
    """Rankings kept whole for listwise losses; a pair record becomes a ranking [chosen, rejected]."""
    def parse(record: Record, spec: DataSpec) -> list[Ranking]:
        if _kind(record.data, spec, ("pair", "ranking")) == "ranking":
            return [_placed_ranking(record)]
        pair = to_pair(record.data)
        return [Ranking(pair.prompt, [pair.chosen, pair.rejected], None, record.path, record.line, record.unit)]

    return load_parsed(sources, parse, skip_bad=skip_bad, fmt=fmt, split=split)


def load_feedback(sources: Any, *, skip_bad: bool = False, fmt: str = "auto",
                  split: str | None = None) -> tuple[list[Feedback], SkipReport]:
    """Unpaired feedback for KTO; a pair record gives a desirable and an undesirable example."""
    def parse(record: Record, spec: DataSpec) -> list[Feedback]:
        where = (record.path, record.line, record.unit)
        if _kind(record.data, spec, ("pair", "feedback")) == "feedback":
            item = to_feedback(record.data)
            item.source, item.line, item.unit = where
            return [item]
        pair = to_pair(record.data)
        return [Feedback(pair.prompt, pair.chosen, True, *where), Feedback(pair.prompt, pair.rejected, False, *where)]

    return load_parsed(sources, parse, skip_bad=skip_bad, fmt=fmt, split=split)


def _kind(data: dict, spec: DataSpec, accepted: tuple[str, ...]) -> str:
    if spec.format not in PREFERENCE_FORMATS:
        raise DataError(f"{spec.path}: unknown preference format {spec.format!r}; expected one of {PREFERENCE_FORMATS}")
    kind = detect_preference_format(data) if spec.format == "auto" else spec.format
    if kind not in accepted:
        raise RecordError("", f"a {kind} record cannot be used here; expected {' or '.join(accepted)} records")
    return kind


def _placed_ranking(record: Record) -> Ranking:
    ranking = to_ranking(record.data)
    ranking.source, ranking.line, ranking.unit = record.path, record.line, record.unit
    return ranking


def _same(left: list[Turn], right: list[Turn]) -> bool:
    return [(t.role, t.content) for t in left] == [(t.role, t.content) for t in right]


def _number(value: Any, field: str) -> float:
    # CSV cells arrive as text, so numeric strings are accepted.
    number = None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        number = float(value)
    elif isinstance(value, str):
        try:
            number = float(value)
        except ValueError:
            pass
    if number is None or not math.isfinite(number):
        raise RecordError(field, f"expected a finite number, got {value!r}")
    return number
