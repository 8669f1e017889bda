"""`alignkit data decontaminate`: records that share word n-grams with evaluation sets removed.

The evaluation side: every string value of every record of each file in `eval_files` (JSON, JSONL,
Parquet or CSV, read by the data layer), found recursively through objects and lists, so any layout works
as it is: LLMBar's input and both outputs, IFEval's prompt and the strings of its kwargs, MT-Bench's turns.
Each string is normalised like dedup's text (case, punctuation and spacing folded away,
`filters.normalise`) and cut into word n-grams, n = `ngram`: 13 by default, the length GPT-3's training
data filter used, long enough that sharing one is almost never a coincidence.

The record side: the text `text` picks, normalised and cut the same way. A record is contaminated when it
shares at least `min_matches` distinct n-grams with the evaluation texts and, when `min_fraction` > 0, at
least that fraction of its distinct n-grams are among them (0.5: at least half the record is evaluation
text, which lets a record that quotes a phrase through).

Short texts: a text (a record's or an evaluation string) with fewer than n words has no n-gram, so it is
one gram, its whole normalised text. A short record is contaminated when an evaluation string is the same
text (an MT-Bench follow-up question used as a prompt); a short evaluation string is found only as a whole
record, never inside a longer one (a smaller n finds it there). Mind `text: response` on data with one-word
answers: "yes" is a whole string somewhere in most evaluation sets.

Attribution: a removed record is counted against the evaluation file it shares the most n-grams with (the
first listed on a tie). dropped.jsonl keeps that file, the evaluation record holding the first shared
n-gram, that n-gram (the only evaluation text written anywhere) and the match counts; summary.json gives
per evaluation file the strings and n-grams indexed and the removed records sharing an n-gram with it.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Iterator, Sequence

from alignkit.config import require, require_choice, require_number
from alignkit.construction.counts import Counts, JobResult
from alignkit.construction.quality import (DROPPED, KEPT, TEXTS, InputConfig, check_output_dir, compared_text,
                                           dropped_row, location, read_items, words, write_outputs)
from alignkit.construction.stats import kept_stats
from alignkit.data.readers import read_records

STEP = "decontaminate"


@dataclass
class DecontaminateConfig(InputConfig):
    eval_files: list[str] = field(default_factory=list)  # evaluation files (JSON, JSONL, Parquet, CSV)
    text: str = "all"  # what is compared: prompt (user turns) | response (assistant turns, chosen) | all
    ngram: int = 13  # words per n-gram
    min_matches: int = 1  # distinct n-grams a record must share with the evaluation texts to be removed
    min_fraction: float = 0.0  # and, when > 0, the least fraction of its distinct n-grams that must be shared

    def validate(self, where: str = "") -> None:
        super().validate(where)
        require(len(self.eval_files) > 0, where, "eval_files", "a list of at least one evaluation file",
                self.eval_files)
        for index, path in enumerate(self.eval_files):
            local = os.path.expanduser(path)
            require(os.path.exists(local), where, f"eval_files[{index}]", "an existing file (not found)", path)
            require(not os.path.isdir(local), where, f"eval_files[{index}]", "a file, not a folder", path)
            require(path not in self.eval_files[:index], where, f"eval_files[{index}]", "listed once", path)
        require_choice(where, "text", self.text, TEXTS)
        require_number(where, "ngram", self.ngram, low=1, whole=True)
        require_number(where, "min_matches", self.min_matches, low=1, whole=True)
        require_number(where, "min_fraction", self.min_fraction, low=0, high=1)


def string_values(value: Any) -> Iterator[str]:
    """Every string in `value`, through objects (their values, not their keys) and lists, in order."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from string_values(item)
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from string_values(item)


def ngrams(text: str, n: int) -> list[str]:
    """The distinct word n-grams of `text`'s normalised words, in order; a text of fewer than n words is one
    gram, itself; a text without words has none."""
    found = words(text)
    if len(found) < n:
        return [" ".join(found)] if found else []
    return list(dict.fromkeys(" ".join(found[start:start + n]) for start in range(len(found) - n + 1)))


def is_contaminated(shared: int, total: int, *, min_matches: int, min_fraction: float) -> bool:
    """The rule: at least `min_matches` shared n-grams and, when `min_fraction` > 0, that share of all of them."""
    return total > 0 and shared >= min_matches and (min_fraction == 0 or shared / total >= min_fraction)


@dataclass
class EvalIndex:
    files: list[str]
    # n-gram -> (file index, where in that file it first occurs), once per file that holds it, in file order
    grams: dict[str, list[tuple[int, str]]] = field(default_factory=dict)
    strings: list[int] = field(default_factory=list)  # strings read per file
    distinct: list[int] = field(default_factory=list)  # distinct n-grams per file

    def add(self, file_index: int, where: str, text: str, n: int) -> None:
        for gram in ngrams(text, n):
            holders = self.grams.setdefault(gram, [])
            if not holders or holders[-1][0] != file_index:  # files are read one after another
                holders.append((file_index, where))
                self.distinct[file_index] += 1


def build_index(paths: Sequence[str], n: int) -> EvalIndex:
    index = EvalIndex(list(paths), strings=[0] * len(paths), distinct=[0] * len(paths))
    for file_index, path in enumerate(paths):
        for record in read_records(path):
            for text in string_values(record.data):
                index.strings[file_index] += 1
                index.add(file_index, location(record), text, n)
    return index


@dataclass
class Overlap:
    shared: list[str]  # the record's n-grams found in the evaluation texts, in the record's order
    total: int  # the record's distinct n-grams
    per_file: list[int]  # shared n-grams held by each evaluation file

    def attributed(self) -> int:
        """The file sharing the most n-grams (the first listed on a tie)."""
        return max(range(len(self.per_file)), key=lambda file_index: (self.per_file[file_index], -file_index))


def overlap(text: str, index: EvalIndex, n: int) -> Overlap:
    grams = ngrams(text, n)
    shared = [gram for gram in grams if gram in index.grams]
    per_file = [0] * len(index.files)
    for gram in shared:
        for file_index, _ in index.grams[gram]:
            per_file[file_index] += 1
    return Overlap(shared, len(grams), per_file)


def evidence(found: Overlap, index: EvalIndex) -> dict:
    """What dropped.jsonl says a record matched: the file it is counted against, where the first n-gram they
    share is in it, that n-gram, and the counts."""
    file_index = found.attributed()
    gram, where = next((gram, where) for gram in found.shared for holder, where in index.grams[gram]
                       if holder == file_index)
    return {"eval_file": index.files[file_index], "eval_record": where, "ngram": gram,
            "ngrams_shared": len(found.shared), "ngrams": found.total,
            "fraction": len(found.shared) / found.total,
            "per_file": {index.files[f]: count for f, count in enumerate(found.per_file) if count}}


def run_decontaminate(config: DecontaminateConfig, *, tokenizer=None) -> JobResult:
    """`alignkit data decontaminate`; `tokenizer`: one already loaded (tests), instead of `config.tokenizer`."""
    check_output_dir(config.output_dir)
    items = read_items(config.data, progress=config.progress)
    texts = [compared_text(item, config.text) for item in items]
    index = build_index(config.eval_files, config.ngram)
    counts = Counts()
    reasons = [f"matches {path}" for path in config.eval_files]
    counts.declare(STEP, reasons)
    kept, dropped = [], []
    matched_per_file = [0] * len(config.eval_files)
    shared_but_kept = 0
    for item, text in zip(items, texts):
        found = overlap(text, index, config.ngram)
        if not is_contaminated(len(found.shared), found.total, min_matches=config.min_matches,
                               min_fraction=config.min_fraction):
            counts.keep(STEP)
            kept.append(item)
            shared_but_kept += bool(found.shared)
            continue
        counts.drop(STEP, reasons[found.attributed()])
        dropped.append(dropped_row(item, "contaminated", evidence(found, index)))
        for file_index, count in enumerate(found.per_file):
            matched_per_file[file_index] += bool(count)
    stats = kept_stats(config, kept, tokenizer=tokenizer, title="kept")
    eval_summary = {path: {"strings": index.strings[f], "ngrams": index.distinct[f],
                           "records_removed_sharing": matched_per_file[f]}
                    for f, path in enumerate(config.eval_files)}
    return write_outputs(config.output_dir, counts, {KEPT: [item.record.data for item in kept], DROPPED: dropped},
                         {"eval_files": eval_summary, "kept_sharing_below_rule": shared_but_kept, "stats": stats})
