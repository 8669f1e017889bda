"""Pairwise LLM judges: composable strategies, both presentation orders, strict verdicts.

A strategy is "plain" or a "+"-joined set of parts (any order, e.g. "rules+metrics+reference"):

* rules      the prompt states the decision rules (instruction following first, nothing more or less
             than asked, order and length do not matter);
* cot        the judge reasons step by step, then gives the verdict;
* metrics    one extra call first: the judge writes up to three instruction-specific questions, which
             the verdict prompt then shows;
* reference  one extra call first: the judge answers the instruction itself; the verdict prompt shows
             that answer as a reference;
* swap       the judge sees both orders (with a short rationale); when they disagree, a final call that
             sees both rationales decides. The final call is made once per reported order, showing the
             outputs in that order, so its own position bias still shows up in the per-order results.
             If either order failed to parse there is nothing to reconcile, and the pair is a failure.

Metrics and reference are generated once per instruction and shared by both orders.

Principles (`JudgeConfig.principles`, e.g. an AI-feedback labeller's written rules) appear in every
verdict prompt, the swap strategy's deciding one included, as numbered rules (see `prompts.py`); the
metrics and reference prompts, which ask for no decision, do not show them.

A verdict line the judge merely copied from one of the outputs (which may end with its own
"Verdict: A") is not read as the judge's verdict; see `verdicts.py`.

Every pair is judged in both orders by default ("ab": the item's first output shown as A; "ba": shown
as B), and results keep each order's verdict in terms of the item's outputs: "a", "b", "tie" (only when
`allow_tie`) or None for a failure. Calls are batched per stage so a batching backend stays busy.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Callable, Sequence

from alignkit.generation.backend import Backend, Completion, Message, SamplingParams
from alignkit.judges.calls import Asked, CallLog, ask_parsed, completion_failure
from alignkit.judges.prompts import metrics_prompt, pairwise_prompt, reference_prompt, swap_decision_prompt
from alignkit.judges.verdicts import (ParsedVerdict, compile_verdict_pattern, parse_verdict, parse_verdict_pattern,
                                      verdict_from_logprobs)

STRATEGY_PARTS = ("rules", "cot", "metrics", "reference", "swap")
ORDERS = ("ab", "ba")
# Position label the judge saw -> the item output it names, for each order.
_SHOWN = {"ab": {"A": "a", "B": "b", "tie": "tie"}, "ba": {"A": "b", "B": "a", "tie": "tie"}}


@dataclass(frozen=True)
class Strategy:
    rules: bool = False
    cot: bool = False
    metrics: bool = False
    reference: bool = False
    swap: bool = False

    @classmethod
    def parse(cls, name: str) -> "Strategy":
        parts = [part.strip().lower() for part in name.split("+")]
        if parts == ["plain"]:
            return cls()
        unknown = [part for part in parts if part not in STRATEGY_PARTS]
        if unknown:
            raise ValueError(f"unknown judge strategy part(s) {unknown} in {name!r}; use 'plain' or a "
                             f"'+'-joined combination of {list(STRATEGY_PARTS)}")
        if len(set(parts)) != len(parts):
            raise ValueError(f"judge strategy {name!r} names a part twice")
        return cls(**{part: True for part in parts})

    @property
    def name(self) -> str:
        """Canonical spelling: parts in STRATEGY_PARTS order, or "plain"."""
        return "+".join(part for part in STRATEGY_PARTS if getattr(self, part)) or "plain"


@dataclass(frozen=True)
class JudgeConfig:
    strategy: str = "plain"
    params: SamplingParams = SamplingParams(max_tokens=512)  # verdict calls; cot needs the room
    aux_params: SamplingParams | None = None  # metrics/reference generation; None means `params`
    both_orders: bool = True
    allow_tie: bool = False  # the prompt offers "Verdict: tie" and the parser accepts it
    max_parse_retries: int = 0  # re-ask after a failure, each time with a different seed
    use_logprobs: bool = False  # read the verdict from top log-probs (needs params.logprobs >= 2)
    batch_size: int = 64  # conversations per backend call; smaller means a cache saves progress sooner
    principles: tuple[str, ...] = ()  # rules to judge by, shown numbered in every verdict prompt (prompts.py)
    # A judge that answers in its own format ("Output (a) is better"): a regex whose one group is the answer.
    # Replies are read by it instead of the "Verdict:" line; failures are still failures.
    verdict_pattern: str | None = None

    def __post_init__(self) -> None:
        strategy = Strategy.parse(self.strategy)
        if isinstance(self.principles, str):
            raise ValueError("JudgeConfig.principles must be a sequence of strings, not one string")
        object.__setattr__(self, "principles", tuple(self.principles))  # frozen: hashable, and a list is welcome
        for index, principle in enumerate(self.principles):
            if not isinstance(principle, str) or not principle.strip():
                raise ValueError(f"JudgeConfig.principles[{index}] must be a non-empty string, got {principle!r}")
        for name, params in (("params", self.params), ("aux_params", self.aux_params)):
            if params is not None and params.n != 1:
                raise ValueError(f"JudgeConfig.{name}.n must be 1 (one judgment per call), got {params.n}")
        if self.verdict_pattern is not None:
            compile_verdict_pattern(self.verdict_pattern)
            if self.use_logprobs:
                raise ValueError("verdict_pattern reads reply text; it cannot be combined with use_logprobs")
        if self.max_parse_retries < 0 or self.batch_size < 1:
            raise ValueError("max_parse_retries must be >= 0 and batch_size >= 1")
        if self.use_logprobs:
            if strategy.cot or strategy.swap:
                raise ValueError("use_logprobs needs replies that are the verdict alone; "
                                 f"strategy {self.strategy!r} asks for reasoning (drop cot/swap)")
            if (self.params.logprobs or 0) < 2:
                raise ValueError("use_logprobs needs params.logprobs >= 2 so A and B can both be seen")

    @property
    def orders(self) -> tuple[str, ...]:
        return ORDERS if self.both_orders else ORDERS[:1]


@dataclass(frozen=True)
class PairItem:
    instruction: str
    output_a: str
    output_b: str


@dataclass
class OrderVerdict:
    order: str  # "ab" or "ba"
    verdict: str | None  # "a" | "b" | "tie" in terms of the item's outputs; None = failure
    failure: str | None = None
    initial_verdict: str | None = None  # swap: this order's verdict before the deciding call
    prob_a: float | None = None  # use_logprobs: probability that output a is better
    judge: CallLog | None = None
    decision: CallLog | None = None  # swap: the deciding call, when the orders disagreed


@dataclass
class PairJudgment:
    index: int
    strategy: str
    orders: dict[str, OrderVerdict]
    metrics: CallLog | None = None
    reference: CallLog | None = None

    def verdicts(self) -> dict[str, str | None]:
        """Order -> "a" | "b" | "tie" | None."""
        return {order: result.verdict for order, result in self.orders.items()}

    def to_dict(self, include_calls: bool = True) -> dict:
        data = asdict(self)
        if not include_calls:
            data.pop("metrics")
            data.pop("reference")
            for result in data["orders"].values():
                result.pop("judge")
                result.pop("decision")
        return data


@dataclass(frozen=True)
class _Generated:
    text: str | None
    failure: str | None = None


def _parse_generated(completion: Completion) -> _Generated:
    failure = completion_failure(completion)
    if failure is None and not completion.text.strip():
        failure = "empty reply"
    return _Generated(None if failure else completion.text.strip(), failure)


def _verdict_parser(config: JudgeConfig, shown: Sequence[str] = ()) -> Callable[[Completion], ParsedVerdict]:
    """`shown`: the outputs in the prompt; a verdict line copied from them does not count."""
    def parse(completion: Completion) -> ParsedVerdict:
        failure = completion_failure(completion)
        if failure is not None:
            return ParsedVerdict(None, failure)
        if config.use_logprobs:
            return verdict_from_logprobs(completion.top_logprobs, config.allow_tie)
        if config.verdict_pattern is not None:
            result = parse_verdict_pattern(completion.text, config.verdict_pattern, config.allow_tie, quoted=shown)
        else:
            result = parse_verdict(completion.text, config.allow_tie, quoted=shown)
        if result.failure and completion.finish_reason == "length":
            result = replace(result, failure=result.failure + " (reply cut off at max_tokens)")
        return result
    return parse


def _as_items(items: Sequence[PairItem | tuple[str, str, str]]) -> list[PairItem]:
    checked = []
    for index, item in enumerate(items):
        if not isinstance(item, PairItem):
            if not isinstance(item, (tuple, list)) or len(item) != 3:
                raise TypeError(f"item {index}: expected PairItem or (instruction, output_a, output_b), "
                                f"got {type(item).__name__}")
            item = PairItem(*item)
        for name in ("instruction", "output_a", "output_b"):
            if not isinstance(getattr(item, name), str):
                raise TypeError(f"item {index}: field {name!r} must be a string, "
                                f"got {type(getattr(item, name)).__name__}")
        if not item.instruction.strip():
            raise ValueError(f"item {index}: field 'instruction' is empty")
        checked.append(item)
    return checked


def _generate_aux(backend: Backend, items: list[PairItem], make_prompt: Callable[[str], list[Message]],
                  config: JudgeConfig) -> list[Asked[_Generated]]:
    params = config.aux_params or replace(config.params, logprobs=None)
    return ask_parsed(backend, [make_prompt(item.instruction) for item in items], params, _parse_generated,
                      config.max_parse_retries, config.batch_size)


def _shown(item: PairItem, order: str) -> tuple[str, str]:
    return (item.output_a, item.output_b) if order == "ab" else (item.output_b, item.output_a)


def _to_order_verdict(order: str, asked: Asked[ParsedVerdict]) -> OrderVerdict:
    parsed = asked.parsed
    verdict = _SHOWN[order][parsed.label] if parsed.label else None
    prob_a = parsed.prob_a if order == "ab" else parsed.prob_b
    return OrderVerdict(order, verdict, parsed.failure, initial_verdict=verdict, prob_a=prob_a, judge=asked.log)


def judge_pairs(backend: Backend, items: Sequence[PairItem | tuple[str, str, str]],
                config: JudgeConfig = JudgeConfig()) -> list[PairJudgment]:
    """Judge every (instruction, output_a, output_b) item; one `PairJudgment` per item, in order.

    `judgment.verdicts()` gives {"ab": v, "ba": v} with v in {"a", "b", "tie", None}; None is a
    failure (unparseable reply or backend error) and `orders[order].failure` says why.
    """
    strategy = Strategy.parse(config.strategy)
    pairs = _as_items(items)
    metrics = _generate_aux(backend, pairs, metrics_prompt, config) if strategy.metrics else None
    references = (_generate_aux(backend, pairs, reference_prompt, config)
                  if strategy.reference else None)

    # Swap needs both orders judged even when only one order is reported.
    judged_orders = ORDERS if strategy.swap else config.orders
    explain = "steps" if strategy.cot else "brief" if strategy.swap else "none"
    jobs, prompts = [], []
    aux_failure: dict[int, str] = {}
    for index, item in enumerate(pairs):
        for label, generated in (("metrics", metrics), ("reference", references)):
            if generated is not None and generated[index].parsed.failure:
                aux_failure.setdefault(index, f"{label} generation failed: {generated[index].parsed.failure}")
        if index in aux_failure:
            continue
        for order in judged_orders:
            jobs.append((index, order))
            prompts.append(pairwise_prompt(
                item.instruction, *_shown(item, order), rules=strategy.rules, explain=explain,
                metrics=metrics[index].parsed.text if metrics else None,
                reference=references[index].parsed.text if references else None,
                allow_tie=config.allow_tie, principles=config.principles))
    parsers = [_verdict_parser(config, _shown(pairs[index], order)) for index, order in jobs]
    asked = ask_parsed(backend, prompts, config.params, parsers, config.max_parse_retries, config.batch_size)
    judged = {job: _to_order_verdict(job[1], result) for job, result in zip(jobs, asked)}

    if strategy.swap:
        _decide_disagreements(backend, pairs, judged, strategy, config)

    results = []
    for index in range(len(pairs)):
        orders = {order: (OrderVerdict(order, None, aux_failure[index]) if index in aux_failure
                          else judged[(index, order)]) for order in config.orders}
        results.append(PairJudgment(index, strategy.name, orders,
                                    metrics=metrics[index].log if metrics else None,
                                    reference=references[index].log if references else None))
    return results


def _decide_disagreements(backend: Backend, pairs: list[PairItem], judged: dict[tuple[int, str], OrderVerdict],
                          strategy: Strategy, config: JudgeConfig) -> None:
    """Swap strategy: where the two orders disagree, a final call per reported order decides (in place)."""
    jobs, prompts = [], []
    for index, item in enumerate(pairs):
        if (index, "ab") not in judged:
            continue  # its metrics/reference generation failed
        both = {order: judged[(index, order)] for order in ORDERS}
        broken = [order for order in ORDERS if both[order].verdict is None]
        # Read before the loop below overwrites it, or the second order would quote the first's new message.
        reason = f"swap: order {broken[0]} judgment failed: {both[broken[0]].failure}" if broken else None
        for order in config.orders:
            result = both[order]
            if broken:
                # Deciding needs both judgments; one order alone is exactly what swap exists to avoid.
                result.verdict = None
                result.failure = reason
            elif both["ab"].verdict != both["ba"].verdict:
                other = "ba" if order == "ab" else "ab"
                jobs.append((index, order))
                prompts.append(swap_decision_prompt(
                    item.instruction, *_shown(item, order), both[order].judge.outputs[-1],
                    both[other].judge.outputs[-1], rules=strategy.rules, allow_tie=config.allow_tie,
                    principles=config.principles))
    parsers = [_verdict_parser(config, _shown(pairs[index], order)) for index, order in jobs]
    asked = ask_parsed(backend, prompts, config.params, parsers, config.max_parse_retries, config.batch_size)
    for (index, order), result in zip(jobs, asked):
        decided = _to_order_verdict(order, result)
        target = judged[(index, order)]
        target.verdict, target.failure, target.decision = decided.verdict, decided.failure, result.log
