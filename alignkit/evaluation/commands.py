"""The evaluation commands of `alignkit`, as Python functions the CLI calls one-to-one.

Each reads its input files (errors name file, line and field), runs one evaluation module through
a judge backend behind the SQLite cache, writes `results.json` (see `run_files`) and per-item JSONL
files atomically into `out_dir`, optionally the HTML report, and prints a summary ending with the
cache hits and new judge calls. A run in which every judgment failed still writes its results, then
raises `AllJudgmentsFailed`: a rate computed from nothing must not pass for a result.
"""
from __future__ import annotations

import itertools
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from alignkit.atomic_write import write_json_atomic, write_jsonl_atomic
from alignkit.data.errors import DataError
from alignkit.data.readers import read_text
from alignkit.evaluation import grading, importers, leaderboard as bt, meta_eval, winrate
from alignkit.evaluation.report import write_report
from alignkit.evaluation.run_files import load_outputs, match_by_key, merge_sections, model_name, results_document
from alignkit.generation.backend import SamplingParams
from alignkit.generation.specs import BackendOptions, backend_stats, describe_stats, open_backend
from alignkit.judges import RUBRIC_SCALE, SINGLE_SCALE, JudgeConfig, OrderVerdict, PairItem, PairJudgment, Strategy, judge_pairs

CACHE_NAME = "judge_cache.sqlite"
_TO_MODEL_TERMS = {"a": "model", "b": "reference", "tie": "tie", None: None}


class AllJudgmentsFailed(ValueError):
    """Every judgment of a run failed (backend errors or unparseable replies); the results say which."""


@dataclass
class JudgeOptions:
    """How to judge: the backend spec plus the decoding and strategy settings shared by every command."""

    spec: str = "embedded"
    strategy: str = "plain"
    max_tokens: int | None = None  # None: 32 for verdict-only replies, 512 when the judge reasons (cot, swap, grading)
    aux_max_tokens: int = 256  # generated metrics / reference answers
    temperature: float = 0.0
    seed: int | None = None
    both_orders: bool = True
    allow_tie: bool = False
    parse_retries: int = 0
    use_logprobs: bool = False
    verdict_pattern: str | None = None  # a judge's own verdict format (JudgeConfig.verdict_pattern)
    batch_size: int = 16  # judge prompts per backend call
    cache: str | None = None  # None: <out_dir>/judge_cache.sqlite
    progress: bool = True
    backend: BackendOptions = field(default_factory=BackendOptions)

    def judge_config(self, strategy: str | None = None) -> JudgeConfig:
        name = strategy or self.strategy
        reasons = Strategy.parse(name).cot or Strategy.parse(name).swap
        params = SamplingParams(max_tokens=self.max_tokens or (512 if reasons else 32), temperature=self.temperature,
                                seed=self.seed, logprobs=5 if self.use_logprobs else None)
        aux = SamplingParams(max_tokens=self.aux_max_tokens, temperature=self.temperature, seed=self.seed)
        return JudgeConfig(strategy=name, params=params, aux_params=aux, both_orders=self.both_orders,
                           allow_tie=self.allow_tie, max_parse_retries=self.parse_retries,
                           use_logprobs=self.use_logprobs, batch_size=self.batch_size,
                           verdict_pattern=self.verdict_pattern)

    def grading_config(self, use_reference: bool = True) -> grading.GradingConfig:
        params = SamplingParams(max_tokens=self.max_tokens or 512, temperature=self.temperature, seed=self.seed)
        return grading.GradingConfig(params, self.parse_retries, use_reference, self.batch_size)

    def open(self, out_dir: str | os.PathLike, desc: str = "judging"):
        cache = self.cache or os.path.join(out_dir, CACHE_NAME)
        return open_backend(self.spec, self.backend, cache=cache, progress=self.progress, desc=desc)


# ----------------------------------------------------------------------------- shared pieces

def is_backend_error(failure: str) -> bool:
    """Failures come from the backend (HTTP error, timeout) or from the reply (unparseable)."""
    return "backend error" in failure


def failure_summary(failures: Sequence[str | None]) -> dict:
    """Counts and rates of parse failures and backend errors among judgments (None = succeeded)."""
    failed = [f for f in failures if f is not None]
    errors = sum(is_backend_error(f) for f in failed)
    n = len(failures)
    reasons = Counter(f if len(f) <= 120 else f[:117] + "..." for f in failed)
    return {"n_judgments": n, "n_failed": len(failed), "n_parse_failures": len(failed) - errors,
            "parse_failure_rate": (len(failed) - errors) / n if n else 0.0, "n_backend_errors": errors,
            "backend_error_rate": errors / n if n else 0.0,
            "top_failures": [[reason, count] for reason, count in reasons.most_common(5)]}


def _judgment_line(key: str, judgment: PairJudgment, names: tuple[str, str], to_terms: dict) -> dict:
    """A compact, auditable record: every order's verdict, failure and the judge's raw replies."""
    def order_record(result: OrderVerdict) -> dict:
        record = {"verdict": to_terms[result.verdict], "failure": result.failure,
                  "replies": result.judge.outputs if result.judge else []}
        if result.decision is not None:
            record.update(initial_verdict=to_terms[result.initial_verdict], decision_replies=result.decision.outputs)
        return record
    line = {"key": key, "strategy": judgment.strategy, "a": names[0], "b": names[1],
            "orders": {order: order_record(result) for order, result in judgment.orders.items()}}
    for name in ("metrics", "reference"):
        log = getattr(judgment, name)
        if log is not None:
            line[f"generated_{name}"] = log.outputs[-1] if log.outputs else None
    return line


def _all_failed(n_judged: int, n_ok: int) -> int | None:
    """`n_judged` when there were judgments and none succeeded, else None."""
    return n_judged if n_judged and not n_ok else None


def finish_run(command: str, out_dir: Path, backend, meta: dict, sections: dict, details: dict, *,
               all_failed: int | None, report: bool, title: str) -> dict:
    """The end of every judging command: the judge's cache figures into meta, results.json (and the report)
    written, and AllJudgmentsFailed raised after writing when no judgment could be read."""
    stats = backend_stats(backend) if backend is not None else {}
    if "cache" in stats:
        meta.update(judge=stats["model_id"], judge_cache_hits=stats["cache"]["hits"],
                    new_judge_calls=stats["cache"]["misses"])
    details["judge_backend"] = stats
    document = results_document(command, meta, sections, details)
    write_json_atomic(out_dir / "results.json", document)
    if report:
        html_path, _ = write_report({"title": title, "meta": meta, **sections}, out_dir)
        print(f"report: {html_path}")
    print(f"results: {out_dir / 'results.json'}")
    if backend is not None:
        print(describe_stats(stats))
    if all_failed:
        raise AllJudgmentsFailed(f"all {all_failed} judgments failed (see 'failures' in {out_dir / 'results.json'}); "
                                 "no rate was computed from them")
    return document


def close_backend(backend) -> None:
    """Closes a judge backend and the backend it wraps (a cache around a model or HTTP client)."""
    backend.close()
    inner = getattr(backend, "backend", None)
    if hasattr(inner, "close"):
        inner.close()


def _fmt(value: float | None, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


# ----------------------------------------------------------------------------- eval pairwise

def eval_pairwise(outputs: str, reference: str, out_dir: str, judge: JudgeOptions = JudgeOptions(), *,
                  model: str | None = None, reference_model: str | None = None, limit: int = 0,
                  report: bool = False) -> dict:
    """Win rate of `outputs` against `reference` (items matched by id or prompt), judged in both orders.

    Writes results.json (raw and length-controlled win rate with standard errors, ties, failure rates),
    judgments.jsonl (every verdict with the judge's replies) and battles.jsonl (for `leaderboard`).
    """
    out = Path(out_dir)
    if Path(outputs).resolve() == Path(reference).resolve():
        raise ValueError(f"--outputs and --reference are the same file ({outputs})")
    model_records, reference_records = load_outputs(outputs), load_outputs(reference)
    model = model_name(model_records, outputs, model)
    reference_model = model_name(reference_records, reference, reference_model)
    if model == reference_model:
        reference_model += " (reference)"
    key_kind, keys, matched = match_by_key({outputs: model_records, reference: reference_records})
    if limit:
        keys, matched = keys[:limit], matched[:limit]
    pairs = [(m[outputs], m[reference]) for m in matched]
    config = judge.judge_config()
    backend = judge.open(out, "judging pairs")
    try:
        judged = judge_pairs(backend, [PairItem(mine.prompt, mine.response, theirs.response) for mine, theirs in pairs],
                             config)
    finally:
        close_backend(backend)

    per_order: dict[str, list[dict]] = {order: [] for order in config.orders}
    battles, failures = [], []
    for index, ((mine, theirs), judgment) in enumerate(zip(pairs, judged)):
        for order, result in judgment.orders.items():
            per_order[order].append({"id": str(index), "winner": _TO_MODEL_TERMS[result.verdict],
                                     "len_model": len(mine.response), "len_reference": len(theirs.response)})
            failures.append(result.failure if result.verdict is None else None)
            if result.verdict is not None:
                battles.append({"model_a": model, "model_b": reference_model, "winner": result.verdict})
    orders = list(config.orders)
    entry = winrate.win_rate_entry(model, per_order[orders[0]], per_order[orders[1]] if len(orders) > 1 else None,
                                   reference=reference_model)
    failure_stats = failure_summary(failures)
    write_jsonl_atomic(str(out / "judgments.jsonl"),
                       [_judgment_line(key, j, (model, reference_model), {"a": model, "b": reference_model,
                                                                          "tie": "tie", None: None})
                        for key, j in zip(keys, judged)])
    write_jsonl_atomic(str(out / "battles.jsonl"), battles)

    counts = {order: Counter(r["winner"] for r in records) for order, records in per_order.items()}
    table = {"title": f"Judgments of {model} vs {reference_model} per order",
             "columns": ["order", model, reference_model, "tie", "failed"],
             "rows": [[order, c["model"], c["reference"], c["tie"], c[None]] for order, c in counts.items()]}
    meta = {"command": "eval pairwise", "model": model, "reference": reference_model, "outputs": str(outputs),
            "reference_outputs": str(reference), "matched_by": key_kind, "n_items": len(pairs),
            "strategy": Strategy.parse(config.strategy).name, "orders": "+".join(orders),
            "judge_max_tokens": config.params.max_tokens, "length_unit": "characters"}
    details = {"win_rate": entry, "failures": failure_stats, "judge_config": _config_dict(config)}
    print(f"{model} vs {reference_model}: {len(pairs)} items, strategy {meta['strategy']}, orders {meta['orders']}")
    print(f"  win rate {_fmt(entry['win_rate'])} (SE {_fmt(entry['standard_error'])}, 95% CI "
          f"{_fmt(entry['ci_low'])}-{_fmt(entry['ci_high'])}); length-controlled {_lc_text(entry)}")
    print(f"  verdicts: {entry['wins']} wins, {entry['ties']} ties, {entry['losses']} losses over {entry['n_scored']} "
          f"scored items; {entry['failures']} items left out ({_fmt(entry['failure_rate'])})")
    print(f"  judgments: {failure_stats['n_parse_failures']} unparseable ({_fmt(failure_stats['parse_failure_rate'])}), "
          f"{failure_stats['n_backend_errors']} backend errors ({_fmt(failure_stats['backend_error_rate'])}) "
          f"of {failure_stats['n_judgments']}")
    return finish_run("eval pairwise", out, backend, meta, {"win_rates": [entry], "tables": [table]}, details,
                   all_failed=_all_failed(len(failures), len(failures) - failure_stats["n_failed"]), report=report,
                   title=f"Pairwise evaluation: {model} vs {reference_model}")


def _lc_text(entry: dict) -> str:
    """The length-controlled win rate for the console, or why there is none."""
    if entry["lc_win_rate"] is None:
        return f"unavailable: {entry['lc_note']}"
    return _fmt(entry["lc_win_rate"]) + (f" ({entry['lc_note']})" if entry["lc_note"] else "")


def _config_dict(config: JudgeConfig) -> dict:
    return {"strategy": config.strategy, "params": config.params.key(),
            "aux_params": config.aux_params.key() if config.aux_params else None, "both_orders": config.both_orders,
            "allow_tie": config.allow_tie, "max_parse_retries": config.max_parse_retries,
            "use_logprobs": config.use_logprobs}


# ----------------------------------------------------------------------------- eval grade

def eval_grade(out_dir: str, judge: JudgeOptions = JudgeOptions(), *, questions: str | None = None,
               answers: str | None = None, items: str | None = None, rubric: str | None = None,
               turns: Sequence[int] | None = None, model: str | None = None, limit: int = 0,
               use_reference: bool = True, report: bool = False) -> dict:
    """MT-Bench style 1-10 grading (`questions` + `answers`), or 1-5 rubric grading when `rubric` (a text
    file) or `items` (rubric items JSONL) is given; in rubric mode questions+answers grade turn 1."""
    out = Path(out_dir)
    rubric_text = _read_rubric(rubric) if rubric else None
    rubric_items: list[grading.RubricItem] | None = None
    if items is not None:
        rubric_items, source = grading.load_rubric_items(items)[: limit or None], str(items)
    elif questions is None or answers is None:
        raise ValueError("eval grade needs --questions and --answers, or --items (rubric mode)")
    else:
        question_list, answer_map = _questions_and_answers(questions, answers, limit)
        source = str(answers)
        if rubric_text is not None:  # a rubric grades each question's first exchange
            rubric_items = [grading.RubricItem(q.question_id, q.turns[0], answer_map[q.question_id][0],
                                               reference=q.reference[0] if q.reference else None, category=q.category)
                            for q in question_list]
    model = model or Path(source).stem
    backend = judge.open(out, "grading")
    try:
        config = judge.grading_config(use_reference)
        if rubric_items is not None:
            result = grading.grade_rubric(backend, rubric_items, rubric_text, config)
            responses = {item.id: item.response for item in rubric_items}
            item_lengths = [len(responses[item.id]) for item in result.items]
        else:
            result = grading.grade_single(backend, question_list, answer_map, config, turns)
            item_lengths = [len(answer_map[item.id][item.turn - 1]) for item in result.items]
    finally:
        close_backend(backend)

    mode = "rubric" if result.scale == RUBRIC_SCALE else "single"
    write_jsonl_atomic(str(out / "grades.jsonl"),
                       [{"id": item.id, "category": item.category, "turn": item.turn, "score": item.score,
                         "failure": item.failure, "replies": item.judge.outputs if item.judge else []}
                        for item in result.items])
    scored = [(item, length) for item, length in zip(result.items, item_lengths) if not item.failed]
    low, high = result.scale
    sections = {
        "score_distributions": [{"model": model, "label": f"{mode} grading, {low}-{high}",
                                 "scores": [item.score for item, _ in scored], "scale_min": low, "scale_max": high}],
        "score_vs_length": {"length_unit": "characters",
                            "series": [{"model": model, "lengths": [length for _, length in scored],
                                        "scores": [item.score for item, _ in scored]}]},
        "tables": [{"title": f"{model}: mean {mode} grade per category ({low}-{high}; failures excluded)",
                    "columns": ["category", "mean", "graded", "failed", "failure rate"],
                    "rows": [[name, s.mean, s.n - s.n_failed, s.n_failed, s.failure_rate]
                             for name, s in [("all", result.overall), *result.per_category.items()]]}],
    }
    meta = {"command": "eval grade", "mode": mode, "model": model, "answers": source, "scale": f"{low}-{high}",
            "mean": result.overall.mean, "n_graded": result.overall.n, "n_failed": result.overall.n_failed}
    failures = failure_summary([item.failure if item.failed else None for item in result.items])
    details = {"grading": result.to_dict(), "failures": failures}
    print(f"{model}: {mode} grading {low}-{high}, {result.overall.n} items")
    print(f"{'category':<16}{'mean':>7}{'graded':>8}{'failed':>8}")
    for name, summary in [("all", result.overall), *result.per_category.items()]:
        print(f"{name:<16}{_fmt(summary.mean, 2):>7}{summary.n - summary.n_failed:>8}{summary.n_failed:>8}")
    for turn, summary in result.per_turn.items():
        print(f"turn {turn:<11}{_fmt(summary.mean, 2):>7}{summary.n - summary.n_failed:>8}{summary.n_failed:>8}")
    return finish_run("eval grade", out, backend, meta, sections, details,
                   all_failed=_all_failed(result.overall.n, result.overall.n - result.overall.n_failed), report=report,
                   title=f"Grading: {model}")


def eval_grade_imported(judgments: str, out_dir: str, *, questions: str | None = None, fmt: str = "auto",
                        report: bool = False) -> dict:
    """Another tool's single-answer ratings (FastChat's `<judge>_single.jsonl`) summarised as `eval grade`
    summarises its own: per model the mean of each turn and of all turns (FastChat's show_result.py
    numbers), failures counted beside them, and per category when `questions` gives the categories."""
    out = Path(out_dir)
    categories = {q.question_id: q.category for q in grading.load_mt_bench_questions(questions)} if questions else None
    by_model = importers.load_graded_file(judgments, categories, fmt)
    results = {model: grading.summarise(SINGLE_SCALE, items) for model, items in by_model.items()}
    ranked = sorted(results, key=lambda m: (-(results[m].overall.mean or float("-inf")), m))
    turns = sorted({turn for result in results.values() for turn in result.per_turn})
    write_jsonl_atomic(str(out / "grades.jsonl"),
                       [{"model": model, "id": item.id, "category": item.category, "turn": item.turn,
                         "score": item.score, "failure": item.failure}
                        for model, items in by_model.items() for item in items])

    def turn_mean(result, turn):
        summary = result.per_turn.get(turn)
        return summary.mean if summary else None

    rows = [[model, *(turn_mean(results[model], t) for t in turns), results[model].overall.mean,
             results[model].overall.n - results[model].overall.n_failed, results[model].overall.n_failed]
            for model in ranked]
    low, high = SINGLE_SCALE
    tables = [{"title": f"Single-answer grades imported from {judgments} ({low}-{high}; failures excluded)",
               "columns": ["model", *(f"turn {t}" for t in turns), "average", "graded", "failed"], "rows": rows}]
    if categories is not None:
        names = sorted({item.category for items in by_model.values() for item in items})
        tables.append({"title": "Mean grade per category", "columns": ["model", *names],
                       "rows": [[m, *(results[m].per_category[c].mean if c in results[m].per_category else None
                                      for c in names)] for m in ranked]})
    sections = {"tables": tables,
                "score_distributions": [{"model": m, "label": f"imported single grading, {low}-{high}",
                                         "scores": [i.score for i in by_model[m] if not i.failed],
                                         "scale_min": low, "scale_max": high} for m in ranked]}
    n_items = sum(r.overall.n for r in results.values())
    n_failed = sum(r.overall.n_failed for r in results.values())
    meta = {"command": "eval grade", "mode": "imported", "judgments": str(judgments), "models": len(results),
            "n_graded": n_items, "n_failed": n_failed}
    details = {"grading": {model: result.to_dict() for model, result in results.items()}}
    print(f"{judgments}: {n_items} ratings of {len(results)} models, {n_failed} without a rating (left out)")
    print(f"{'model':<32}" + "".join(f"{'turn ' + str(t):>9}" for t in turns) + f"{'average':>9}{'failed':>8}")
    for row in rows:
        print(f"{_fit(row[0], 32):<32}" + "".join(f"{_fmt(v, 4):>9}" for v in row[1:-2]) + f"{row[-1]:>8}")
    return finish_run("eval grade", out, None, meta, sections, details,
                      all_failed=_all_failed(n_items, n_items - n_failed), report=report,
                      title=f"Imported grades: {Path(judgments).name}")


def _read_rubric(path: str) -> str:
    text = read_text(path)
    if not text.strip():
        raise DataError(f"{path}: the rubric file is empty")
    return text.strip()


def _questions_and_answers(questions: str, answers: str, limit: int):
    question_list = grading.load_mt_bench_questions(questions)
    answer_map = grading.load_answers(answers)
    known = {q.question_id for q in question_list}
    unknown = sorted(set(answer_map) - known)
    if unknown:
        raise DataError(f"{answers}: answers for question ids not in {questions}: {unknown[:20]}")
    if limit:
        question_list = question_list[:limit]
        kept = {q.question_id for q in question_list}
        answer_map = {qid: turns for qid, turns in answer_map.items() if qid in kept}
    return question_list, answer_map


# ----------------------------------------------------------------------------- leaderboard

def leaderboard(out_dir: str, *, battles: str | None = None, outputs: Sequence[str] = (),
                judge: JudgeOptions = JudgeOptions(), limit: int = 0, anchor: str | None = None,
                n_bootstrap: int = 200, seed: int = 0, report: bool = False, battles_format: str = "auto") -> dict:
    """Bradley-Terry ratings with bootstrap intervals, from a battles file (alignkit's, or another tool's
    judgments or votes: `importers`, format detected unless `battles_format` names it) or by judging
    every pair of `outputs` files (all answering the same items) in both orders."""
    out = Path(out_dir)
    if (battles is None) == (not outputs):
        raise ValueError("leaderboard needs either --battles or --outputs (two or more files), not both")
    backend, failures, judged_pairs = None, [], {}
    if battles is not None:
        imported = importers.load_battles_file(battles, battles_format)
        battle_list = imported.battles
        # another tool's judgments without a verdict: counted as failures, never battles
        failures = [None] * len(battle_list) + ["no verdict in the imported judgment"] * imported.failed
        print(f"{battles}: {imported.records} records, {len(battle_list)} battles"
              + (f", {imported.failed} judgments without a verdict" if imported.failed else "")
              + "".join(f"; {note}" for note in imported.notes))
    else:
        if len(outputs) < 2:
            raise ValueError("leaderboard --outputs needs at least two model output files")
        files = {path: load_outputs(path) for path in outputs}
        names = {path: model_name(records, path) for path, records in files.items()}
        if len(set(names.values())) < len(names):
            raise ValueError(f"two output files name the same model: {sorted(names.values())}; "
                             "give each file a distinct \"model\" field or file name")
        _, keys, matched = match_by_key(files)
        if limit:
            keys, matched = keys[:limit], matched[:limit]
        battle_list, lines = [], []
        config = judge.judge_config()
        backend = judge.open(out, "judging battles")
        try:
            for first, second in itertools.combinations(outputs, 2):
                items = [PairItem(m[first].prompt, m[first].response, m[second].response) for m in matched]
                judged = judge_pairs(backend, items, config)
                pair_failures = []
                for key, judgment in zip(keys, judged):
                    lines.append(_judgment_line(key, judgment, (names[first], names[second]),
                                                {"a": names[first], "b": names[second], "tie": "tie", None: None}))
                    for result in judgment.orders.values():
                        pair_failures.append(result.failure if result.verdict is None else None)
                        if result.verdict is not None:
                            battle_list.append(bt.Battle(names[first], names[second], result.verdict))
                judged_pairs[f"{names[first]} vs {names[second]}"] = failure_summary(pair_failures)
                failures += pair_failures
        finally:
            close_backend(backend)
        write_jsonl_atomic(str(out / "judgments.jsonl"), lines)
        write_jsonl_atomic(str(out / "battles.jsonl"), [vars(b) for b in battle_list])
    if not battle_list and failures:
        board = None
    else:
        board = bt.bradley_terry(battle_list, anchor=anchor, n_bootstrap=n_bootstrap, seed=seed)
    sections = {"leaderboard": board.to_dict()} if board else {}
    meta = {"command": "leaderboard", "source": battles or ", ".join(outputs), "n_battles": len(battle_list)}
    details = {"leaderboard": board.to_dict() if board else None, "failures": failure_summary(failures),
               "per_pair_failures": judged_pairs}
    if board:
        print(f"Bradley-Terry ratings from {board.n_battles} battles ({int(board.confidence * 100)}% bootstrap CI, "
              f"{board.n_bootstrap} resamples; {board.anchor} = {board.anchor_rating:g})")
        for rank, name in enumerate(board.models, start=1):
            print(f"{rank:>3}  {name:<32}{board.ratings[name]:>9.1f}  [{board.ci_low[name]:.1f}, "
                  f"{board.ci_high[name]:.1f}]  {board.battles_per_model[name]} battles")
    if any(failures):
        summary = details["failures"]
        print(f"judgments: {summary['n_failed']} of {summary['n_judgments']} failed "
              f"({summary['n_parse_failures']} unparseable, {summary['n_backend_errors']} backend errors) "
              "and are not battles")
    return finish_run("leaderboard", out, backend, meta, sections, details,
                   all_failed=_all_failed(len(failures), len(battle_list)), report=report, title="Leaderboard")


# ----------------------------------------------------------------------------- meta-eval

def _limit_per_source(pairs: list[meta_eval.LabelledPair], limit: int) -> list[meta_eval.LabelledPair]:
    taken: Counter = Counter()
    kept = []
    for pair in pairs:
        if not limit or taken[pair.source] < limit:
            kept.append(pair)
            taken[pair.source] += 1
    return kept


def _named(arguments: Sequence[str]) -> list[tuple[str | None, str]]:
    return [meta_eval.split_name(argument) for argument in arguments]


def run_meta_eval(pairs: Sequence[str], out_dir: str, judge: JudgeOptions | None = JudgeOptions(), *,
                  strategies: Sequence[str] = ("plain",), predictions: Sequence[str] = (), limit: int = 0,
                  report: bool = False, agreement: str = "same-output", predictions_format: str = "auto") -> dict:
    """Accuracy of a judge against gold-labelled pairs (LLMBar format), per strategy and per file.

    `pairs` and `predictions` are paths or NAME=PATH. A pairs file is named by NAME or else by its path
    (`meta_eval`); `limit` keeps the first N pairs of each file. `predictions` are verdict files produced
    elsewhere, alignkit's or another tool's (`importers`, format detected unless `predictions_format`
    names it), scored the same way; a judge is named by NAME or else by `importers.judge_name`, and files
    of one name are one judge (e.g. an LLMBar evaluator's Natural and Neighbor result.json). An id that
    is in no pairs file is an error. `agreement`: "same-output" or "llmbar" (see `meta_eval`).
    """
    if agreement not in meta_eval.AGREEMENTS:
        raise ValueError(f"--agreement must be one of {', '.join(meta_eval.AGREEMENTS)}, got {agreement!r}")
    if predictions_format != "auto" and predictions_format not in importers.PREDICTION_FORMATS:
        raise ValueError(f"--predictions-format must be auto or one of {', '.join(importers.PREDICTION_FORMATS)}, "
                         f"got {predictions_format!r}")
    out = Path(out_dir)
    all_pairs = importers.load_pairs([(name, path) if name else path for name, path in _named(pairs)])
    kept = _limit_per_source(all_pairs, limit)
    names = [Strategy.parse(s).name for s in strategies] if judge is not None else []
    files: dict[str, list[str]] = {}  # judge name -> its predictions files
    formats = {}
    for given, path in _named(predictions):
        formats[path] = importers.detect_format(path) if predictions_format == "auto" else predictions_format
        files.setdefault(given or importers.judge_name(path, formats[path]), []).append(path)
    if set(names) & set(files):
        raise ValueError(f"a judge strategy and a predictions file share a name: {sorted(set(names) & set(files))}; "
                         "name the file with NAME=PATH")
    if not names and not files:
        raise ValueError("meta-eval needs --strategies (with a judge) or --predictions")
    # Verdict files are scored first, so a bad one stops the run before any judge call is spent.
    scored_files, beyond_limit, unmatched = {}, {}, {}
    kept_ids, all_ids = {pair.id for pair in kept}, {pair.id for pair in all_pairs}
    for name, paths in files.items():
        loaded = []
        for path in paths:
            imported = importers.load_predictions_file(path, all_pairs, formats[path])
            loaded += imported.predictions
            if imported.unmatched:
                unmatched[path] = {"records": imported.records, "about_no_loaded_pair": imported.unmatched}
        # Predictions for pairs cut by --limit are known ids, left out and counted; unknown ids still raise.
        usable = [p for p in loaded if p.id in kept_ids or p.id not in all_ids]
        beyond_limit[name] = len(loaded) - len(usable)
        scored_files[name] = meta_eval.evaluate_predictions(kept, usable, name, agreement)
    results: dict[str, meta_eval.JudgeAccuracy] = {}
    failures: dict[str, dict] = {}
    backend = None
    configs = {name: judge.judge_config(name) for name in names}  # a bad setting fails before the model loads
    if names:
        backend = judge.open(out, "judging LLMBar pairs")
        try:
            for name, config in configs.items():
                scored = meta_eval.evaluate_judge(backend, kept, [name], config, agreement)
                results[name] = scored.results[name]
                judged = scored.judgments[name]
                failures[name] = failure_summary([r.failure if r.verdict is None else None
                                                  for j in judged for r in j.orders.values()])
                write_jsonl_atomic(str(out / f"predictions-{name}.jsonl"), scored.predictions(name))
                write_jsonl_atomic(str(out / f"judgments-{name}.jsonl"),
                                   [_judgment_line(pair.id, j, ("output_1", "output_2"),
                                                   {"a": 1, "b": 2, "tie": "tie", None: None})
                                    for pair, j in zip(kept, judged)])
        finally:
            close_backend(backend)
    results.update(scored_files)

    rows = []
    for result in results.values():
        rows.append(result.report_row("all"))
        rows.extend(by_source.report_row(source) for source, by_source in result.per_source.items())
    meta = {"command": "meta-eval", "pairs_files": ", ".join(str(p) for p in pairs), "n_pairs": len(kept),
            "limit_per_file": limit or None, "judges": ", ".join(results), "agreement": agreement}
    if judge is not None and names:
        meta["judge_max_tokens"] = judge.max_tokens or "32 (verdict only) / 512 (cot, swap)"
    details = {"results": {name: result.to_dict() for name, result in results.items()}, "failures": failures,
               "predictions_files": {name: [f"{path} ({formats[path]})" for path in paths]
                                     for name, paths in files.items()},
               "predictions_beyond_limit": beyond_limit, "records_about_no_loaded_pair": unmatched}
    _print_meta_eval(rows, failures, agreement)
    for path, counts in unmatched.items():
        print(f"{path}: {counts['about_no_loaded_pair']} of its {counts['records']} judgments are about no loaded "
              "pair and were skipped")
    for name, count in beyond_limit.items():
        if count:
            print(f"{name}: {count} predictions for pairs beyond --limit {limit} were not scored")
    judged_total = sum(f["n_judgments"] for f in failures.values())
    judged_ok = judged_total - sum(f["n_failed"] for f in failures.values())
    # Verdict files still give a comparison when every judgment of this run failed.
    return finish_run("meta-eval", out, backend, meta, {"strategy_comparison": rows}, details,
                   all_failed=None if predictions else _all_failed(judged_total, judged_ok), report=report,
                   title="Judge meta-evaluation")


def _fit(text: str, width: int) -> str:
    """`text` in at most `width` - 1 characters, keeping its end (a file name ends a path)."""
    return text if len(text) < width else "..." + text[-(width - 4):]


def _print_meta_eval(rows: list[dict], failures: dict[str, dict], agreement: str = "same-output") -> None:
    print(f"{'judge':<24}{'dataset':<32}{'n':>5}{'acc ab':>8}{'acc ba':>8}{'mean':>7}{'both':>7}{'agree':>7}"
          f"{'kappa':>7}{'fail':>7}{'errors':>8}")
    for row in rows:
        accuracy = row["accuracy_by_order"]
        errors = failures.get(row["strategy"], {}).get("n_backend_errors") if row["dataset"] == "all" else None
        print(f"{_fit(row['strategy'], 24):<24}{_fit(row['dataset'], 32):<32}{row['n_items']:>5}"
              f"{_fmt(accuracy.get('ab')):>8}{_fmt(accuracy.get('ba')):>8}{_fmt(row['mean_accuracy']):>7}"
              f"{_fmt(row['both_correct']):>7}{_fmt(row['positional_agreement']):>7}{_fmt(row['kappa']):>7}"
              f"{_fmt(row['parse_failure_rate']):>7}{'' if errors is None else errors:>8}")
    print("fail = failed judgments / (pairs x orders), backend errors included; a failure counts as wrong")
    print("both = right in both orders; kappa = Cohen's kappa of verdicts (failures a category) vs gold, mean of "
          "orders; agree = " + ("both orders chose the same output" if agreement == "same-output"
                                else "both verdicts equal, two failures included (LLMBar's 'equal')"))


# ----------------------------------------------------------------------------- report and serve

def build_report(results: Sequence[str], out_dir: str, title: str | None = None) -> tuple[Path, Path]:
    """One HTML page and one JSON file from several results files (or report / IFEval JSON files)."""
    meta, sections = merge_sections(results)
    html_path, json_path = write_report({"title": title or "alignkit evaluation report", "meta": meta,
                                         **sections}, out_dir)
    print(f"report: {html_path}\ndata:   {json_path}")
    return html_path, json_path
