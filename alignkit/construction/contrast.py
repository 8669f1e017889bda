"""Contrastive prompts (`alignkit data contrast`): RLCD preference pairs from two variants of one prompt.

The method (after Yang et al., 2023, "RLCD: Reinforcement Learning from Contrastive Distillation"): for
each prompt, one direction pair is chosen (e.g. helpful and harmless against unhelpful and careless about
harm); the prompt with the positive direction added is answered for `chosen`, the same prompt with the
negative direction for `rejected`. Which side is better is decided by construction, not by a judge, so
no label can be misparsed; the pair is only as good as the model's obedience to the directions.

Choices made here, and why:
- The direction text is appended to the last user turn by default (`placement: user`): some chat
  templates reject or fold a system turn (see alignkit/judges/prompts.py). `placement: system` puts it
  in a system turn instead: appended to the conversation's own system turn if it has one, else as a new
  first turn.
- The pair's prompt is the ORIGINAL conversation, without any direction text: a model trained on the
  pair must learn to prefer the chosen answer to the plain prompt, with no instruction telling it to.
- The direction is the config's `direction`, or drawn per prompt from a hash of (seed, prompt id), so the
  draw is the same in every run and batching. The directions file (`directions: ""` = alignkit's own
  construction/resources/contrast.yaml) lists each pair as name, positive and negative text.
- A pair is dropped, and counted under the first problem found (chosen side first): an errored output
  (`chosen error`: a backend error is never text), an empty one, one cut off at max_tokens
  (`drop_cut_off`), or chosen and rejected that are the same text, whitespace aside (`chosen equals
  rejected`: no preference to learn). Repeated prompts are answered once (`duplicate`).
- Resumability: one unit per prompt (id = stable_id(prompt messages)), both variants of a chunk asked in
  one batch through `journal.run_pending`; outputs and counts are built from the journal entries alone.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from alignkit.config import require, require_choice, require_number, validate_config
from alignkit.construction.counts import Counts, JobResult
from alignkit.construction.filters import completion_failure, same_text
from alignkit.construction.prompt_files import named_entries, read_yaml_resource
from alignkit.construction.generator import GeneratorConfig, JobConfig, first_replies, open_generator, resource
from alignkit.construction.inputs import own_fields, unique_prompts
from alignkit.construction.journal import Journal, result_config, run_pending
from alignkit.stable_ids import draw, stable_id
from alignkit.construction.rows import pair_row
from alignkit.data.prompts import PromptRecord, read_prompt_records
from alignkit.generation.backend import Backend, Completion, SamplingParams

OUTPUTS = ("pairs.jsonl", "dropped.jsonl")
PLACEMENTS = ("user", "system")
SIDES = ("chosen", "rejected")
REASONS = tuple(f"{side} {problem}" for side in SIDES for problem in ("error", "empty", "cut off")) \
    + ("chosen equals rejected",)


@dataclass
class ContrastConfig(JobConfig):
    prompts: str = ""  # prompts file (any format alignkit reads), e.g. configs/data/prompts.jsonl
    directions: str = ""  # direction pairs file (YAML); "" = alignkit's own (construction/resources/contrast.yaml)
    direction: str = ""  # one direction's name for every prompt; "" = drawn per prompt from the file
    placement: str = "user"  # where the direction text goes: user (appended to the last user turn) | system
    drop_cut_off: bool = True  # an output cut off at max_tokens drops the pair (false: used as it is)
    limit: int = 0  # use only the first N prompts (0: all)
    generator: GeneratorConfig = field(default_factory=GeneratorConfig)

    def validate(self, where: str = "") -> None:
        super().validate(where)
        require(isinstance(self.prompts, str) and bool(self.prompts.strip()), where, "prompts", "a prompts file",
                self.prompts)
        for key in ("directions", "direction"):
            require(isinstance(getattr(self, key), str), where, key, "a string", getattr(self, key))
        require_choice(where, "placement", self.placement, PLACEMENTS)
        require_number(where, "limit", self.limit, low=0, whole=True)


@dataclass(frozen=True)
class Direction:
    name: str
    positive: str  # added to the prompt that answers `chosen`
    negative: str  # added to the prompt that answers `rejected`


def load_directions(path: str) -> tuple[tuple[Direction, ...], str]:
    """(the direction pairs in the file at `path`, a digest of them); a bad key is a one-line DataError."""
    entries = named_entries(read_yaml_resource(path, ("directions",)), path, "directions", ("positive", "negative"))
    directions = tuple(Direction(e["name"], e["positive"].strip(), e["negative"].strip()) for e in entries)
    return directions, stable_id([vars(d) for d in directions])


# ----------------------------------------------------------------------------- rules (pure)

def pick_direction(directions: tuple[Direction, ...], fixed: str, seed: int, prompt_id: str) -> Direction:
    """The direction named `fixed`, or one drawn from (seed, prompt id)."""
    if fixed:
        return next(d for d in directions if d.name == fixed)
    return directions[draw(len(directions), seed, prompt_id)]


def with_direction(messages: list[dict], text: str, placement: str) -> list[dict]:
    """A copy of the conversation with `text` appended to its last user turn, or in its system turn."""
    out = [dict(message) for message in messages]
    if placement == "system":
        if out and out[0]["role"] == "system":
            out[0]["content"] = f"{out[0]['content']}\n\n{text}" if out[0]["content"].strip() else text
        else:
            out.insert(0, {"role": "system", "content": text})
        return out
    last_user = max(i for i, message in enumerate(out) if message["role"] == "user")
    out[last_user]["content"] = f"{out[last_user]['content']}\n\n{text}"
    return out


def pair_failure(chosen: Completion, rejected: Completion, drop_cut_off: bool) -> str | None:
    """The first reason (of REASONS) the two outputs make no pair, chosen side first; or None."""
    for side, completion in zip(SIDES, (chosen, rejected)):
        problem = completion_failure(completion.text, completion.finish_reason, keep_cut_off=not drop_cut_off)
        if problem:
            return f"{side} {problem}"
    if same_text(chosen.text, rejected.text):
        return "chosen equals rejected"
    return None


# ----------------------------------------------------------------------------- model calls

def contrast_chunk(backend: Backend, params: SamplingParams, directions: dict[str, Direction], placement: str,
                   drop_cut_off: bool, units: list[dict]) -> list[dict]:
    """Both variants of every unit in one batch; one journal entry per unit."""
    conversations = []
    for unit in units:
        direction = directions[unit["direction"]]
        conversations += [with_direction(unit["prompt"], direction.positive, placement),
                          with_direction(unit["prompt"], direction.negative, placement)]
    replies = first_replies(backend, conversations, params)
    entries = []
    for index, unit in enumerate(units):
        chosen, rejected = replies[2 * index], replies[2 * index + 1]
        entry = {key: unit[key] for key in ("prompt", "source", "record", "direction")}
        entry.update(chosen=chosen.text, rejected=rejected.text, failure=pair_failure(chosen, rejected, drop_cut_off),
                     finish_reasons=[chosen.finish_reason, rejected.finish_reason])
        errors = {side: c.error or "no detail given" for side, c in zip(SIDES, (chosen, rejected))
                  if c.finish_reason == "error"}
        if errors:
            entry["errors"] = errors
        entries.append(entry)
    return entries


# ----------------------------------------------------------------------------- outputs (from the journal)

def contrast_outputs(entries: list[dict], counts: Counts) -> tuple[list[dict], list[dict]]:
    """(pair rows, dropped rows) of the journaled units; counts the pairs kept and dropped."""
    counts.declare("pairs", REASONS)
    pairs, dropped = [], []
    for entry in entries:
        if entry["failure"]:
            counts.drop("pairs", entry["failure"])
            dropped.append({"id": entry["id"], "source": entry["source"], "step": "pairs", "reason": entry["failure"],
                            "prompt": entry["prompt"], "direction": entry["direction"],
                            "chosen_text": entry["chosen"], "rejected_text": entry["rejected"],
                            **({"errors": entry["errors"]} if "errors" in entry else {})})
            continue
        counts.keep("pairs")
        pairs.append(pair_row(entry["prompt"], entry["chosen"], entry["rejected"], id=entry["id"],
                              source=entry["source"], direction=entry["direction"], record=entry["record"]))
    return pairs, dropped


def run_contrast(cfg: ContrastConfig, *, backend: Backend | None = None) -> JobResult:
    """`alignkit data contrast`: a chosen and a rejected answer per prompt, from its two direction variants."""
    validate_config(cfg)
    directions, digest = load_directions(cfg.directions or resource("contrast.yaml"))
    names = [d.name for d in directions]
    if cfg.direction:  # a name of the file's, checked before any model loads
        require_choice("", "direction", cfg.direction, names)
    counts = Counts()
    prompts = unique_prompts(read_prompt_records([cfg.prompts])[:cfg.limit or None], counts)
    units = [prompt_unit(prompt, pick_direction(directions, cfg.direction, cfg.generator.seed,
                                                stable_id(prompt.messages)).name) for prompt in prompts]
    journal = Journal(cfg.output_dir, "contrast", {**result_config(cfg), "directions_digest": digest},
                      outputs=OUTPUTS, if_exists=cfg.if_exists)
    params = cfg.generator.params(n=1)
    by_name = {d.name: d for d in directions}
    generator = open_generator(cfg.generator, journal.cache_path, backend)
    try:
        entries = run_pending(journal, [(unit["id"], unit) for unit in units],
                              lambda chunk: contrast_chunk(generator, params, by_name, cfg.placement,
                                                           cfg.drop_cut_off, chunk),
                              chunk_size=cfg.generator.batch_size, desc="contrast", progress=cfg.progress,
                              backend=generator)
    finally:
        generator.close()
    pairs, dropped = contrast_outputs(entries, counts)
    outputs = {"pairs.jsonl": pairs, "dropped.jsonl": dropped}
    kept = {name: sum(row["direction"] == name for row in pairs) for name in names}
    return journal.finish(outputs, counts, pairs_per_direction=kept)


def prompt_unit(prompt: PromptRecord, direction: str) -> dict:
    return {"id": stable_id(prompt.messages), "prompt": prompt.messages, "source": prompt.metadata["source"],
            "record": own_fields(prompt), "direction": direction}
