"""Rewards from a config: a list of `RewardSpec`, each one reward with its weight and options.

    rewards:
      - {kind: format, weight: 1.0}
      - {kind: rm, path: runs/rm/final, weight: 0.5}
      - {kind: judge, judge: "openai:gpt-4o-mini@http://localhost:8000/v1", mode: pairwise, cache: judge.sqlite}

Options are flat keys of the spec; each applies to the kinds listed in `OPTIONS`, and setting one
for another kind is an error rather than silently ignored. `validate_reward_specs` checks every
spec with one-line errors naming the key (`rewards[1].path: ...`), before any model is loaded;
`build_reward` makes the combined, shaped reward.
"""
from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass
from typing import Sequence

from alignkit.config import ConfigError, require, require_choice, require_number
from alignkit.rewards.formats import CLOSING_PHRASE, FORMATS
from alignkit.rewards.interface import CombinedReward, Reward
from alignkit.rewards.judge import JUDGE_MODES
from alignkit.rewards.shaping import RewardShaping, ShapedReward
from alignkit.rewards.verifiable import REGEX_MODES, import_function

KINDS = ("rm", "ifeval", "format", "exact", "regex", "python", "judge")
COMMON = ("kind", "weight", "name", "failure_reward")
OPTIONS = {
    "rm": ("path", "dtype", "device", "batch_size", "max_length"),
    "ifeval": ("mode", "loose"),
    "format": ("format", "json_key", "ending"),
    "exact": ("reference_key", "normalize"),
    "regex": ("pattern", "mode"),
    "python": ("function",),
    "judge": ("judge", "cache", "mode", "strategy", "max_tokens", "both_orders", "allow_tie", "max_parse_retries",
              "reference_key", "batch_size"),
}
MODES = {"ifeval": ("fraction", "all"), "regex": REGEX_MODES, "judge": JUDGE_MODES}


@dataclass
class RewardSpec:
    kind: str = ""  # rm | ifeval | format | exact | regex | python | judge
    weight: float = 1.0  # multiplies this reward in the sum of all rewards
    name: str = ""  # label in logs; empty: the kind (numbered from the second of a kind)
    failure_reward: float = 0.0  # reward of a sample that cannot be scored (e.g. a judge reply without a verdict)
    mode: str = ""  # ifeval: fraction|all; regex: search|match|fullmatch; judge: grade|pairwise (first is default)
    path: str = ""  # rm: reward-model folder saved by `alignkit rm`
    dtype: str = "fp32"  # rm: fp32 | bf16
    device: str = ""  # rm: cuda, cpu, ...; empty: cuda when there is one
    batch_size: int = 16  # rm: sequences per forward; judge: prompts per backend call
    max_length: int = 2048  # rm: tokens scored per sequence, cut from the left
    loose: bool = False  # ifeval: also accept IFEval's relaxed variants of the response
    format: str = ""  # format: json | upper | ending; empty: each sample's metadata `format`
    json_key: str = "answer"  # format json: the one key the object must have
    ending: str = CLOSING_PHRASE  # format ending: the closing phrase
    reference_key: str = "answer"  # exact, judge pairwise: metadata key of the reference answer
    normalize: bool = True  # exact: ignore case and whitespace differences
    pattern: str = ""  # regex: the regular expression
    function: str = ""  # python: "package.module:function", called as fn(prompt, completion, metadata)
    judge: str = ""  # judge: backend spec (embedded, a model folder, openai:<model>@<url>, vllm:<model>)
    cache: str = ""  # judge: SQLite cache file; empty: no cache
    strategy: str = "plain"  # judge pairwise: strategy (plain, or parts such as rules+cot)
    max_tokens: int = 512  # judge: reply length limit
    both_orders: bool = True  # judge pairwise: judge in both presentation orders and average
    allow_tie: bool = False  # judge pairwise: offer the judge "tie" (scored 0.5)
    max_parse_retries: int = 0  # judge: re-asks after a reply that does not parse

    def validate(self, where: str = "") -> None:
        require_choice(where, "kind", self.kind, KINDS)
        defaults = RewardSpec()
        for f in dataclasses.fields(self):
            if f.name not in COMMON and f.name not in OPTIONS[self.kind] \
                    and getattr(self, f.name) != getattr(defaults, f.name):
                raise ConfigError(f"{_key(where, f.name)}: does not apply to kind {self.kind!r} "
                                  f"(its options: {', '.join(OPTIONS[self.kind])})")
        require_number(where, "weight", self.weight, low=-math.inf)
        require_number(where, "failure_reward", self.failure_reward, low=-math.inf)
        require(bool(re.fullmatch(r"[\w.-]*", self.name)), where, "name", "letters, digits, '_', '.' or '-'",
                self.name)
        if self.kind in MODES and self.mode:
            require_choice(where, "mode", self.mode, MODES[self.kind])
        getattr(self, f"_validate_{self.kind}")(where)

    def _validate_rm(self, where: str) -> None:
        from alignkit.models.reward import is_reward_checkpoint

        require(bool(self.path), where, "path", "a reward-model folder saved by `alignkit rm`", self.path)
        require(is_reward_checkpoint(self.path), where, "path",
                "a reward-model folder saved by `alignkit rm` (config.json with a one-output "
                "*ForSequenceClassification model)", self.path)
        require_choice(where, "dtype", self.dtype, ("fp32", "bf16"))
        require_number(where, "batch_size", self.batch_size, low=1, whole=True)
        require_number(where, "max_length", self.max_length, low=1, whole=True)

    def _validate_ifeval(self, where: str) -> None:
        pass

    def _validate_format(self, where: str) -> None:
        if self.format:
            require_choice(where, "format", self.format, FORMATS)
        require(bool(self.json_key), where, "json_key", "a non-empty key", self.json_key)
        require(bool(self.ending.strip()), where, "ending", "a non-empty phrase", self.ending)

    def _validate_exact(self, where: str) -> None:
        require(bool(self.reference_key), where, "reference_key", "a metadata key", self.reference_key)

    def _validate_regex(self, where: str) -> None:
        require(bool(self.pattern), where, "pattern", "a regular expression", self.pattern)
        try:
            re.compile(self.pattern)
        except re.error as error:
            raise ConfigError(f"{_key(where, 'pattern')}: not a valid regular expression ({error})") from None

    def _validate_python(self, where: str) -> None:
        try:
            import_function(self.function)
        except ValueError as error:
            raise ConfigError(f"{_key(where, 'function')}: {error}") from None

    def _validate_judge(self, where: str) -> None:
        from alignkit.generation.specs import parse_backend_spec
        from alignkit.judges import Strategy

        try:
            parse_backend_spec(self.judge)
        except ValueError as error:
            raise ConfigError(f"{_key(where, 'judge')}: {error}") from None
        try:
            Strategy.parse(self.strategy)
        except ValueError as error:
            raise ConfigError(f"{_key(where, 'strategy')}: {error}") from None
        require_number(where, "max_tokens", self.max_tokens, low=1, whole=True)
        require_number(where, "max_parse_retries", self.max_parse_retries, low=0, whole=True)
        require_number(where, "batch_size", self.batch_size, low=1, whole=True)
        if self.mode == "pairwise":
            require(bool(self.reference_key), where, "reference_key", "a metadata key", self.reference_key)


def _key(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key


def reward_names(specs: Sequence[RewardSpec]) -> list[str]:
    """Each spec's log name: its `name`, or its kind, numbered from the second of the same kind."""
    names, seen = [], {}
    for spec in specs:
        seen[spec.kind] = seen.get(spec.kind, 0) + 1
        names.append(spec.name or (spec.kind if seen[spec.kind] == 1 else f"{spec.kind}_{seen[spec.kind]}"))
    return names


def validate_reward_specs(specs: Sequence[RewardSpec], where: str = "rewards") -> None:
    """Check every spec (`rewards[i].key: ...` errors), that there is one, and that names are distinct."""
    if not specs:
        raise ConfigError(f"{where}: must list at least one reward, e.g. [{{kind: format, weight: 1.0}}]")
    for i, spec in enumerate(specs):
        spec.validate(f"{where}[{i}]")
    names = reward_names(specs)
    for i, name in enumerate(names):
        if name in names[:i]:
            raise ConfigError(f"{where}[{i}].name: {name!r} is already the name of {where}[{names.index(name)}]")


def build_one(spec: RewardSpec, name: str, *, judge_backend=None) -> Reward:
    """The reward one spec describes; `judge_backend` replaces the spec's judge backend (tests, sharing)."""
    from alignkit.rewards.judge import JudgeReward
    from alignkit.rewards.reward_model import RewardModelReward
    from alignkit.rewards.verifiable import ExactMatchReward, FormatReward, FunctionReward, IFEvalReward, RegexReward

    mode = spec.mode or (MODES[spec.kind][0] if spec.kind in MODES else "")
    common = {"failure_reward": spec.failure_reward}
    if spec.kind == "rm":
        return RewardModelReward(name, path=spec.path, dtype=spec.dtype, device=spec.device,
                                 batch_size=spec.batch_size, max_length=spec.max_length, **common)
    if spec.kind == "ifeval":
        return IFEvalReward(name, mode=mode, loose=spec.loose, **common)
    if spec.kind == "format":
        return FormatReward(name, fmt=spec.format, json_key=spec.json_key, ending=spec.ending, **common)
    if spec.kind == "exact":
        return ExactMatchReward(name, reference_key=spec.reference_key, normalize=spec.normalize, **common)
    if spec.kind == "regex":
        return RegexReward(name, pattern=spec.pattern, mode=mode, **common)
    if spec.kind == "python":
        return FunctionReward(name, function=spec.function, **common)
    if spec.kind == "judge":
        return JudgeReward(name, backend=judge_backend, judge="" if judge_backend else spec.judge,
                                 cache=spec.cache, mode=mode, strategy=spec.strategy, max_tokens=spec.max_tokens,
                                 both_orders=spec.both_orders, allow_tie=spec.allow_tie,
                                 max_parse_retries=spec.max_parse_retries, reference_key=spec.reference_key,
                                 batch_size=spec.batch_size, **common)
    raise ValueError(f"unknown reward kind {spec.kind!r}; use one of {', '.join(KINDS)}")


def build_reward(specs: Sequence[RewardSpec], shaping: RewardShaping | None = None, *,
                 judge_backend=None) -> CombinedReward | ShapedReward:
    """The weighted sum of the specs' rewards, with `shaping` applied when it does anything."""
    validate_reward_specs(specs)
    combined = CombinedReward([(build_one(spec, name, judge_backend=judge_backend), spec.weight)
                               for spec, name in zip(specs, reward_names(specs))])
    return ShapedReward(combined, shaping) if shaping is not None and shaping.active else combined
