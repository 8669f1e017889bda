"""`alignkit data templates`: NLP datasets turned into instructions with templates (the FLAN / T0 recipe).

Each task is a template file (task_templates.py: where its data is, which columns fill which variables, the
option text of each label, several prompt/target templates). Every record of a task is rendered with
`templates_per_record` of its templates, drawn per record, so one task is asked in several wordings.

- Zero-shot and few-shot: a `few_shot_fraction` of training examples get `shots` exemplars, drawn from the
  task's own training split, never the example itself (nor a record with the same inputs), rendered with
  the same template. Exemplars are earlier user/assistant turns of the conversation rather than one long
  prompt: that is how a chat model sees a worked example, and the last user turn stays the question alone.
  (`alignkit sft` with data.train_on: last_assistant trains on the answer only, not on the exemplars'.)
- Chain of thought: a `cot_fraction` of the training examples whose record has a rationale and whose
  template has a cot_target are rendered with cot_prompt/cot_target (the reasoning, then the answer); their
  exemplars are drawn from records with a rationale and rendered the same way.
- Mixing: examples-proportional with a cap, as FLAN mixes: each trained task gives at most `max_per_task`
  of its training records (a seeded subset, the rest counted as over the cap), then all tasks' examples are
  shuffled together under `seed`. Every draw is seeded by the seed, the task and the record, so adding or
  removing a task never changes another task's examples.
- Held-out tasks: a task in `heldout_tasks` is never trained on: its test examples go to heldout.jsonl as
  prompts (messages ending with the user turn) with `task`, `template`, `answer` and `options`, so
  `alignkit generate` then `alignkit score` with the `exact` reward measures accuracy on unseen tasks.
  `answer` is the template's target (the option text when the target is `{{ answer }}`, as in every
  labelled template shipped), i.e. what the prompt asks the model to say. Trained tasks' test examples go
  to valid.jsonl in the same layout; training examples to train.jsonl as SFT `messages`. Evaluation
  prompts use every one of `templates_per_record` drawn templates and `eval_shots` exemplars each.
- Counts, per task and split, are of records: read, kept (each gives `templates_per_record` examples),
  over the cap, and bad, by reason. A held-out task's training split shows as "<task> train (exemplars)":
  read only to lend exemplars (when eval_shots > 0), never written.
- Bad records (a mapped column missing, a label with no option text, a QA answer that is not a span of its
  passage): an error at the record's file and line, as everywhere in alignkit, or with `skip_bad: true`
  counted under their task and split and listed, each with its file:line, in dropped.jsonl.

No model is called, so there is no journal: the job reads, renders, and only then writes each file
atomically; a template naming a variable no record has fails before anything is written. A rerun
rebuilds every file, identical under the same config.
"""
from __future__ import annotations

import os
import random
from dataclasses import dataclass, field

from alignkit.atomic_write import write_json_atomic, write_jsonl_atomic
from alignkit.config import ConfigError, require, require_number, validate_config
from alignkit.construction.counts import Counts, JobResult
from alignkit.construction.generator import JobConfig
from alignkit.construction.rows import sft_row, user_turn
from alignkit.construction.task_templates import (
    TaskFile,
    TaskRecord,
    Template,
    load_task_file,
    read_task,
    render,
)

SHIPPED = [f"configs/data/templates/{name}.yaml" for name in ("nli", "sentiment", "extractive_qa",
                                                                 "summarization", "paraphrase")]
OUTPUTS = ("train.jsonl", "valid.jsonl", "heldout.jsonl", "dropped.jsonl")


@dataclass
class TemplatesConfig(JobConfig):
    tasks: list[str] = field(default_factory=lambda: list(SHIPPED))  # task template files, one per task
    heldout_tasks: list[str] = field(default_factory=list)  # task names never trained on: tests -> heldout.jsonl
    templates_per_record: int = 1  # templates each record is rendered with (at most a task's count)
    few_shot_fraction: float = 0.3  # share of training examples with exemplars; the rest are zero-shot
    shots: int = 2  # exemplars in a few-shot training example
    eval_shots: int = 0  # exemplars in every valid/heldout prompt (0: zero-shot)
    cot_fraction: float = 0.0  # share of eligible training examples with a chain-of-thought target
    max_per_task: int = 0  # cap on each trained task's training records (0: no cap)
    max_eval_per_task: int = 0  # cap on each task's test records (0: no cap)
    seed: int = 0  # every draw: templates, exemplars, zero/few-shot, chain of thought, cap, order
    skip_bad: bool = False  # count bad records in dropped.jsonl instead of stopping at the first

    def validate(self, where: str = "") -> None:
        super().validate(where)
        require(bool(self.tasks) and all(isinstance(t, str) and t.strip() for t in self.tasks), where, "tasks",
                "a list of task template files", self.tasks)
        require(all(isinstance(t, str) for t in self.heldout_tasks), where, "heldout_tasks",
                "a list of task names", self.heldout_tasks)
        for key in ("templates_per_record", "shots"):
            require_number(where, key, getattr(self, key), low=1, whole=True)
        for key in ("eval_shots", "max_per_task", "max_eval_per_task", "seed"):
            require_number(where, key, getattr(self, key), low=0, whole=True)
        for key in ("few_shot_fraction", "cot_fraction"):
            require_number(where, key, getattr(self, key), low=0, high=1)


@dataclass
class Example:
    task: str
    template: str
    prompt: list[dict]  # exemplar turns, then the question as the last user turn
    target: str
    options: list[str]
    shots: int
    cot: bool
    origin: str  # the record's file:line

    def sft(self) -> dict:
        return sft_row(self.prompt, self.target, task=self.task, template=self.template, shots=self.shots,
                       cot=self.cot, origin=self.origin)

    def eval_prompt(self) -> dict:
        return {"messages": self.prompt, "task": self.task, "template": self.template, "answer": self.target,
                "options": self.options, "shots": self.shots, "origin": self.origin}


# ---- the seeded rules, one decision each ----

def chance(fraction: float, *key) -> bool:
    """A seeded coin that comes up with probability `fraction`, the same for the same key in every run."""
    return fraction > 0 and random.Random(repr(key)).random() < fraction


def pick_templates(templates: list[Template], count: int, *key) -> list[Template]:
    """`count` distinct templates drawn for one record, kept in the file's order."""
    chosen = set(random.Random(repr(key)).sample(range(len(templates)), min(count, len(templates))))
    return [t for i, t in enumerate(templates) if i in chosen]


def exemplars(pool: list[TaskRecord], record: TaskRecord, count: int, *key) -> list[TaskRecord]:
    """`count` training records (fewer when the pool runs out) to show as worked examples, drawn without
    replacement: never the example itself, nor a record asking the same thing (a duplicate would hand over
    its answer). Drawn by seeded rejection, so a pool of half a million costs `count` draws, not a scan."""
    rng = random.Random(repr(key))
    chosen: list[TaskRecord] = []
    tried: set[int] = set()
    while len(chosen) < count and len(tried) < len(pool):
        index = rng.randrange(len(pool))
        if index in tried:
            continue
        tried.add(index)
        if pool[index] is not record and pool[index].inputs != record.inputs:
            chosen.append(pool[index])
    return chosen


def draw(items: list, count: int, *key) -> list:
    """A seeded subset of `count` items (all when fewer), in their original order."""
    if count >= len(items):
        return list(items)
    chosen = set(random.Random(repr(key)).sample(range(len(items)), count))
    return [item for i, item in enumerate(items) if i in chosen]


def turns(task: TaskFile, template: Template, record: TaskRecord, shown: list[TaskRecord],
          cot: bool) -> tuple[list[dict], str]:
    """The prompt (exemplar turns, then the question) and the target of one example."""
    prompt, target = ("cot_prompt", "cot_target") if cot else ("prompt", "target")
    if prompt not in template.compiled:
        prompt = "prompt"
    messages: list[dict] = []
    for exemplar in shown:
        messages += user_turn(render(task, template, prompt, exemplar.variables))
        messages.append({"role": "assistant", "content": render(task, template, target, exemplar.variables)})
    messages += user_turn(render(task, template, prompt, record.variables))
    return messages, render(task, template, target, record.variables)


def task_examples(task: TaskFile, records: list[TaskRecord], train: list[TaskRecord], cfg: TemplatesConfig,
                  split: str) -> list[Example]:
    """Every example of one split of one task: training examples mix zero/few-shot and chain of thought by
    the config's fractions; evaluation examples all get `eval_shots` exemplars and plain targets."""
    # chain-of-thought examples show worked examples the same way, so only records with a rationale
    pools = {False: train, True: [r for r in train if r.variables["rationale"]]}
    examples = []
    for record in records:
        key = (cfg.seed, task.task, split, record.index)
        for template in pick_templates(task.templates, cfg.templates_per_record, *key, "templates"):
            cot = (split == "train" and template.has_cot and bool(record.variables["rationale"])
                   and chance(cfg.cot_fraction, *key, template.name, "cot"))
            shots = cfg.eval_shots if split == "test" else (
                cfg.shots if chance(cfg.few_shot_fraction, *key, template.name, "few-shot") else 0)
            shown = exemplars(pools[cot], record, shots, *key, template.name, "exemplars")
            prompt, target = turns(task, template, record, shown, cot)
            examples.append(Example(task.task, template.name, prompt, target, task.options, len(shown), cot,
                                    record.origin))
    return examples


# ---- the job ----

def load_tasks(cfg: TemplatesConfig) -> list[TaskFile]:
    tasks = [load_task_file(path) for path in cfg.tasks]
    names = [t.task for t in tasks]
    for task in tasks:
        if names.count(task.task) > 1:
            raise ConfigError(f"tasks: two template files name the task {task.task!r}; task names must differ")
    for name in cfg.heldout_tasks:
        if name not in names:
            raise ConfigError(f"heldout_tasks: {name!r} is not one of the tasks ({', '.join(names)})")
    if set(names) <= set(cfg.heldout_tasks):
        raise ConfigError("heldout_tasks: holds every task; nothing would be left to train on")
    return tasks


def run_templates(cfg: TemplatesConfig) -> JobResult:
    validate_config(cfg)
    tasks = load_tasks(cfg)
    counts = Counts()
    train, valid, heldout, dropped, per_task = [], [], [], [], {}
    for task in tasks:
        held = task.task in cfg.heldout_tasks
        # A held-out task's training split only lends exemplars; with none asked for it is not read.
        splits = ("test",) if held and cfg.eval_shots == 0 else ("train", "test")
        records, bad = read_task(task, splits, skip_bad=cfg.skip_bad)
        steps = {"input": f"{task.task} input", "train": f"{task.task} train" + (" (exemplars)" if held else ""),
                 "test": f"{task.task} test"}
        for split, error in bad:
            counts.drop(steps[split], f"{error.field}: {error.reason}")
            dropped.append({"task": task.task, "split": split, "where": error.where, "field": error.field,
                            "reason": error.reason})
        pool = records.get("train", [])
        kept_train = []
        if not held:
            kept_train = _capped(counts, steps["train"], pool, cfg.max_per_task, cfg.seed, task.task, "train")
        elif pool:
            counts.keep(steps["train"], len(pool))
        kept_test = _capped(counts, steps["test"], records["test"], cfg.max_eval_per_task, cfg.seed, task.task, "test")
        task_train = task_examples(task, kept_train, pool, cfg, "train")
        task_test = task_examples(task, kept_test, pool, cfg, "test")
        train += task_train
        (heldout if held else valid).extend(task_test)
        per_task[task.task] = {"template_file": task.file, "held_out": held, "train_examples": len(task_train),
                               "few_shot": sum(e.shots > 0 for e in task_train), "cot": sum(e.cot for e in task_train),
                               ("heldout_examples" if held else "valid_examples"): len(task_test)}
    random.Random(repr((cfg.seed, "order"))).shuffle(train)
    outputs = {"train.jsonl": [e.sft() for e in train], "valid.jsonl": [e.eval_prompt() for e in valid],
               "heldout.jsonl": [e.eval_prompt() for e in heldout], "dropped.jsonl": dropped}
    for name, rows in outputs.items():
        write_jsonl_atomic(os.path.join(cfg.output_dir, name), rows)
    result = JobResult(cfg.output_dir, {name: len(rows) for name, rows in outputs.items()}, counts)
    write_json_atomic(os.path.join(cfg.output_dir, "summary.json"), {**result.summary(), "tasks": per_task})
    return result


def _capped(counts: Counts, step: str, records: list[TaskRecord], cap: int, *key) -> list[TaskRecord]:
    """Examples-proportional mixing with a cap: a task keeps all its records up to `cap`, a seeded subset above."""
    kept = draw(records, cap, *key, "cap") if cap else list(records)
    if cap:
        counts.declare(step, ["over cap"])
    counts.keep(step, len(kept))
    if len(records) > len(kept):
        counts.drop(step, "over cap", len(records) - len(kept))
    return kept
