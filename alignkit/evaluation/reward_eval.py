"""Reward models at work: `alignkit score` (rewards for responses in a file) and `alignkit rm-eval`
(accuracy on a preference set, overall, per file and per subset, with the length bias of the scores).

`score` scores with a reward-model folder (`--model`), or with any reward source alignkit has
(`--rewards`: a YAML file of reward specs, as in an RL config's `rewards:`: a verifier, a judge, a
reward model, a Python function, or a weighted sum of them). Both write `reward` for a record with one
response and `rewards` for one with a list, so the preference loaders rank `generate --n` samples by
them. With reward specs, a response the reward could not score keeps the reward's `failure_reward` and
its reason goes in `failure` / `failures`, never silently scored.

rm-eval reads pair records (prompt / chosen / rejected, as for DPO) and LLMBar records
(`{"input", "output_1", "output_2", "label"}`, where `label` names the better output). A pair
counts as correct only when chosen scores strictly higher; ties are reported separately.
Length bias: the Pearson correlation between each response's reward and its length in
characters, and how often the higher-scored response is the longer one, beside how often the
labels themselves prefer the longer one.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Sequence

from alignkit.atomic_write import write_json_atomic, write_jsonl_atomic
from alignkit.data.errors import RecordError
from alignkit.data.formats import to_conversation
from alignkit.data.preference import PreferencePair, to_pair
from alignkit.data.readers import DataSpec, Record, load_parsed, read_records
from alignkit.rewards.interface import Reward
from alignkit.rewards.interface import Sample as RewardSample
from alignkit.rewards.spec import RewardSpec, validate_reward_specs

# What scoring writes into a record; a record scored before has these replaced, never mixed with new ones.
SCORE_FIELDS = ("reward", "rewards", "failure", "failures", "reward_components")


@dataclass
class EvalPair:
    pair: PreferencePair
    file: str
    subset: str | None = None


# ---------------------------------------------------------------- arithmetic (pure)

def pearson(xs: Sequence[float], ys: Sequence[float]) -> float | None:
    """Pearson correlation; None when it is undefined (fewer than 2 points or a constant series)."""
    n = len(xs)
    if n != len(ys):
        raise ValueError(f"pearson: {n} x values but {len(ys)} y values")
    if n < 2:
        return None
    mx, my = sum(xs) / n, sum(ys) / n
    sxy = sum((x - mx) * (y - my) for x, y in zip(xs, ys))
    sxx = sum((x - mx) ** 2 for x in xs)
    syy = sum((y - my) ** 2 for y in ys)
    if sxx == 0 or syy == 0:
        return None
    return sxy / math.sqrt(sxx * syy)


def summarize(chosen: Sequence[float], rejected: Sequence[float], chosen_len: Sequence[int],
              rejected_len: Sequence[int]) -> dict:
    """Accuracy and length-bias figures for one group of pairs (parallel lists, one entry a pair)."""
    n = len(chosen)
    if not n == len(rejected) == len(chosen_len) == len(rejected_len):
        raise ValueError("summarize: chosen, rejected and both length lists must have one entry per pair")
    if n == 0:
        raise ValueError("summarize: no pairs")
    correct = sum(c > r for c, r in zip(chosen, rejected))
    ties = sum(c == r for c, r in zip(chosen, rejected))
    unequal = [(c, r, lc, lr) for c, r, lc, lr in zip(chosen, rejected, chosen_len, rejected_len) if lc != lr]
    # Among pairs of unequal length and untied scores: does the higher score go to the longer response?
    decided = [(c, r, lc, lr) for c, r, lc, lr in unequal if c != r]
    return {
        "pairs": n,
        "accuracy": correct / n,
        "ties": ties,
        "length_correlation": pearson(list(chosen) + list(rejected), list(chosen_len) + list(rejected_len)),
        "prefers_longer": (sum((c > r) == (lc > lr) for c, r, lc, lr in decided) / len(decided)) if decided else None,
        "labels_prefer_longer": (sum(lc > lr for _, _, lc, lr in unequal) / len(unequal)) if unequal else None,
    }


@dataclass
class RMEvalResult:
    overall: dict
    per_file: dict[str, dict]
    per_subset: dict[str, dict]
    truncated: int = 0

    def to_dict(self) -> dict:
        return {"overall": self.overall, "per_file": self.per_file, "per_subset": self.per_subset,
                "truncated": self.truncated}

    def table(self) -> str:
        rows = [("overall", self.overall)] + [(f"file {k}", v) for k, v in self.per_file.items()] \
            + [(f"subset {k}", v) for k, v in self.per_subset.items()]
        width = max(len(name) for name, _ in rows)
        fmt = lambda v: "   n/a" if v is None else f"{v:6.3f}"  # noqa: E731
        lines = [f"{'':<{width}}  pairs  accuracy  ties  len_corr  prefers_longer  labels_prefer_longer"]
        for name, s in rows:
            lines.append(f"{name:<{width}}  {s['pairs']:5d}  {s['accuracy']:8.3f}  {s['ties']:4d}  "
                         f"{fmt(s['length_correlation']):>8}  {fmt(s['prefers_longer']):>14}  "
                         f"{fmt(s['labels_prefer_longer']):>20}")
        return "\n".join(lines)


def group_summaries(items: Sequence[EvalPair], chosen: Sequence[float], rejected: Sequence[float]) -> RMEvalResult:
    chosen_len = [response_chars(it.pair.chosen) for it in items]
    rejected_len = [response_chars(it.pair.rejected) for it in items]

    def groups(key) -> dict[str, dict]:
        names = sorted({key(it) for it in items if key(it) is not None})
        out = {}
        for name in names:
            idx = [i for i, it in enumerate(items) if key(it) == name]
            out[name] = summarize([chosen[i] for i in idx], [rejected[i] for i in idx],
                                  [chosen_len[i] for i in idx], [rejected_len[i] for i in idx])
        return out

    return RMEvalResult(summarize(chosen, rejected, chosen_len, rejected_len),
                        groups(lambda it: it.file), groups(lambda it: it.subset))


def response_chars(messages: list[dict]) -> int:
    return sum(len(m["content"]) for m in messages if m["role"] == "assistant")


# ---------------------------------------------------------------- reading

def to_eval_pair(data: dict) -> PreferencePair:
    """A pair record, or an LLMBar record whose `label` (1 or 2) names the better output."""
    if "output_1" in data or "output_2" in data:
        label = data.get("label")
        if isinstance(label, str) and label.strip() in ("1", "2"):
            label = int(label)
        if label not in (1, 2) or isinstance(label, bool):
            raise RecordError("label", f"expected 1 or 2 (the better output), got {label!r}")
        prompt = data.get("input")
        if prompt is None:
            raise RecordError("input", "missing")
        better, worse = (data.get("output_1"), data.get("output_2"))[::1 if label == 1 else -1]
        try:
            return to_pair({"prompt": prompt, "chosen": better, "rejected": worse})
        except RecordError as e:  # name the LLMBar field, not the internal one
            names = {"prompt": "input", "chosen": f"output_{label}", "rejected": f"output_{3 - label}"}
            raise RecordError(names.get(e.field.split(".")[0], e.field), e.reason) from None
    return to_pair(data)


def load_eval_pairs(sources: Any, *, skip_bad: bool = False) -> tuple[list[EvalPair], Any]:
    def parse(record: Record, spec: DataSpec) -> list[EvalPair]:
        pair = to_eval_pair(record.data)
        pair.source, pair.line, pair.unit = record.path, record.line, record.unit
        subset = record.data.get("subset")
        return [EvalPair(pair, spec.path, str(subset) if subset is not None else None)]

    return load_parsed(sources, parse, skip_bad=skip_bad)


# ---------------------------------------------------------------- commands

def rm_eval(model, tokenizer, sources: Any, *, batch_size: int = 8, max_length: int = 2048,
            skip_bad: bool = False) -> RMEvalResult:
    from alignkit.models.reward import conversation_ids, score_sequences

    items, _ = load_eval_pairs(sources, skip_bad=skip_bad)
    sequences, truncated = [], 0
    for it in items:
        for response in (it.pair.chosen, it.pair.rejected):
            ids, cut = conversation_ids(tokenizer, it.pair.prompt + response, max_length)
            sequences.append(ids)
            truncated += cut
    scores = score_sequences(model, sequences, batch_size=batch_size)
    result = group_summaries(items, scores[0::2], scores[1::2])
    result.truncated = truncated
    return result


def _to_score(data: dict) -> list[list[dict]]:
    """Conversations to score in one record: `response`/`responses` (as `alignkit generate` writes
    them) after the record's prompt, or a whole conversation ending with an assistant turn."""
    responses = data.get("responses") if data.get("responses") is not None else (
        [data["response"]] if data.get("response") is not None else None)
    if responses is None:
        return [to_conversation(data)]
    if not isinstance(responses, list) or not all(isinstance(r, str) for r in responses):
        raise RecordError("responses", "expected a list of strings")
    prompt_source = {k: v for k, v in data.items() if k in ("messages", "prompt", "conversations", "instruction",
                                                             "input", "system")}
    if "messages" in prompt_source:
        prompt_source.pop("prompt", None)  # generate writes both; messages is the whole prompt
    prompt = to_conversation(prompt_source, require_assistant=False)
    while prompt and prompt[-1]["role"] == "assistant":
        prompt.pop()
    return [prompt + [{"role": "assistant", "content": r}] for r in responses]


def read_scorable(in_path: str) -> list[tuple[Record, list]]:
    """Each record of `in_path` with the conversations to score in it; a record that has none stops
    here, naming file, line and field, before any model is loaded."""
    scorable = []
    for record in read_records(in_path):
        try:
            scorable.append((record, _to_score(record.data)))
        except RecordError as e:
            raise e.located(record.path, record.line, record.unit) from None
        except ValueError as e:
            raise RecordError("messages", str(e), path=record.path, line=record.line, unit=record.unit) from None
    return scorable


def score_file(model, tokenizer, in_path: str, out_path: str, *, batch_size: int = 8,
               max_length: int = 2048, scorable: list[tuple[Record, list]] | None = None) -> tuple[int, int]:
    """Write each input record with its score added: `rewards`, one per response in order, for a
    record with `responses`; `reward` otherwise. A record with `responses` gets no `reward`, since
    one number would stand for only one of its samples. Earlier scores are replaced. `scorable` is
    `read_scorable(in_path)` when the caller has read it already.
    Returns (records written, sequences cut from the left for length)."""
    from alignkit.models.reward import conversation_ids, score_sequences

    records, sequences, truncated = [], [], 0
    for record, convs in scorable if scorable is not None else read_scorable(in_path):
        try:
            encoded = [conversation_ids(tokenizer, conv, max_length) for conv in convs]
        except ValueError as e:
            raise RecordError("messages", str(e), path=record.path, line=record.line, unit=record.unit) from None
        records.append((record, len(encoded)))
        sequences += [ids for ids, _ in encoded]
        truncated += sum(cut for _, cut in encoded)
    scores = score_sequences(model, sequences, batch_size=batch_size)
    rows, offset = [], 0
    for record, count in records:
        rows.append(_scored_row(record, scores[offset:offset + count]))
        offset += count
    write_jsonl_atomic(out_path, rows)
    return len(rows), truncated


def _scored_row(record: Record, scores: list[float], extra: dict | None = None) -> dict:
    """The input record with its scores: `rewards` (one per response) for a record with `responses`, else
    `reward`, plus `extra`; the fields of an earlier scoring are dropped first."""
    row = {key: value for key, value in record.data.items() if key not in SCORE_FIELDS}
    if record.data.get("responses") is not None:
        row["rewards"] = scores
    else:
        row["reward"] = scores[0]
    row.update(extra or {})
    return row


@dataclass
class RewardsFile:
    """The YAML file `alignkit score --rewards` reads: a `rewards:` list, written as in an RL config."""
    rewards: list[RewardSpec] = field(default_factory=list)  # e.g. [{kind: format}, {kind: rm, path: runs/rm/final}]


def read_reward_specs(path: str) -> list[RewardSpec]:
    """The reward specs in `path`, checked (no model loads): a ConfigError naming the file and the key."""
    from alignkit.config import ConfigError, load_config

    try:
        specs = load_config(RewardsFile, path).rewards
        validate_reward_specs(specs)
    except ConfigError as e:
        message = str(e).removeprefix(f"{path}: ")  # errors reading the file name it already
        raise ConfigError(f"--rewards {path}: {message}") from None
    return specs


def score_with_reward(reward: Reward, scorable: list[tuple[Record, list]]) -> tuple[list[dict], int]:
    """Each record of `scorable` (as `read_scorable` returns it) with its responses scored by `reward`:
    `rewards` / `reward` as `score_file` writes them, each response's failure reason (None when scored) in
    `failures` / `failure`, and each part of the reward, unweighted, in `reward_components`. The record's
    own fields reach the reward as metadata (e.g. the demo's `format`). Returns (rows, failures)."""
    samples = [RewardSample(conv[:-1], conv[-1]["content"], record.data)
               for record, convs in scorable for conv in convs]
    result = reward.score(samples)
    if len(result.scores) != len(samples):
        raise RuntimeError(f"the reward returned {len(result.scores)} scores for {len(samples)} responses")
    parts = {name: part.scores for name, part in result.components.items()}
    rows, offset = [], 0
    for record, convs in scorable:
        span, offset = slice(offset, offset + len(convs)), offset + len(convs)
        many = record.data.get("responses") is not None
        failures, components = result.failures[span], {name: values[span] for name, values in parts.items()}
        if not many:  # one response: one value each, as for `reward`
            failures, components = failures[0], {name: values[0] for name, values in components.items()}
        extra = {"failures" if many else "failure": failures}
        if components:
            extra["reward_components"] = components
        rows.append(_scored_row(record, result.scores[span], extra))
    return rows, result.num_failures


def write_result(result: RMEvalResult, path: str) -> None:
    # allow_nan: a correlation over constant scores is NaN, and the file says so rather than failing.
    write_json_atomic(path, result.to_dict(), allow_nan=True)


def run_score(model: str, input_path: str, out_path: str, *, dtype: str = "fp32", batch_size: int = 8,
              max_length: int = 2048) -> tuple[int, int]:
    """`alignkit score`: load the reward model folder `model` and `score_file` with it.

    The input is read and checked once, before the model loads: an unreadable file or a record with
    nothing to score fails in seconds. Returns (records written, sequences cut from the left for length).
    """
    from alignkit.models.reward import load_reward_model

    scorable = read_scorable(input_path)
    reward_model, tokenizer = load_reward_model(model, dtype=dtype)
    return score_file(reward_model, tokenizer, input_path, out_path, batch_size=batch_size, max_length=max_length,
                      scorable=scorable)


def run_score_rewards(rewards_path: str, input_path: str, out_path: str, *,
                      judge_backend=None) -> tuple[int, int, int]:
    """`alignkit score --rewards`: `score_with_reward` with the reward specs in the YAML file `rewards_path`.

    The specs and the input are read and checked before any model (a reward model, a local judge) loads.
    `judge_backend` replaces a judge reward's backend. Returns (records written, responses scored,
    responses the reward could not score)."""
    from alignkit.rewards.spec import build_reward

    specs = read_reward_specs(rewards_path)
    scorable = read_scorable(input_path)
    rows, failures = score_with_reward(build_reward(specs, judge_backend=judge_backend), scorable)
    write_jsonl_atomic(out_path, rows)
    return len(rows), sum(len(convs) for _, convs in scorable), failures


def run_rm_eval(model: str, data: Any, out: str | None = None, *, dtype: str = "fp32", batch_size: int = 8,
                max_length: int = 2048, skip_bad: bool = False) -> RMEvalResult:
    """`alignkit rm-eval`: `rm_eval` of the reward model folder `model` on the pair files `data`,
    written to `out` (JSON) when given.

    The pairs are read first, as in training: a bad file or record fails in seconds, before the model loads.
    """
    from alignkit.models.reward import load_reward_model

    load_eval_pairs(data, skip_bad=skip_bad)
    reward_model, tokenizer = load_reward_model(model, dtype=dtype)
    result = rm_eval(reward_model, tokenizer, data, batch_size=batch_size, max_length=max_length, skip_bad=skip_bad)
    if out:
        write_result(result, out)
    return result
