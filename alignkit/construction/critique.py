"""Constitutional critique and revision (`alignkit data critique`): responses rewritten against written principles.

The method (after Bai et al., 2022, "Constitutional AI"): take a response, draw one principle from a
principles file, ask the model to critique the response against it, then to revise the response in the
light of that critique; the revision becomes the response the next round works on. The final revisions
are SFT data (`sft.jsonl`); each final revision against the response it started from is a preference
pair (`pairs.jsonl`, chosen = revised, rejected = original).

Choices made here, and why:
- The model sees one growing conversation, as in the paper: the user's prompt, the response as its own
  assistant turn, the critique request; then its critique as an assistant turn and the revision request.
  The response is critiqued as the model's own words, and the revision sees the critique it answers.
  Requests are rendered from the principles file's `critique_template` / `revision_template` (jinja2),
  so the wording is the user's to change.
- A principle is drawn for every round from the unit's id, the round and the generator seed (a hash, not
  a shared random stream), so the draw does not depend on the order, batching or resumption of the job.
  Rounds draw independently (with replacement), as the paper samples a principle per step.
- A round fails, and is counted under its reason, when: a call errors (`critique error`, `revision
  error`); the critique or revision is empty; the revision was cut off at max_tokens (`drop_cut_off`); the
  revision equals the response it revises or any earlier version of it, whitespace aside (`revision
  unchanged`: a return to an earlier version is no revision either); or it echoes the request
  (`revision echoes the request`: it holds one of the file's `markers` at the start of a line, the
  principle's request text, or nothing but the critique). Nothing is repaired: a failed round's text is
  kept only in dropped.jsonl. A cut-off critique is still used: the revision is what becomes data.
- The first failed round ends a unit's chain. A unit whose round 1 fails is dropped; one that fails later
  keeps its last good revision (its row says where it stopped). So `round 1` kept = rows written, and a
  later round's drops are units that kept an earlier revision.
- Input: a responses file (what `alignkit generate` writes: the prompt as `messages` or `prompt`, and a
  `response`; or any conversation ending with an assistant turn, which is then the response), or a
  prompts file the generator answers first. An input response that errored, is empty or was cut off is
  dropped and counted as a failed sample would be; a repeated (prompt, response) is dropped as `duplicate`.
- Resumability: every model call goes through `journal.run_pending`; one unit per response, id =
  stable_id(prompt messages, response); a sampled response is its own unit first (id = stable_id(prompt
  messages)). Outputs and counts are built from the journal entries alone when the job ends.

"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

from alignkit.config import require, require_number, validate_config
from alignkit.construction.counts import Counts, JobResult
from alignkit.construction.filters import completion_failure, same_text, squash
from alignkit.construction.generator import GeneratorConfig, JobConfig, first_replies, open_generator, resource
from alignkit.construction.inputs import own_fields, unique_prompts
from alignkit.construction.journal import Journal, result_config, run_pending
from alignkit.stable_ids import draw, stable_id
from alignkit.construction.prompt_files import compile_template, named_entries, read_yaml_resource, text_key
from alignkit.construction.rows import pair_row, sft_row
from alignkit.data.errors import DataError, describe_type
from alignkit.data.prompts import PromptRecord, read_prompt_records
from alignkit.generation.backend import Backend, Completion, SamplingParams

OUTPUTS = ("sft.jsonl", "pairs.jsonl", "dropped.jsonl")
ROUND_REASONS = ("critique error", "critique empty", "revision error", "revision empty", "revision cut off",
                 "revision unchanged", "revision echoes the request")


@dataclass
class CritiqueConfig(JobConfig):
    responses: str = ""  # responses to revise (as `alignkit generate` writes them); or set prompts
    prompts: str = ""  # prompts the generator answers first, then revises; or set responses
    principles: str = ""  # principles file (YAML); "" = alignkit's own (construction/resources/principles.yaml)
    rounds: int = 2  # critique-and-revision rounds per response, each with a freshly drawn principle
    drop_cut_off: bool = True  # a response or revision cut off at max_tokens fails (false: used as it is)
    limit: int = 0  # use only the first N input records (0: all)
    generator: GeneratorConfig = field(default_factory=GeneratorConfig)

    def validate(self, where: str = "") -> None:
        super().validate(where)
        for key in ("responses", "prompts", "principles"):
            require(isinstance(getattr(self, key), str), where, key, "a path (a string)", getattr(self, key))
        require(bool(self.responses.strip()) != bool(self.prompts.strip()), where, "responses",
                "set, or else prompts set (exactly one of the two)",
                f"responses={self.responses!r}, prompts={self.prompts!r}")
        require_number(where, "rounds", self.rounds, low=1, high=16, whole=True)
        require_number(where, "limit", self.limit, low=0, whole=True)


# ----------------------------------------------------------------------------- the principles file

@dataclass(frozen=True)
class Principle:
    name: str
    critique: str  # what to look for in the response
    revision: str  # how to rewrite it


@dataclass(frozen=True)
class Constitution:
    principles: tuple[Principle, ...]
    critique_template: Any  # jinja2; {{ request }} is the principle's critique request, {{ name }} its name
    revision_template: Any  # the same, with the revision request
    markers: tuple[str, ...]  # the templates' labels: a revision holding one at a line start echoes the prompt
    digest: str  # of the file's content: a job's journal refuses to resume after the file changed


def load_constitution(path: str) -> Constitution:
    """The principles file at `path`; a missing or malformed key is a one-line DataError naming file and key."""
    tree = read_yaml_resource(path, ("critique_template", "revision_template", "markers", "principles"))
    entries = named_entries(tree, path, "principles", ("critique", "revision"))
    templates = {key: compile_template(text_key(tree, path, key), f"{path}: {key}", ("request", "name"))
                 for key in ("critique_template", "revision_template")}
    markers = tree.get("markers", [])
    if not isinstance(markers, list) or not all(isinstance(m, str) and m.strip() for m in markers):
        raise DataError(f"{path}: markers: must be a list of non-empty strings, got {markers!r:.80}")
    principles = tuple(Principle(e["name"], e["critique"].strip(), e["revision"].strip()) for e in entries)
    return Constitution(principles, templates["critique_template"], templates["revision_template"],
                        tuple(m.strip() for m in markers),
                        stable_id([vars(p) for p in principles], {key: tree[key] for key in templates}, markers))


def render_request(template, principle: Principle, request: str) -> str:
    return template.render(request=request, name=principle.name).strip()


# ----------------------------------------------------------------------------- rules (pure)

def pick_principle(principles: Sequence[Principle], seed: int, unit_id: str, round_number: int) -> Principle:
    """The principle of one round: a hash of (seed, unit id, round), the same in every run and batching."""
    return principles[draw(len(principles), seed, unit_id, round_number)]


def critique_conversation(prompt: list[dict], response: str, request: str) -> list[dict]:
    """The prompt, the response as the assistant's own turn, then the critique request."""
    return [*prompt, {"role": "assistant", "content": response}, {"role": "user", "content": request}]


def revision_conversation(critique_asked: list[dict], critique: str, request: str) -> list[dict]:
    """The critique conversation, the model's critique, then the revision request."""
    return [*critique_asked, {"role": "assistant", "content": critique}, {"role": "user", "content": request}]


def echoes_request(revision: str, critique: str, principle: Principle, markers: Sequence[str]) -> bool:
    """True when the revision copies the prompt's scaffolding rather than rewriting the response: a marker at
    the start of a line, the principle's own request text, or nothing but the critique."""
    lines = [line.strip().lower() for line in revision.splitlines()]
    if any(line.startswith(marker.lower()) for marker in markers for line in lines):
        return True
    flat = squash(revision).lower()
    if any(squash(text).lower() in flat for text in (principle.critique, principle.revision)):
        return True
    return flat == squash(critique).lower()


def revision_failure(completion: Completion, versions: Sequence[str], critique: str, principle: Principle,
                     markers: Sequence[str], drop_cut_off: bool) -> str | None:
    """Why a revision cannot become the response (a reason of ROUND_REASONS), or None. `versions`: the
    original response and every revision since."""
    problem = completion_failure(completion.text, completion.finish_reason, keep_cut_off=not drop_cut_off)
    if problem:
        return f"revision {problem}"
    if any(same_text(completion.text, version) for version in versions):
        return "revision unchanged"
    if echoes_request(completion.text, critique, principle, markers):
        return "revision echoes the request"
    return None


# ----------------------------------------------------------------------------- the rounds (model calls)

@dataclass
class _Chain:
    unit: dict  # the payload: id, prompt, original, source, record
    versions: list[str]  # the original, then each accepted revision
    rounds: list[dict] = field(default_factory=list)  # what each round asked and got, failed ones included
    live: bool = True


def revise_chunk(backend: Backend, params: SamplingParams, constitution: Constitution, seed: int, rounds: int,
                 drop_cut_off: bool, units: list[dict]) -> list[dict]:
    """Every round for a chunk of units, each round's critiques in one batch and its revisions in another;
    one journal entry per unit."""
    chains = [_Chain(unit, [unit["original"]]) for unit in units]
    for round_number in range(1, rounds + 1):
        live = [chain for chain in chains if chain.live]
        if not live:
            break
        asked = []
        for chain in live:
            principle = pick_principle(constitution.principles, seed, chain.unit["id"], round_number)
            request = render_request(constitution.critique_template, principle, principle.critique)
            asked.append(critique_conversation(chain.unit["prompt"], chain.versions[-1], request))
            chain.rounds.append({"principle": principle.name, "critique": None, "revision": None, "failure": None})
        critiques = first_replies(backend, asked, params)
        revising = []
        for chain, conversation, reply in zip(live, asked, critiques):
            step = chain.rounds[-1]
            step["critique"] = reply.text
            problem = completion_failure(reply.text, reply.finish_reason, keep_cut_off=True)  # a cut-off critique still says what to fix
            if problem:
                _fail(chain, f"critique {problem}", reply)
                continue
            principle = _named(constitution, step["principle"])
            request = render_request(constitution.revision_template, principle, principle.revision)
            revising.append((chain, principle, revision_conversation(conversation, reply.text, request)))
        revisions = first_replies(backend, [conversation for _, _, conversation in revising], params)
        for (chain, principle, _), reply in zip(revising, revisions):
            step = chain.rounds[-1]
            step["revision"] = reply.text
            failure = revision_failure(reply, chain.versions, step["critique"], principle, constitution.markers,
                                       drop_cut_off)
            if failure:
                _fail(chain, failure, reply)
            else:
                chain.versions.append(reply.text)
    return [{key: chain.unit[key] for key in ("prompt", "original", "source", "record")} | {"rounds": chain.rounds}
            for chain in chains]


def _fail(chain: _Chain, reason: str, reply: Completion) -> None:
    chain.rounds[-1]["failure"] = reason
    if reply.finish_reason == "error":
        chain.rounds[-1]["error"] = reply.error or "no detail given"
    chain.live = False


def _named(constitution: Constitution, name: str) -> Principle:
    return next(p for p in constitution.principles if p.name == name)


# ----------------------------------------------------------------------------- outputs (from the journal)

def critique_outputs(entries: list[dict], rounds: int, counts: Counts) -> tuple[list[dict], list[dict], list[dict]]:
    """(sft rows, pair rows, dropped rows) of the journaled units; counts each round's keeps and drops."""
    sft, pairs, dropped = [], [], []
    for number in range(1, rounds + 1):
        counts.declare(f"round {number}", ROUND_REASONS)
    for entry in entries:
        good = [step for step in entry["rounds"] if step["failure"] is None]
        for number, step in enumerate(entry["rounds"], start=1):
            if step["failure"] is None:
                counts.keep(f"round {number}")
                continue
            counts.drop(f"round {number}", step["failure"])
            dropped.append({"id": entry["id"], "source": entry["source"], "step": f"round {number}",
                            "reason": step["failure"], "prompt": entry["prompt"],
                            "response": good[-1]["revision"] if good else entry["original"],
                            **{key: step[key] for key in ("principle", "critique", "revision", "error") if key in step},
                            "kept_earlier_revision": bool(good)})
        if not good:
            continue
        failed = entry["rounds"][len(good)] if len(good) < len(entry["rounds"]) else None
        fields = {"id": entry["id"], "source": entry["source"], "principles": [s["principle"] for s in good],
                  "critiques": [s["critique"] for s in good]}
        final = good[-1]["revision"]
        sft.append(sft_row(entry["prompt"], final, **fields, original=entry["original"],
                           revisions=[s["revision"] for s in good],
                           stopped=f"round {len(good) + 1}: {failed['failure']}" if failed else None,
                           record=entry["record"]))
        pairs.append(pair_row(entry["prompt"], final, entry["original"], **fields, record=entry["record"]))
    return sft, pairs, dropped


# ----------------------------------------------------------------------------- the job

def run_critique(cfg: CritiqueConfig, *, backend: Backend | None = None) -> JobResult:
    """`alignkit data critique`: revise every response against drawn principles for `cfg.rounds` rounds."""
    validate_config(cfg)
    constitution = load_constitution(cfg.principles or resource("principles.yaml"))
    counts = Counts()
    if cfg.responses:  # read and checked before any model loads
        units, dropped = response_units(read_prompt_records([cfg.responses])[:cfg.limit or None],
                                        cfg.drop_cut_off, counts)
    else:
        prompts = unique_prompts(read_prompt_records([cfg.prompts])[:cfg.limit or None], counts)
    journal = Journal(cfg.output_dir, "critique", {**result_config(cfg), "principles_digest": constitution.digest},
                      outputs=OUTPUTS, if_exists=cfg.if_exists)
    params = cfg.generator.params(n=1)
    generator = open_generator(cfg.generator, journal.cache_path, backend)
    try:
        if not cfg.responses:
            units, dropped = sampled_units(journal, generator, prompts, cfg, counts)
        entries = run_pending(journal, [(unit["id"], unit) for unit in units],
                              lambda chunk: revise_chunk(generator, params, constitution, cfg.generator.seed,
                                                         cfg.rounds, cfg.drop_cut_off, chunk),
                              chunk_size=cfg.generator.batch_size, desc="critique", progress=cfg.progress,
                              backend=generator)
    finally:
        generator.close()
    sft, pairs, round_dropped = critique_outputs(entries, cfg.rounds, counts)
    outputs = {"sft.jsonl": sft, "pairs.jsonl": pairs, "dropped.jsonl": dropped + round_dropped}
    return journal.finish(outputs, counts, rounds_completed=rounds_completed(entries, cfg.rounds))


def rounds_completed(entries: list[dict], rounds: int) -> dict[str, int]:
    """How many units ended with 0, 1, ... `rounds` good revisions."""
    tally = {str(k): 0 for k in range(rounds + 1)}
    for entry in entries:
        tally[str(sum(step["failure"] is None for step in entry["rounds"]))] += 1
    return tally


def response_unit(prompt: PromptRecord, response: str) -> dict:
    return {"id": stable_id(prompt.messages, response), "prompt": prompt.messages, "original": response,
            "source": prompt.metadata["source"], "record": own_fields(prompt)}


def response_units(records: list[PromptRecord], drop_cut_off: bool, counts: Counts) -> tuple[list[dict], list[dict]]:
    """Units of a responses file, and the dropped rows of the records that cannot be revised."""
    counts.declare("responses", ("duplicate", "response error", "response empty", "response cut off"))
    units, dropped, seen = [], [], set()
    for record in records:
        response = record_response(record)
        item = response_unit(record, response)
        reason = completion_failure(response, record_finish_reason(record), keep_cut_off=not drop_cut_off)
        reason = "duplicate" if item["id"] in seen else (f"response {reason}" if reason else None)
        if reason:
            counts.drop("responses", reason)
            dropped.append({"id": item["id"], "source": item["source"], "step": "responses", "reason": reason,
                            "prompt": item["prompt"], "response": response})
            continue
        seen.add(item["id"])
        counts.keep("responses")
        units.append(item)
    return units, dropped


def record_response(record: PromptRecord) -> str:
    """A record's `response`, else its trailing assistant turn; a one-line error naming file, line and field."""
    if "response" in record.metadata:
        response = record.metadata["response"]
        if not isinstance(response, str):
            raise record.error("response", f"must be a string, got {describe_type(response)}")
        return response
    if "reference" in record.metadata:
        return record.metadata["reference"]
    raise record.error("response", "missing; each record needs a response to revise "
                                   "(a `response` field, or a conversation ending with an assistant turn)")


def record_finish_reason(record: PromptRecord) -> str:
    """How the record's response ended, as `alignkit generate` writes it ("stop" when not said)."""
    finish = record.metadata.get("finish_reason")
    if finish is None:
        return "stop"
    if not isinstance(finish, str):
        raise record.error("finish_reason", f"must be a string, got {describe_type(finish)}")
    return finish


def sampled_units(journal: Journal, backend: Backend, prompts: list[PromptRecord], cfg: CritiqueConfig,
                  counts: Counts) -> tuple[list[dict], list[dict]]:
    """Answer each prompt once (journaled), then the units of the answers that can be revised."""
    params = cfg.generator.params(n=1)

    def answer(chunk: list[PromptRecord]) -> list[dict]:
        replies = first_replies(backend, [p.messages for p in chunk], params)
        return [sample_entry(reply, cfg.drop_cut_off) for reply in replies]

    entries = run_pending(journal, [(stable_id(p.messages), p) for p in prompts], answer,
                          chunk_size=cfg.generator.batch_size, desc="sample", progress=cfg.progress,
                          backend=backend)
    counts.declare("sample", ("response error", "response empty", "response cut off"))
    units, dropped = [], []
    for prompt, entry in zip(prompts, entries):
        if entry["failure"]:
            counts.drop("sample", entry["failure"])
            dropped.append({"id": entry["id"], "source": prompt.metadata["source"], "step": "sample",
                            "reason": entry["failure"], "prompt": prompt.messages, "response": entry["response"],
                            **({"error": entry["error"]} if "error" in entry else {})})
            continue
        counts.keep("sample")
        units.append(response_unit(prompt, entry["response"]))
    return units, dropped


def sample_entry(reply: Completion, drop_cut_off: bool) -> dict:
    problem = completion_failure(reply.text, reply.finish_reason, keep_cut_off=not drop_cut_off)
    entry = {"response": reply.text, "finish_reason": reply.finish_reason,
             "failure": f"response {problem}" if problem else None}
    if reply.finish_reason == "error":
        entry["error"] = reply.error or "no detail given"
    return entry



