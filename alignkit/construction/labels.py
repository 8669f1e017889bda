"""AI preference labels (RLAIF): a judge compares the responses to each prompt in both orders.

Method. Every prompt has two or more responses, read from files or sampled here:

* `responses: [file]`: one file of `alignkit generate --n K` output, each record's `responses` list;
* `responses: [file, file, ...]`: one file per model (`alignkit generate` output, its `model` field
  names the model), each record's `response` (or `responses`), matched across files by the prompt;
* `prompts: file`: `n` responses per prompt sampled by the `generator` section.

Every pair of them (`pairs: all`; or `first_vs_rest`, the first response against each other one) goes
to the pairwise judge of alignkit.judges in both orders, A/B and B/A, with the `principles` shown as
numbered rules to judge by. A pair becomes a row only when both orders name the same response: an
answer that changes when the order changes is the judge reading positions, not texts. Everything else
is dropped with its reason, and counted, never guessed:

  prompts    repeated prompt           a prompts file's later copy of a prompt (its samples would repeat)
             missing from a file       several files, and one lacks the prompt (no comparison is fair)
             fewer than 2 responses    what is left after dropping empty and failed responses
  responses  empty                     nothing but whitespace
             generation error          the backend failed (sampled responses; a file's single `response`
                                       whose `finish_reason` is "error")
  pairs      identical responses       the same text up to whitespace: nothing to prefer, no judge call
             unparseable verdict       an order's reply held no verdict (after `parse_retries` re-asks)
             judge error               the judge backend failed, and no order was merely unparseable
             orders disagree           the orders named different responses (position bias)
             tie in both orders        `allow_tie` and both orders called it even

A prompt that appears twice in one responses file is an error naming the file and line: which of its
records holds that file's answer cannot be told.

`aggregate: pairs` makes every kept pair a row (with more than two responses, a prompt gives several
rows). The summary reports the agreement rate between orders: of the pairs where both orders gave a
verdict, the share whose verdicts agree (a tie in both counts as agreeing). A low rate says the judge
is deciding by position.

Outputs: `pairs.jsonl` in TRL's conversational prompt/chosen/rejected layout, with `rationale` (the
judge's raw replies: "ab" with the chosen response shown as Output A, "ba" with it shown as Output B;
with the swap strategy, the deciding call's reply), `judge` (its model id), `id`, `source` (where the
prompt was read) and `origins` (which model and sample each side is); `dropped.jsonl`, one row per
dropped prompt, response or pair with its `stage` and `reason` (a pair keeps both orders' verdicts,
failures and replies, "ab" there meaning the pair's first response shown as A); `summary.json`.

Resumability: one journal unit per prompt (its id is the prompt with its responses, or the prompt alone
when sampled); a chunk of prompts is sampled and judged inside `process`, and every output and count is
built from the journal entries at the end, so a killed job rerun writes what an uninterrupted one does.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field

from alignkit.config import ConfigError, read_yaml, require, require_choice, require_number, validate_config
from alignkit.construction.counts import Counts, JobResult
from alignkit.construction.filters import same_text
from alignkit.construction.generator import GeneratorConfig, JobConfig, open_generator, resource
from alignkit.construction.journal import Journal, result_config, run_pending
from alignkit.stable_ids import stable_id
from alignkit.construction.rows import pair_row
from alignkit.data.errors import RecordError, describe_type
from alignkit.data.formats import as_list, required
from alignkit.data.prompts import PromptRecord, read_prompt_records, split_repeats
from alignkit.generation.backend import Backend, SamplingParams
from alignkit.judges import ORDERS, JudgeConfig, PairItem, PairJudgment, Strategy, judge_pairs
from alignkit.rewards.judge import instruction_text

PAIRINGS = ("all", "first_vs_rest")
AGGREGATES = ("pairs",)
PAIRS, DROPPED = "pairs.jsonl", "dropped.jsonl"
PROMPT_REASONS = ("repeated prompt", "missing from a file", "fewer than 2 responses")
RESPONSE_REASONS = ("empty", "generation error")
PAIR_REASONS = ("identical responses", "unparseable verdict", "judge error", "orders disagree", "tie in both orders")
KEPT = "kept"


@dataclass
class LabelConfig(JobConfig):
    responses: list[str] = field(default_factory=list)  # a `generate --n K` file, or one file per model
    prompts: str = ""  # instead of `responses`: a prompts file whose responses `generator` samples
    n: int = 2  # responses sampled per prompt (with `prompts`)
    generator: GeneratorConfig = field(default_factory=GeneratorConfig)  # the model that samples (with `prompts`)
    max_prompts: int = 0  # label the first N prompts only; 0: all
    pairs: str = "all"  # all: every two responses of a prompt | first_vs_rest: the first response against each other
    aggregate: str = "pairs"  # pairs: every kept pair is a row
    # The judge's model: greedy, so a rerun asks the same question and gets the same verdict.
    judge: GeneratorConfig = field(default_factory=lambda: GeneratorConfig(temperature=0.0, max_tokens=512))
    strategy: str = "plain"  # judge strategy: plain, or a "+"-joined mix of rules, cot, metrics, reference, swap
    allow_tie: bool = False  # the judge may answer "tie"; a tie in both orders is dropped and counted
    parse_retries: int = 0  # re-asks (with a new seed) after a reply without a verdict
    # A small judge that rarely writes the verdict line still gives one in each order this way.
    use_logprobs: bool = False  # read each verdict from P("A") vs P("B") at the verdict token (no cot, no swap)
    principles: str | None = ""  # YAML file of principles to judge by; empty: alignkit's own; null: none
    batch_size: int = 8  # prompts per chunk, sampled and judged together, then journaled

    def validate(self, where: str = "") -> None:
        super().validate(where)
        require(isinstance(self.prompts, str), where, "prompts", "a prompts file, or empty", self.prompts)
        require(isinstance(self.responses, list) and all(isinstance(p, str) and p.strip() for p in self.responses),
                where, "responses", "a list of files", self.responses)
        require(bool(self.responses) != bool(self.prompts.strip()), where, "responses",
                "a list of files, or empty with `prompts` set (responses sampled by `generator`), not both",
                self.responses)
        require_number(where, "n", self.n, low=2, whole=True)
        require_number(where, "max_prompts", self.max_prompts, low=0, whole=True)
        require_choice(where, "pairs", self.pairs, PAIRINGS)
        require_choice(where, "aggregate", self.aggregate, AGGREGATES)
        try:
            Strategy.parse(self.strategy)
        except ValueError as error:
            require(False, where, "strategy", f"a judge strategy ({error})", self.strategy)
        require_number(where, "parse_retries", self.parse_retries, low=0, whole=True)
        strategy = Strategy.parse(self.strategy)
        require(not (self.use_logprobs and (strategy.cot or strategy.swap)), where, "use_logprobs",
                "false with a strategy that reasons before its verdict (cot, swap)", self.use_logprobs)
        require(self.principles is None or isinstance(self.principles, str), where, "principles",
                "a YAML file, empty for alignkit's own, or null for none", self.principles)
        require_number(where, "batch_size", self.batch_size, low=1, whole=True)

    def judge_config(self, principles: tuple[str, ...]) -> JudgeConfig:
        # Both orders always: a verdict seen in one order only cannot be told from position bias.
        params = self.judge.params(logprobs=5) if self.use_logprobs else self.judge.params()
        return JudgeConfig(strategy=self.strategy, params=params, both_orders=True, allow_tie=self.allow_tie,
                           max_parse_retries=self.parse_retries, use_logprobs=self.use_logprobs,
                           batch_size=self.judge.batch_size, principles=principles)


def load_principles(path: str) -> tuple[str, ...]:
    """The `principles:` list of a YAML file; anything else there is a one-line error naming file and key."""
    tree = read_yaml(path)
    if set(tree) != {"principles"}:
        raise ConfigError(f"{path}: expected the one key `principles` (a list of strings), found {sorted(tree)}")
    items = tree["principles"]
    if not isinstance(items, list) or not items:
        raise ConfigError(f"{path}: principles: must be a non-empty list of strings, got {items!r}")
    for index, item in enumerate(items):
        if not isinstance(item, str) or not item.strip():
            raise ConfigError(f"{path}: principles[{index}]: must be a non-empty string, got {item!r}")
    return tuple(item.strip() for item in items)


# ---- the rules, as short pure functions ----

def response_problem(text: str, finish_reason: str | None = None) -> str | None:
    """Why a response cannot be judged (a RESPONSE_REASONS entry), or None."""
    if finish_reason == "error":
        return "generation error"
    return "empty" if not text.strip() else None


def pair_indices(count: int, pairing: str) -> list[tuple[int, int]]:
    """The (first, second) response indices to compare among `count` responses."""
    if pairing == "first_vs_rest":
        return [(0, j) for j in range(1, count)]
    return [(i, j) for i in range(count) for j in range(i + 1, count)]


def pair_outcome(verdicts: dict[str, str | None], failures: dict[str, str | None]) -> tuple[str, str | None]:
    """(KEPT, "a" | "b") when both orders name the same response, else (a PAIR_REASONS entry, None)."""
    failed = [failures.get(order) or "" for order in ORDERS if verdicts[order] is None]
    if failed:
        judge_only = all("backend error" in failure for failure in failed)
        return ("judge error" if judge_only else "unparseable verdict"), None
    if verdicts["ab"] != verdicts["ba"]:
        return "orders disagree", None
    if verdicts["ab"] == "tie":
        return "tie in both orders", None
    return KEPT, verdicts["ab"]


def prompt_problem(entry: dict) -> str | None:
    """Why a prompt gives no pairs (a PROMPT_REASONS entry), or None."""
    if entry["missing"]:
        return "missing from a file"
    return "fewer than 2 responses" if len(entry["responses"]) < 2 else None


# ---- reading the responses ----

@dataclass
class Unit:
    """One prompt and its responses: a journal unit's payload."""
    prompt: list[dict]
    source: str  # file:line where the prompt was (first) read
    responses: list[dict] = field(default_factory=list)  # {"text", "origin"}: the responses to judge, in order
    dropped: list[dict] = field(default_factory=list)  # {"text", "origin", "reason"}: responses left out
    missing: list[str] = field(default_factory=list)  # files that lack the prompt

    def add(self, text: str, origin: str, finish_reason: str | None = None, error: str | None = None) -> None:
        """A response: to judge, or to drop with its reason."""
        reason = response_problem(text, finish_reason)
        item = {"text": text, "origin": origin}
        if reason is None:
            self.responses.append(item)
        else:
            self.dropped.append({**item, "reason": reason, **({"error": error} if error else {})})


def prompt_key(messages: list[dict]) -> str:
    return json.dumps(messages, sort_keys=True, ensure_ascii=False)


def read_response_prompts(path: str) -> list[PromptRecord]:
    """The records of a responses file; a prompt twice is an error naming both lines (which holds the answer?)."""
    unique, repeats = split_repeats(read_prompt_records([path]))
    if repeats:
        record, first = repeats[0]
        raise record.error("messages", f"the same prompt as {first}; a responses file may hold each prompt once")
    return unique


def record_responses(data: dict, several_files: bool, default_model: str) -> list[tuple[str, str | None, str]]:
    """(text, finish_reason, origin) per response of one record; an unplaced RecordError for a bad field."""
    model = data.get("model") or default_model
    if data.get("responses") is not None:
        # `finish_reason` in generate's output is the first sample's only, so it says nothing about the rest.
        texts = [(text, None, f"responses[{k}]", f"{model}[{k}]")
                 for k, text in enumerate(as_list(data["responses"], "responses"))]
    elif several_files:
        texts = [(required(data, "response"), data.get("finish_reason"), "response", model)]
    else:
        raise RecordError("responses", "missing; one file needs several responses per record (`alignkit generate "
                                       "--n K` writes them); to compare models, give one file per model")
    for text, _, name, _ in texts:
        if not isinstance(text, str):
            raise RecordError(name, f"expected a string, got {describe_type(text)}")
    return [(text, finish_reason, origin) for text, finish_reason, _, origin in texts]


def read_response_file(path: str, several_files: bool) -> dict[str, Unit]:
    """Prompt key -> Unit with this file's responses, in file order."""
    units = {}
    for record in read_response_prompts(path):
        unit = units[prompt_key(record.messages)] = Unit(record.messages, record.metadata["source"])
        try:
            responses = record_responses(record.metadata, several_files, path)
        except RecordError as error:
            raise error.located(record.where["path"], record.where["line"], record.where["unit"]) from None
        for text, finish_reason, origin in responses:
            unit.add(text, origin, finish_reason)
    return units


def match_by_prompt(files: list[tuple[str, dict[str, Unit]]]) -> list[Unit]:
    """One Unit per prompt found in any file (first file's order, then new prompts of later files): the
    responses of every file holding it, in file order, and the files that lack it."""
    keys = dict.fromkeys(key for _, units in files for key in units)
    matched = []
    for key in keys:
        present = [units[key] for _, units in files if key in units]
        matched.append(Unit(present[0].prompt, present[0].source,
                            [r for unit in present for r in unit.responses],
                            [d for unit in present for d in unit.dropped],
                            [path for path, units in files if key not in units]))
    return matched


def read_units(cfg: LabelConfig) -> tuple[list[tuple[str, Unit]], list[dict]]:
    """([(journal id, Unit)] per prompt, [repeated prompt]), read before any model loads (a bad file costs no
    model load). A prompts file may repeat a prompt (its samples would repeat too): repeats are dropped and
    counted. A responses file may not (see `read_response_prompts`)."""
    if cfg.responses:
        several = len(cfg.responses) > 1
        units = match_by_prompt([(path, read_response_file(path, several)) for path in cfg.responses])
        keyed = [(stable_id(u.prompt, u.responses, u.dropped, u.missing), u) for u in units]
        return (keyed[:cfg.max_prompts] if cfg.max_prompts else keyed), []
    records = read_prompt_records([cfg.prompts])
    unique, repeats = split_repeats(records[:cfg.max_prompts] if cfg.max_prompts else records)
    # Sampled: the responses are not known yet; the config (in the journal's header) decides them.
    keyed = [(stable_id(record.messages), Unit(record.messages, record.metadata["source"])) for record in unique]
    return keyed, [{"prompt": record.messages, "source": record.metadata["source"], "same_as": first}
                   for record, first in repeats]


# ---- sampling and judging one chunk ----

def sample_responses(units: list[Unit], backend: Backend, params: SamplingParams) -> None:
    """Fill each unit's responses with `params.n` samples (seeded per prompt, so chunking changes nothing)."""
    replies = backend.chat([unit.prompt for unit in units], params)
    if len(replies) != len(units) or any(len(samples) != params.n for samples in replies):
        raise RuntimeError(f"generator {backend.model_id!r} did not return {params.n} samples for each of "
                           f"{len(units)} prompts")
    for unit, samples in zip(units, replies):
        for k, sample in enumerate(samples):
            unit.add(sample.text, f"{backend.model_id}[{k}]", sample.finish_reason, sample.error)


def _reply(order_verdict) -> str | None:
    """The raw judge reply that gave an order's verdict: the deciding call's under swap, else the last attempt."""
    log = order_verdict.decision or order_verdict.judge
    return log.outputs[-1] if log is not None and log.outputs else None


def judged_pair(judgment: PairJudgment) -> dict:
    verdicts = judgment.verdicts()
    failures = {order: result.failure for order, result in judgment.orders.items()}
    outcome, chosen = pair_outcome(verdicts, failures)
    return {"outcome": outcome, "chosen": chosen, "verdicts": verdicts, "failures": failures,
            "rationale": {order: _reply(result) for order, result in judgment.orders.items()}}


def label_chunk(units: list[Unit], judge: Backend, config: JudgeConfig, pairing: str) -> list[dict]:
    """One journal entry per unit: its responses and every pair's outcome. All judge calls in one batch."""
    entries, items, slots = [], [], []
    for unit in units:
        pairs = []
        if not unit.missing and len(unit.responses) >= 2:
            for i, j in pair_indices(len(unit.responses), pairing):
                a, b = unit.responses[i]["text"], unit.responses[j]["text"]
                if same_text(a, b):
                    pairs.append({"a": i, "b": j, "outcome": "identical responses"})
                    continue
                slots.append((len(entries), len(pairs)))
                pairs.append({"a": i, "b": j})
                items.append(PairItem(instruction_text(unit.prompt), a, b))
        entries.append({"prompt": unit.prompt, "source": unit.source, "responses": unit.responses,
                        "dropped_responses": unit.dropped, "missing": unit.missing, "pairs": pairs})
    for (entry, pair), judgment in zip(slots, judge_pairs(judge, items, config) if items else []):
        entries[entry]["pairs"][pair].update(judged_pair(judgment))
    return entries


# ---- outputs and counts, from the journal ----

def kept_row(entry: dict, pair: dict, judge_id: str) -> dict:
    """A kept pair in TRL's conversational layout, with the judge's replies in row-relative orders."""
    a, b = entry["responses"][pair["a"]], entry["responses"][pair["b"]]
    chosen, rejected = (a, b) if pair["chosen"] == "a" else (b, a)
    replies = pair["rationale"]
    # "ab" here is the reply that saw the chosen response as Output A (so it reads "Verdict: A").
    rationale = replies if pair["chosen"] == "a" else {"ab": replies["ba"], "ba": replies["ab"]}
    return pair_row(entry["prompt"], chosen["text"], rejected["text"], id=stable_id(entry["id"], pair["a"], pair["b"]),
                    judge=judge_id, rationale=rationale, source=entry["source"],
                    origins={"chosen": chosen["origin"], "rejected": rejected["origin"]})


def dropped_pair_row(entry: dict, pair: dict) -> dict:
    a, b = entry["responses"][pair["a"]], entry["responses"][pair["b"]]
    return {"id": stable_id(entry["id"], pair["a"], pair["b"]), "stage": "pair", "reason": pair["outcome"],
            "prompt": entry["prompt"], "source": entry["source"], "a": a["text"], "b": b["text"],
            "origins": {"a": a["origin"], "b": b["origin"]},
            **{key: pair[key] for key in ("verdicts", "failures", "rationale") if key in pair}}


def build_outputs(entries: list[dict], repeats: list[dict],
                  judge_id: str) -> tuple[list[dict], list[dict], Counts, dict]:
    """(pair rows, dropped rows, counts, agreement between orders), from the journal entries and the
    repeated prompts of the input (which the input alone decides)."""
    counts = Counts()
    for step, reasons in (("prompts", PROMPT_REASONS), ("responses", RESPONSE_REASONS), ("pairs", PAIR_REASONS)):
        counts.declare(step, reasons)
    rows, dropped = [], []
    for repeat in repeats:
        counts.drop("prompts", "repeated prompt")
        dropped.append({"id": stable_id(repeat["source"]), "stage": "prompt", "reason": "repeated prompt", **repeat})
    agreed = disagreed = 0
    for entry in entries:
        base = {"prompt": entry["prompt"], "source": entry["source"]}
        counts.keep("responses", len(entry["responses"]))
        for response in entry["dropped_responses"]:
            counts.drop("responses", response["reason"])
            dropped.append({"id": entry["id"], "stage": "response", **base, **response})
        problem = prompt_problem(entry)
        if problem:
            counts.drop("prompts", problem)
            dropped.append({"id": entry["id"], "stage": "prompt", "reason": problem, **base,
                            "responses": len(entry["responses"]), "missing": entry["missing"]})
            continue
        counts.keep("prompts")
        for pair in entry["pairs"]:
            verdicts = pair.get("verdicts", {})
            if all(verdicts.get(order) is not None for order in ORDERS):
                agreed += verdicts["ab"] == verdicts["ba"]
                disagreed += verdicts["ab"] != verdicts["ba"]
            if pair["outcome"] == KEPT:
                counts.keep("pairs")
                rows.append(kept_row(entry, pair, judge_id))
            else:
                counts.drop("pairs", pair["outcome"])
                dropped.append(dropped_pair_row(entry, pair))
    judged = agreed + disagreed
    agreement = {"agreed": agreed, "disagreed": disagreed, "rate": round(agreed / judged, 6) if judged else None}
    return rows, dropped, counts, agreement


def journal_config(cfg: LabelConfig, principles: tuple[str, ...]) -> dict:
    """What decides the results, for the journal's header (a resumed job must match it)."""
    config = result_config(cfg)
    if cfg.responses:  # read from files: the sampling keys decide nothing, and editing them must not block a resume
        del config["generator"], config["n"]
    # The principles' text, not only their file's name, decides the verdicts: an edited file must not resume.
    return {**config, "principle_texts": list(principles)}


def run_label(cfg: LabelConfig, *, backend: Backend | None = None, judge_backend: Backend | None = None) -> JobResult:
    """`alignkit data label`. `backend` / `judge_backend`: pre-built generator / judge (tests); else from the config."""
    validate_config(cfg)
    principles = () if cfg.principles is None else load_principles(cfg.principles or resource("judge_principles.yaml"))
    judge_config = cfg.judge_config(principles)
    units, repeats = read_units(cfg)
    journal = Journal(cfg.output_dir, "label", journal_config(cfg, principles), outputs=(PAIRS, DROPPED),
                      if_exists=cfg.if_exists)
    judge = open_generator(cfg.judge, journal.cache_path, judge_backend)
    sampler = open_generator(cfg.generator, journal.cache_path, backend) if cfg.prompts else None
    params = cfg.generator.params(n=cfg.n)

    def process(chunk: list[Unit]) -> list[dict]:
        if sampler is not None:
            sample_responses(chunk, sampler, params)
        return label_chunk(chunk, judge, judge_config, cfg.pairs)

    try:
        entries = run_pending(journal, units, process, chunk_size=cfg.batch_size, desc="label",
                              progress=cfg.progress, backend=judge)
    finally:
        judge.close()
        if sampler is not None:
            sampler.close()
    rows, dropped, counts, agreement = build_outputs(entries, repeats, judge.model_id)
    return journal.finish({PAIRS: rows, DROPPED: dropped}, counts, judge=judge.model_id,
                          agreement_between_orders=agreement)
