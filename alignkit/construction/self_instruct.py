"""Self-instruct: bootstrap new instructions from a few seed tasks, filter them, then have the model answer them.

Each round builds `prompts_per_round` proposal prompts. A prompt shows `examples_per_prompt` tasks as a
numbered list, drawn (seeded by the round and the prompt's index) mostly from the seed tasks and, once
there are some, `machine_examples` of them from the instructions kept in earlier rounds: the seeds keep
the proposals on the ground, the machine ones push them away from the seeds. The model continues the
list. In `mode: chat` the prompt is a user turn asking for the continuation, and the reply must be that
continuation and nothing else (every non-blank line `N. task`, numbered on from the examples); a reply
that is not is a counted failure: a preamble or a restarted list means the model did something other than
what the prompt asked, and nothing in it is trusted. In `mode: complete` (the method's original form, and
the one small or base models follow) the prompt is raw text ending where the next task begins (`N.`),
and the model writes on: its tasks are the numbered lines from there up to the first line that is not
the next number (a completion model does not stop at the list's end; what follows is not read), and a
reply with no task at all is the failure. A reply cut off at max_tokens loses its last task, which may be
half a task.

Every proposed task then meets the filters in `filters.py`, in this order, and the first that fails it
names the reason it was dropped: length in words, the keyword blocklist (tasks a text model cannot do),
a first character that is not a letter, an exact duplicate (after `filters.normalise`) of anything kept,
and ROUGE-L F >= `rouge_threshold` with anything kept so far: the seeds, every earlier round's
instructions and those kept earlier in the same round. Rounds stop once `target` instructions are kept
(the rest of that round are dropped as over_target) or after `max_rounds`. Finally the model answers
each kept instruction on its own; an errored, empty or cut-off answer drops the instruction's SFT row.

Resumability: a round depends on the pool every earlier round left, so each round is one journal unit
holding its raw replies and each candidate's decision, and a rerun rebuilds the pool from those entries
instead of deciding again. Answers are units of their own (id: the instruction's stable id). Outputs
and counts are computed from the journal alone (see journal.py). Round r samples with seed
`generator.seed + r`, so a proposal prompt that happens to repeat an earlier round's draws anew.
"""
from __future__ import annotations

import random
import re
from dataclasses import dataclass, field
from typing import Sequence

import jinja2

from alignkit.config import require, require_choice, require_number, validate_config
from alignkit.construction import filters
from alignkit.construction.counts import Counts, JobResult
from alignkit.construction.generator import GeneratorConfig, JobConfig, open_generator, resource
from alignkit.construction.journal import Journal, result_config, run_pending
from alignkit.stable_ids import stable_id
from alignkit.construction.prompt_files import compile_template, read_yaml_resource, text_key
from alignkit.construction.rows import sft_row, user_turn
from alignkit.data.errors import DataError, RecordError, describe_type
from alignkit.data.readers import located_records

OUTPUTS = ("instructions.jsonl", "sft.jsonl", "dropped.jsonl")
PROPOSAL_REASONS = ("error", "unparseable")
FILTER_REASONS = ("cut off", "length", "blocklist", "non-letter start", "duplicate", "ROUGE-L", "over target")
ANSWER_REASONS = ("error", "empty", "cut off")
# What the proposal template may use: the example tasks, the numbers the new ones take, and where it is.
PROPOSE_VARIABLES = ("examples", "first", "last", "count", "round", "index")
MODES = ("chat", "complete")


@dataclass
class SelfInstructConfig(JobConfig):
    output_dir: str = "runs/data/self_instruct"  # the job's folder: outputs, summary.json, journal, cache
    seed_tasks: str = "configs/data/seed_tasks.jsonl"  # records with instruction, optional input and output
    prompts: str = ""  # YAML with the `chat` and `complete` templates; empty: alignkit's own (construction/resources)
    mode: str = "chat"  # chat: ask for the list's continuation in a user turn | complete: raw text the model continues
    target: int = 50  # stop once this many new instructions are kept
    max_rounds: int = 10  # ... or after this many rounds
    prompts_per_round: int = 8  # proposal prompts (model calls) per round
    examples_per_prompt: int = 8  # tasks each proposal prompt shows
    machine_examples: int = 2  # of those, how many come from instructions kept in earlier rounds (when any)
    new_per_prompt: int = 6  # new tasks each prompt asks for
    min_words: int = 3  # shorter instructions are dropped
    max_words: int = 150  # longer instructions are dropped
    blocklist: list[str] = field(default_factory=lambda: list(filters.BLOCKLIST))  # tasks a text model cannot do
    rouge_threshold: float = 0.7  # drop an instruction whose ROUGE-L F with anything kept is at least this
    keep_cut_off: bool = False  # keep answers that stopped at generator.max_tokens
    generator: GeneratorConfig = field(default_factory=GeneratorConfig)

    def validate(self, where: str = "") -> None:
        super().validate(where)
        require(isinstance(self.seed_tasks, str) and bool(self.seed_tasks.strip()), where, "seed_tasks",
                "a file of seed tasks", self.seed_tasks)
        require(isinstance(self.prompts, str), where, "prompts", "a YAML file (or empty)", self.prompts)
        require_choice(where, "mode", self.mode, MODES)
        for key in ("target", "max_rounds", "prompts_per_round", "examples_per_prompt", "new_per_prompt",
                    "min_words"):
            require_number(where, key, getattr(self, key), low=1, whole=True)
        require_number(where, "machine_examples", self.machine_examples, low=0, high=self.examples_per_prompt,
                       whole=True)
        require_number(where, "max_words", self.max_words, low=self.min_words, whole=True)
        require(isinstance(self.blocklist, list) and all(isinstance(k, str) and k.strip() for k in self.blocklist),
                where, "blocklist", "a list of non-empty words or phrases", self.blocklist)
        require_number(where, "rouge_threshold", self.rouge_threshold, low=0, high=1, low_open=True)
        require(isinstance(self.keep_cut_off, bool), where, "keep_cut_off", "true or false", self.keep_cut_off)


# ---- prompt files (shared with evolve.py) ----

def load_propose_template(path: str, mode: str) -> tuple[jinja2.Template, str]:
    """(template, its text) of the file's template for `mode` (its key is the mode's name)."""
    text = text_key(read_yaml_resource(path, MODES), path, mode)
    template = compile_template(text, f"{path}: {mode}", PROPOSE_VARIABLES, required=("examples", "first"))
    if mode == "complete" and not text.rstrip().endswith("{{ first }}."):
        raise DataError(f"{path}: complete: must end with `{{{{ first }}}}.`, where the model writes the next task")
    return template, text


# ---- seed tasks ----

@dataclass
class SeedTask:
    instruction: str
    input: str = ""
    output: str = ""  # not used to propose (the model answers the new tasks); kept so the file is SFT data too

    def text(self) -> str:
        """The task on one line, input included, as the numbered list shows it and the filters compare it."""
        return " ".join(f"{self.instruction}\n{self.input}".split())


def read_seed_tasks(path: str) -> list[SeedTask]:
    seeds = []
    for where, data in located_records(path):
        if not isinstance(data.get("instruction"), str) or not data["instruction"].strip():
            raise RecordError("instruction", "must be a non-empty string", **where)
        for key in ("input", "output"):
            if data.get(key) is not None and not isinstance(data[key], str):
                raise RecordError(key, f"must be a string, got {describe_type(data[key])}", **where)
        seeds.append(SeedTask(data["instruction"], data.get("input") or "", data.get("output") or ""))
    return seeds


# ---- proposing ----

def draw_examples(seeds: Sequence[str], machine: Sequence[str], k: int, machine_share: int,
                  rng: random.Random) -> list[str]:
    """k example tasks: `machine_share` from `machine` (fewer while there are fewer), the rest seeds, shuffled."""
    from_machine = rng.sample(list(machine), min(machine_share, len(machine)))
    from_seeds = rng.sample(list(seeds), min(k - len(from_machine), len(seeds)))
    examples = from_seeds + from_machine
    rng.shuffle(examples)
    return examples


def parse_numbered(lines: Sequence[str], first: int) -> list[str] | None:
    """The tasks of non-blank `lines` that each read `N. task` (or `N) task`) with N counting on from `first`;
    None if any line does not."""
    items = []
    for line in lines:
        found = re.fullmatch(r"(\d+)\s*[.)]\s+(\S.*)", line.strip())
        if not found or int(found.group(1)) != first + len(items):
            return None
        items.append(found.group(2).strip())
    return items


def read_reply(text: str, finish_reason: str, first: int) -> tuple[list[str] | None, str | None]:
    """(tasks, cut-off last line) of a proposal reply; tasks None when the reply is not the list asked for."""
    lines = [line for line in text.splitlines() if line.strip()]
    cut = lines.pop().strip() if finish_reason == "length" and lines else None
    items = parse_numbered(lines, first)
    if items is None or (not items and cut is None):
        return None, None
    return items, cut


def read_continuation(text: str, finish_reason: str, first: int) -> tuple[list[str] | None, str | None]:
    """(tasks, cut-off last task) of a raw continuation of a prompt that ended with `first.`; tasks None when
    not even one task was written."""
    items, lines = [], f"{first}.{text}".splitlines()
    read_all = True
    for index, line in enumerate(lines):
        found = re.fullmatch(r"(\d+)\s*[.)]\s+(\S.*)", line.strip())
        if not line.strip():
            continue
        if not found or int(found.group(1)) != first + len(items):
            read_all = False
            break
        items.append(found.group(2).strip())
    cut = items.pop() if items and read_all and finish_reason == "length" else None
    if not items and cut is None:
        return None, None
    return items, cut


class Pool:
    """Everything kept so far (seeds first), with each text's normalised form and ROUGE tokens computed once."""

    def __init__(self, texts: Sequence[str] = ()):
        self.texts: list[str] = []
        self.tokens: list[list[str]] = []
        self.normalised: dict[str, int] = {}
        for text in texts:
            self.add(text)

    def add(self, text: str) -> None:
        self.normalised.setdefault(filters.normalise(text), len(self.texts))
        self.texts.append(text)
        self.tokens.append(filters.rouge_tokens(text))

    def copy(self) -> Pool:
        other = Pool()
        other.texts, other.tokens, other.normalised = list(self.texts), list(self.tokens), dict(self.normalised)
        return other


def decide(text: str, pool: Pool, cfg: SelfInstructConfig) -> dict:
    """The first filter `text` fails, as {"decision": reason, ...detail}, or {"decision": "kept"}."""
    if not filters.length_ok(text, cfg.min_words, cfg.max_words):
        return {"decision": "length", "words": filters.word_count(text)}
    keyword = filters.blocked_keyword(text, cfg.blocklist)
    if keyword is not None:
        return {"decision": "blocklist", "keyword": keyword}
    if not filters.starts_with_letter(text):
        return {"decision": "non-letter start"}
    same = pool.normalised.get(filters.normalise(text))
    if same is not None:
        return {"decision": "duplicate", "similar_to": pool.texts[same]}
    hit = filters.most_similar(filters.rouge_tokens(text), pool.tokens, cfg.rouge_threshold)
    if hit is not None:
        return {"decision": "ROUGE-L", "similar_to": pool.texts[hit[0]], "rouge_l": round(hit[1], 4)}
    return {"decision": "kept"}


def propose_round(generator, cfg: SelfInstructConfig, template: jinja2.Template, seeds: Sequence[str],
                  pool: Pool, machine: Sequence[str], round_no: int) -> dict:
    """One round's journal entry: every reply as it came, and each proposed task with its decision."""
    prompts, firsts = [], []
    for index in range(cfg.prompts_per_round):
        rng = random.Random(int(stable_id("self-instruct", cfg.generator.seed, round_no, index), 16))
        examples = draw_examples(seeds, machine, cfg.examples_per_prompt, cfg.machine_examples, rng)
        first = len(examples) + 1
        firsts.append(first)
        text = template.render(examples=examples, first=first, last=first + cfg.new_per_prompt - 1,
                               count=cfg.new_per_prompt, round=round_no, index=index).strip()
        prompts.append(user_turn(text) if cfg.mode == "chat" else text)
    # Each round samples with its own seed, so a prompt that repeats an earlier round's (the same examples
    # drawn) gets a new reply rather than the cached one, whose tasks would all be duplicates now.
    params = cfg.generator.params(seed=cfg.generator.seed + round_no)
    replies = generator.chat(prompts, params) if cfg.mode == "chat" else generator.complete(prompts, params)
    pool = pool.copy()  # the caller adds this round's kept tasks from the entry, the one record of them
    kept = len(machine)
    entry: dict = {"round": round_no, "replies": [], "candidates": []}
    for index, (first, reply) in enumerate(zip(firsts, replies)):
        completion = reply[0]
        record = {"prompt": index, "text": completion.text, "finish_reason": completion.finish_reason}
        if completion.finish_reason == "error":
            entry["replies"].append({**record, "status": "error", "error": completion.error})
            continue
        read = read_reply if cfg.mode == "chat" else read_continuation
        items, cut = read(completion.text, completion.finish_reason, first)
        entry["replies"].append({**record, "status": "unparseable" if items is None else "parsed"})
        for text in items or ():
            decision = {"decision": "over target"} if kept >= cfg.target else decide(text, pool, cfg)
            if decision["decision"] == "kept":
                pool.add(text)
                kept += 1
            entry["candidates"].append({"instruction": text, "prompt": index, **decision})
        if cut is not None:
            entry["candidates"].append({"instruction": cut, "prompt": index, "decision": "cut off"})
    return entry


def propose(journal: Journal, generator, cfg: SelfInstructConfig, template: jinja2.Template,
            seeds: Sequence[str]) -> list[dict]:
    """Every round's journal entry, running the rounds not yet journaled; the pool grows from the entries."""
    pool, machine, entries = Pool(seeds), [], []
    for round_no in range(1, cfg.max_rounds + 1):
        if len(machine) >= cfg.target:
            break

        def process(payloads: list[int]) -> list[dict]:
            return [propose_round(generator, cfg, template, seeds, pool, machine, payloads[0])]

        entry = run_pending(journal, [(f"round-{round_no}", round_no)], process, chunk_size=1,
                            desc=f"self-instruct round {round_no}", progress=cfg.progress, backend=generator)[0]
        entries.append(entry)
        for candidate in entry["candidates"]:
            if candidate["decision"] == "kept":
                pool.add(candidate["instruction"])
                machine.append(candidate["instruction"])
    return entries


def answer(journal: Journal, generator, cfg: SelfInstructConfig, instructions: Sequence[str]) -> list[dict]:
    """The model's answer to each kept instruction (one call each), as journal entries in order."""
    def process(texts: list[str]) -> list[dict]:
        replies = generator.chat([user_turn(text) for text in texts], cfg.generator.params())
        return [{"instruction": text, "answer": reply[0].text, "finish_reason": reply[0].finish_reason,
                 **({"error": reply[0].error} if reply[0].finish_reason == "error" else {})}
                for text, reply in zip(texts, replies)]

    units = [(stable_id(text), text) for text in instructions]
    return run_pending(journal, units, process, chunk_size=cfg.generator.batch_size, desc="self-instruct answers",
                       progress=cfg.progress, backend=generator)


def kept_instructions(rounds: Sequence[dict]) -> list[dict]:
    return [{"id": stable_id(c["instruction"]), "instruction": c["instruction"], "round": entry["round"],
             "prompt": c["prompt"]} for entry in rounds for c in entry["candidates"] if c["decision"] == "kept"]


def tally(cfg: SelfInstructConfig, rounds: Sequence[dict], answers: Sequence[dict]) -> tuple[dict, Counts]:
    """The output files' rows and the counts, from the journal entries alone."""
    counts = Counts()
    counts.declare("proposals", PROPOSAL_REASONS)
    counts.declare("instructions", FILTER_REASONS)
    counts.declare("answers", ANSWER_REASONS)
    dropped = []
    for entry in rounds:
        for reply in entry["replies"]:
            if reply["status"] == "parsed":
                counts.keep("proposals")
                continue
            counts.drop("proposals", reply["status"])
            dropped.append({"step": "proposals", "round": entry["round"], "prompt": reply["prompt"],
                            "reason": reply["status"], "reply": reply["text"],
                            **({"error": reply["error"]} if "error" in reply else {})})
        for candidate in entry["candidates"]:
            if candidate["decision"] == "kept":
                counts.keep("instructions")
                continue
            counts.drop("instructions", candidate["decision"])
            detail = {k: v for k, v in candidate.items() if k not in ("instruction", "prompt", "decision")}
            dropped.append({"step": "instructions", "round": entry["round"], "prompt": candidate["prompt"],
                            "reason": candidate["decision"], "instruction": candidate["instruction"], **detail})
    instructions = kept_instructions(rounds)
    sft = []
    for kept, entry in zip(instructions, answers):
        reason = filters.completion_failure(entry["answer"], entry["finish_reason"], cfg.keep_cut_off)
        if reason is None:
            counts.keep("answers")
            sft.append(sft_row(user_turn(kept["instruction"]), entry["answer"], id=kept["id"], round=kept["round"]))
            continue
        counts.drop("answers", reason)
        dropped.append({"step": "answers", "id": kept["id"], "reason": reason, "instruction": kept["instruction"],
                        "answer": entry["answer"], **({"error": entry["error"]} if "error" in entry else {})})
    return {"instructions.jsonl": instructions, "sft.jsonl": sft, "dropped.jsonl": dropped}, counts


def run_self_instruct(cfg: SelfInstructConfig, *, backend=None) -> JobResult:
    """Run (or resume) a self-instruct job; `backend`: a pre-built one (tests), used behind the cache."""
    validate_config(cfg)
    template, template_text = load_propose_template(cfg.prompts or resource("self_instruct.yaml"), cfg.mode)
    seeds = [seed.text() for seed in read_seed_tasks(cfg.seed_tasks)]
    # The prompt's text and the seeds decide the results as much as the keys do: a changed file is another job.
    header = {**result_config(cfg), "inputs": {cfg.mode: stable_id(template_text), "seed_tasks": stable_id(seeds)}}
    journal = Journal(cfg.output_dir, "self-instruct", header, outputs=OUTPUTS, if_exists=cfg.if_exists)
    generator = open_generator(cfg.generator, journal.cache_path, backend)
    try:
        rounds = propose(journal, generator, cfg, template, seeds)
        answers = answer(journal, generator, cfg, [kept["instruction"] for kept in kept_instructions(rounds)])
    finally:
        generator.close()
    outputs, counts = tally(cfg, rounds, answers)
    return journal.finish(outputs, counts, rounds=len(rounds))
