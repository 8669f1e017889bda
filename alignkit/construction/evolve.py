"""Evol-instruct: instructions rewritten harder (in depth) or wider (in breadth), failed evolutions eliminated.

Every instruction of the input file (any prompts file alignkit reads: self-instruct's instructions.jsonl
or sft.jsonl, Alpaca records, chat messages) goes through `rounds` rounds. In each, its current version
is rewritten by one method drawn from the prompts file (seeded by the instruction's id and the round, so
a rerun draws the same): add a constraint, deepen, make concrete, require more reasoning steps,
complicate the input (in depth), or a new, rarer task from the same field (in breadth). The model then
answers the rewrite.

An evolution is eliminated, with the first reason that applies counted, when the rewrite errored, is
empty or was cut off, is the original again (equal once normalised, or ROUGE-L F >= `unchanged_rouge`),
or copies the rewriting prompt's own words (the file's `copy_markers`); or when its answer errored,
was cut off (unless `keep_cut_off`), is empty, is a short apology (a `refusal_markers` phrase in under
`refusal_max_words` words) or has no content word (only punctuation and stop words). Following the
method, an eliminated instruction is not lost: its previous version stays alive and is rewritten
again in the next round, so every instruction is tried every round.

Outputs: `sft.jsonl` (every successful evolution with its answer; field `evolution`: round, method,
parent version id, root instruction id), `evolved.jsonl` (one row per input instruction: its chain of
successful versions) and `dropped.jsonl` (each eliminated evolution with its reason).

Resumability: the units are (instruction, round), each one rewrite call and one answer call, run
through the journal round by round, since a round's input is the version the previous round left.
Outputs and counts come from the journal entries alone.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

from alignkit.config import ConfigError, require, require_number, validate_config
from alignkit.construction import filters
from alignkit.construction.counts import Counts, JobResult
from alignkit.construction.generator import GeneratorConfig, JobConfig, open_generator, resource
from alignkit.construction.journal import Journal, result_config, run_pending
from alignkit.stable_ids import stable_id
from alignkit.construction.rows import sft_row, user_turn
from alignkit.construction.prompt_files import compile_template, read_yaml_resource
from alignkit.data.errors import DataError
from alignkit.data.prompts import read_prompt_records

OUTPUTS = ("sft.jsonl", "evolved.jsonl", "dropped.jsonl")
REWRITE_REASONS = ("error", "empty", "cut off", "unchanged", "copied prompt")
ANSWER_REASONS = ("error", "empty", "cut off", "refusal", "no content")


@dataclass
class EvolveConfig(JobConfig):
    output_dir: str = "runs/data/evolve"  # the job's folder: outputs, summary.json, journal, cache
    instructions: str = "configs/data/seed_tasks.jsonl"  # any prompts file (e.g. self-instruct's instructions.jsonl)
    max_instructions: int = 0  # evolve only the first this many (0: all)
    prompts: str = ""  # YAML with `methods` and `copy_markers`; empty: alignkit's own (construction/resources)
    methods: list[str] = field(default_factory=list)  # methods of the prompts file to draw from (empty: all)
    rounds: int = 3  # rewrites of each instruction, each building on the last successful version
    unchanged_rouge: float = 0.9  # a rewrite with ROUGE-L F >= this against its original is unchanged
    refusal_markers: list[str] = field(default_factory=lambda: ["sorry", "as an ai"])  # apology phrases
    refusal_max_words: int = 50  # an answer holding a refusal marker in fewer words than this is a refusal
    keep_cut_off: bool = False  # keep evolutions whose answer stopped at generator.max_tokens
    generator: GeneratorConfig = field(default_factory=GeneratorConfig)

    def validate(self, where: str = "") -> None:
        super().validate(where)
        require(isinstance(self.instructions, str) and bool(self.instructions.strip()), where, "instructions",
                "a prompts file", self.instructions)
        require(isinstance(self.prompts, str), where, "prompts", "a YAML file (or empty)", self.prompts)
        require_number(where, "max_instructions", self.max_instructions, low=0, whole=True)
        require_number(where, "rounds", self.rounds, low=1, whole=True)
        require_number(where, "unchanged_rouge", self.unchanged_rouge, low=0, high=1, low_open=True)
        require_number(where, "refusal_max_words", self.refusal_max_words, low=1, whole=True)
        for key in ("methods", "refusal_markers"):
            value = getattr(self, key)
            require(isinstance(value, list) and all(isinstance(v, str) and v.strip() for v in value), where, key,
                    "a list of non-empty strings", value)
        require(isinstance(self.keep_cut_off, bool), where, "keep_cut_off", "true or false", self.keep_cut_off)


@dataclass
class EvolvePrompts:
    methods: dict  # method name -> jinja2 template, in the order drawn from
    copy_markers: list[str]
    texts: dict  # what the file says, for the journal header


def load_prompts(path: str, chosen: Sequence[str] = ()) -> EvolvePrompts:
    """The rewriting templates (only `chosen`, in the file's order, when given) and the copy markers."""
    tree = read_yaml_resource(path, ("methods", "copy_markers"))
    methods, markers = tree.get("methods"), tree.get("copy_markers")
    if not isinstance(methods, dict) or not methods:
        raise DataError(f"{path}: methods: must map each method's name to its template, got {methods!r:.80}")
    if not isinstance(markers, list) or not all(isinstance(m, str) and m.strip() for m in markers):
        raise DataError(f"{path}: copy_markers: must be a list of non-empty phrases, got {markers!r:.80}")
    unknown = [name for name in chosen if name not in methods]
    if unknown:
        raise ConfigError(f"methods: {unknown} not in {path} (it has {list(methods)})")
    names = [name for name in methods if not chosen or name in chosen]
    templates = {name: compile_template(methods[name], f"{path}: methods.{name}", ("instruction",),
                                        required=("instruction",)) for name in names}
    return EvolvePrompts(templates, list(markers), {"methods": {n: methods[n] for n in names}, "copy_markers": markers})


@dataclass
class Root:
    id: str
    prefix: list  # the turns before the instruction (a system prompt), kept in front of every version
    instruction: str
    source: str  # file:line


def read_roots(cfg: EvolveConfig) -> list[Root]:
    """The instructions to evolve: each record's last turn (the data layer makes it a user turn), with the
    turns before it as context."""
    roots = []
    for index, record in enumerate(read_prompt_records(cfg.instructions)):
        roots.append(Root(stable_id("evolve-root", index, record.messages), record.messages[:-1],
                          record.messages[-1]["content"], record.metadata["source"]))
        if len(roots) == cfg.max_instructions:
            break
    return roots


def draw_method(methods: Sequence[str], seed: int, root_id: str, round_no: int) -> str:
    """One method, uniformly, from a hash of the seed, the instruction and the round: the same in every run."""
    return methods[int(stable_id("evolve-method", seed, root_id, round_no), 16) % len(methods)]


def rewrite_failure(entry: dict, cfg: EvolveConfig, markers: Sequence[str]) -> tuple[str, dict] | None:
    """(reason, detail) when the rewrite itself failed, else None."""
    rewrite = entry["rewrite"].strip()
    reason = filters.completion_failure(rewrite, entry["rewrite_finish"])
    if reason is not None:
        return reason, {}
    if filters.is_unchanged(entry["before"], rewrite, cfg.unchanged_rouge):
        score = filters.rouge_l(filters.rouge_tokens(entry["before"]), filters.rouge_tokens(rewrite))
        return "unchanged", {"rouge_l": round(score, 4)}
    marker = filters.copied_marker(rewrite, markers)
    if marker is not None:
        return "copied prompt", {"marker": marker}
    return None


def answer_failure(entry: dict, cfg: EvolveConfig) -> str | None:
    """Why the answer to a good rewrite eliminates the evolution, or None."""
    answer = entry["answer"]
    reason = filters.completion_failure(answer, entry["answer_finish"], cfg.keep_cut_off)
    if reason is not None:
        return reason
    if filters.is_short_refusal(answer, cfg.refusal_markers, cfg.refusal_max_words):
        return "refusal"
    if not filters.has_content(answer):
        return "no content"
    return None


def failure(entry: dict, cfg: EvolveConfig, markers: Sequence[str]) -> tuple[str, str, dict] | None:
    """(step, reason, detail) of an eliminated evolution, or None for a successful one."""
    rewrite = rewrite_failure(entry, cfg, markers)
    if rewrite is not None:
        return ("rewrites", *rewrite)
    reason = answer_failure(entry, cfg)
    return None if reason is None else ("answers", reason, {})


def evolve_chunk(generator, cfg: EvolveConfig, prompts: EvolvePrompts, roots: dict,
                 units: list[dict]) -> list[dict]:
    """Rewrite each unit's instruction, then answer the rewrites that did not fail: one entry per unit."""
    # Each round samples with its own seed: a failed evolution retried with the same method next round
    # is the same prompt, and must draw a new rewrite rather than replay the cached one.
    params = cfg.generator.params(seed=cfg.generator.seed + units[0]["round"])
    rewrites = generator.chat([user_turn(prompts.methods[u["method"]].render(instruction=u["before"]).strip())
                               for u in units], params)
    entries = [{**unit, "rewrite": reply[0].text, "rewrite_finish": reply[0].finish_reason,
                **({"rewrite_error": reply[0].error} if reply[0].finish_reason == "error" else {})}
               for unit, reply in zip(units, rewrites)]
    good = [entry for entry in entries if rewrite_failure(entry, cfg, prompts.copy_markers) is None]
    answers = generator.chat([roots[e["root"]].prefix + user_turn(e["rewrite"].strip()) for e in good], params) \
        if good else []
    for entry, reply in zip(good, answers):
        entry.update(answer=reply[0].text, answer_finish=reply[0].finish_reason,
                     **({"answer_error": reply[0].error} if reply[0].finish_reason == "error" else {}))
    return entries


def evolve(journal: Journal, generator, cfg: EvolveConfig, prompts: EvolvePrompts, roots: Sequence[Root]) -> list[dict]:
    """Every unit's journal entry, round by round; each round starts from the versions the last one left."""
    by_id = {root.id: root for root in roots}
    current = {root.id: (root.id, root.instruction) for root in roots}  # root -> (version id, text)
    methods = list(prompts.methods)
    entries: list[dict] = []
    for round_no in range(1, cfg.rounds + 1):
        units = []
        for root in roots:
            parent, before = current[root.id]
            method = draw_method(methods, cfg.generator.seed, root.id, round_no)
            units.append((stable_id("evolve", root.id, round_no), {"root": root.id, "round": round_no,
                                                                   "method": method, "parent": parent,
                                                                   "before": before}))
        done = run_pending(journal, units, lambda chunk: evolve_chunk(generator, cfg, prompts, by_id, chunk),
                           chunk_size=cfg.generator.batch_size, desc=f"evolve round {round_no}",
                           progress=cfg.progress, backend=generator)
        for entry in done:
            if failure(entry, cfg, prompts.copy_markers) is None:
                current[entry["root"]] = (entry["id"], entry["rewrite"].strip())
        entries.extend(done)
    return entries


def tally(cfg: EvolveConfig, prompts: EvolvePrompts, roots: Sequence[Root], entries: Sequence[dict]):
    """(output rows by file, counts, per-round figures), from the journal entries alone."""
    counts = Counts()
    counts.declare("rewrites", REWRITE_REASONS)
    counts.declare("answers", ANSWER_REASONS)
    by_id = {root.id: root for root in roots}
    lineage = {root.id: {"id": root.id, "source": root.source, "instruction": root.instruction, "evolutions": []}
               for root in roots}
    by_round = {r: {"round": r, "evolved": 0, "eliminated": 0} for r in range(1, cfg.rounds + 1)}
    sft, dropped = [], []
    for entry in entries:
        unit = {key: entry[key] for key in ("id", "root", "round", "method", "parent")}
        failed = failure(entry, cfg, prompts.copy_markers)
        if failed is not None:
            step, reason, detail = failed
            if step == "answers":
                counts.keep("rewrites")
            counts.drop(step, reason)
            by_round[entry["round"]]["eliminated"] += 1
            errors = {k: entry[k] for k in ("rewrite_error", "answer_error") if k in entry}
            dropped.append({**unit, "step": step, "reason": reason, **detail, "instruction": entry["before"],
                            "rewrite": entry["rewrite"], **({"answer": entry["answer"]} if "answer" in entry else {}),
                            **errors})
            continue
        counts.keep("rewrites")
        counts.keep("answers")
        by_round[entry["round"]]["evolved"] += 1
        text = entry["rewrite"].strip()
        evolution = {"round": entry["round"], "method": entry["method"], "parent": entry["parent"],
                     "root": entry["root"]}
        sft.append(sft_row(by_id[entry["root"]].prefix + user_turn(text), entry["answer"], id=entry["id"],
                           evolution=evolution))
        lineage[entry["root"]]["evolutions"].append({"id": entry["id"], "round": entry["round"],
                                                     "method": entry["method"], "parent": entry["parent"],
                                                     "instruction": text})
    evolved = [{**row, "final": row["evolutions"][-1]["instruction"] if row["evolutions"] else row["instruction"]}
               for row in lineage.values()]
    return {"sft.jsonl": sft, "evolved.jsonl": evolved, "dropped.jsonl": dropped}, counts, list(by_round.values())


def run_evolve(cfg: EvolveConfig, *, backend=None) -> JobResult:
    """Run (or resume) an evol-instruct job; `backend`: a pre-built one (tests), used behind the cache."""
    validate_config(cfg)
    prompts = load_prompts(cfg.prompts or resource("evolve.yaml"), cfg.methods)
    roots = read_roots(cfg)
    # The prompts' text and the input decide the results as much as the keys do: a changed file is another job.
    header = {**result_config(cfg), "inputs": {"prompts": stable_id(prompts.texts),
                                               "instructions": stable_id([root.id for root in roots])}}
    journal = Journal(cfg.output_dir, "evolve", header, outputs=OUTPUTS, if_exists=cfg.if_exists)
    generator = open_generator(cfg.generator, journal.cache_path, backend)
    try:
        entries = evolve(journal, generator, cfg, prompts, roots)
    finally:
        generator.close()
    outputs, counts, by_round = tally(cfg, prompts, roots, entries)
    return journal.finish(outputs, counts, by_round=by_round)
