"""The demo's last stage: evaluate the base and tuned models on the held-out prompts and write the report.

Three measurements, each through the project's own machinery:

(a) verifiable instruction following: the demo's own check (`alignkit.demo.heldout.score`, which applies
    `follows_format` and counts answer mentions)
    and the IFEval checker that matches each requested format (json -> detectable_format:json_format,
    upper -> change_case:english_capital, ending -> startend:end_checker), strict and loose;
(b) a pairwise judgment of every later stage against "base" (plain strategy, both orders, at most
    `max_pairs` prompts, short judge replies), scored as a win rate with failures reported apart;
(c) refusals, when the caller passes the stages' answers to a refusal prompt subset: the refusal rate on
    prompts that should be refused and the over-refusal rate on risky-looking prompts that should be
    answered, per category, detected by the refusal patterns of `alignkit.evaluation.refusal` (the
    embedded judge's replies rarely parse, so the demo does not ask it);
(d) the HTML report (`write_report`) with before/after figures, win rates, IFEval-style numbers, refusal
    rates and the training curves the caller passes (loss per step, the RL stage's reward per step).

With the 135M embedded model as judge the win rates are expected near chance: the point of (b) is
that the machinery runs end to end; (a) is what measures the training.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

from alignkit.atomic_write import write_json_atomic
from alignkit.demo.data.build import ENDING
from alignkit.demo.heldout import score
from alignkit.evaluation.commands import failure_summary
from alignkit.evaluation.ifeval import check_instruction
from alignkit.evaluation.length_bias import length_summary
from alignkit.evaluation.refusal import RefusalPrompt, is_refusal, refusal_metrics, report_entry
from alignkit.evaluation.report import write_report
from alignkit.evaluation.winrate import win_rate_entry
from alignkit.generation.backend import Backend, SamplingParams
from alignkit.generation.cache import CachedBackend
from alignkit.generation.specs import BackendOptions, build_backend
from alignkit.judges import JudgeConfig, PairItem, judge_pairs

BASE = "base"
# The IFEval instruction (id, kwargs) that checks each demo format.
IFEVAL_FOR_FORMAT = {
    "json": ("detectable_format:json_format", {}),
    "upper": ("change_case:english_capital", {}),
    "ending": ("startend:end_checker", {"end_phrase": ENDING}),
}
# "Verdict: A" is 4 tokens and an end token; a little room for markup, and no time spent on rambling.
DEMO_JUDGE = JudgeConfig(strategy="plain", params=SamplingParams(max_tokens=8), both_orders=True)


def _prompt(row: dict) -> str:
    return next(m["content"] for m in row["messages"] if m["role"] == "user")


def _check_inputs(model_responses: dict[str, list[str]], rows: Sequence[dict]) -> None:
    if BASE not in model_responses:
        raise ValueError(f"model_responses needs a {BASE!r} stage to compare against; got {list(model_responses)}")
    for stage, responses in model_responses.items():
        if len(responses) != len(rows):
            raise ValueError(f"stage {stage!r}: {len(responses)} responses for {len(rows)} rows")
        for index, response in enumerate(responses):
            if not isinstance(response, str):
                raise ValueError(f"stage {stage!r}, response {index}: expected a string, got {type(response).__name__}")
    for index, row in enumerate(rows):
        if row.get("format") not in IFEVAL_FOR_FORMAT:
            raise ValueError(f"row {index}: field 'format' must be one of {list(IFEVAL_FOR_FORMAT)}, "
                             f"got {row.get('format')!r}")


def verifiable_scores(rows: Sequence[dict], responses: Sequence[str]) -> dict:
    """The demo's format check (with answer mention) plus the matching IFEval checker, strict and loose."""
    result = score(list(rows), list(responses))
    strict = loose = 0
    per_format: dict[str, list[int]] = {}
    for row, response in zip(rows, responses):
        instruction_id, kwargs = IFEVAL_FOR_FORMAT[row["format"]]
        passed = check_instruction(instruction_id, kwargs, response, _prompt(row))
        passed_loose = passed or check_instruction(instruction_id, kwargs, response, _prompt(row), loose=True)
        strict += passed
        loose += passed_loose
        per_format.setdefault(row["format"], []).append(int(passed))
    n = len(rows)
    # One instruction per prompt, so prompt level and instruction level coincide.
    result["ifeval"] = {"prompt_strict": strict / n, "prompt_loose": loose / n, "instruction_strict": strict / n,
                        "instruction_loose": loose / n, "n_prompts": n,
                        "per_format_strict": {k: sum(v) / len(v) for k, v in sorted(per_format.items())}}
    return result


def refusal_scores(prompts: Sequence[RefusalPrompt], stage_responses: dict[str, list[str]]) -> dict:
    """{stage: refusal_metrics} with refusals detected by patterns; every stage must answer every prompt."""
    scores = {}
    for stage, responses in stage_responses.items():
        if len(responses) != len(prompts):
            raise ValueError(f"stage {stage!r}: {len(responses)} responses for {len(prompts)} refusal prompts")
        scores[stage] = refusal_metrics(prompts, [is_refusal(response) for response in responses])
    return scores


def _default_judge() -> Backend:
    # bf16 halves the judge's time on CPUs with bf16 instructions; the demo's model is trained in place,
    # so the judge is always a fresh copy of the embedded model.
    return build_backend("embedded", BackendOptions(dtype="bf16", batch_size=16))


def evaluate_stages(model_responses: dict[str, list[str]], rows: list[dict], judge_backend: Backend | None,
                    out_dir: str | os.PathLike, *, max_pairs: int = 40, judge_config: JudgeConfig = DEMO_JUDGE,
                    cache: bool = True, curves: Sequence[dict] = (),
                    refusal: tuple[Sequence[RefusalPrompt], dict[str, list[str]]] | None = None) -> dict:
    """Score every stage's responses to `rows` and judge each later stage against "base"; write the report.

    `judge_backend` None loads the embedded model. Judge calls go through the SQLite cache
    `out_dir/judge_cache.sqlite` (unless `cache=False`), so rerunning the demo makes no new judge calls.
    `refusal` is (refusal prompts, {stage: responses to them}), scored by patterns (see the module doc).
    Returns every number; `out_dir` receives evaluation.json, report.html and report.json.
    """
    _check_inputs(model_responses, rows)
    refusals = refusal_scores(*refusal) if refusal is not None else None
    if not rows:
        raise ValueError("no held-out rows to evaluate")
    out = Path(out_dir)
    verifiable = {stage: verifiable_scores(rows, responses) for stage, responses in model_responses.items()}

    backend = judge_backend if judge_backend is not None else _default_judge()
    cached = CachedBackend(backend, out / "judge_cache.sqlite") if cache and not isinstance(backend, CachedBackend) \
        else backend
    judged_rows = rows[:max_pairs]
    win_rates, judgment_stats = [], {}
    try:
        for stage, responses in model_responses.items():
            if stage == BASE:
                continue
            items = [PairItem(_prompt(row), responses[i], model_responses[BASE][i]) for i, row in enumerate(judged_rows)]
            judged = judge_pairs(cached, items, judge_config)
            per_order = {order: [{"id": str(i), "winner": {"a": "model", "b": "reference", "tie": "tie"}.get(r.verdict),
                                  "len_model": len(items[i].output_a), "len_reference": len(items[i].output_b)}
                                 for i, j in enumerate(judged) for r in [j.orders[order]]]
                         for order in judge_config.orders}
            orders = list(judge_config.orders)
            win_rates.append(win_rate_entry(stage, per_order[orders[0]],
                                            per_order[orders[1]] if len(orders) > 1 else None, reference=BASE))
            judgment_stats[stage] = failure_summary([r.failure if r.verdict is None else None
                                                     for j in judged for r in j.orders.values()])
    finally:
        if cached is not backend:
            cached.close()
    cache_stats = vars(cached.stats) if isinstance(cached, CachedBackend) else None

    results = {"n_rows": len(rows), "n_judged_pairs": len(judged_rows), "judge": cached.model_id,
               "verifiable": verifiable, "win_rates": win_rates, "judgments": judgment_stats,
               "judge_cache": cache_stats,
               "lengths": {stage: length_summary(responses) for stage, responses in model_responses.items()}}
    if refusals is not None:
        results["refusals"] = refusals
    write_json_atomic(out / "evaluation.json", results)
    html_path, _ = write_report({**_report(results, list(model_responses)), "curves": list(curves)}, out)
    results["report"] = str(html_path)
    return results


def _report(results: dict, stages: list[str]) -> dict:
    verifiable = results["verifiable"]
    before_after = []
    for last in stages:
        if last == BASE:
            continue
        for metric, pick in (("format following (demo check)", lambda r: r["format_following"]),
                             ("IFEval strict", lambda r: r["ifeval"]["prompt_strict"]),
                             ("answer mentioned", lambda r: r["answer_mentioned"])):
            before_after.append({"metric": f"{metric}: {BASE} -> {last}", "before": pick(verifiable[BASE]),
                                 "after": pick(verifiable[last]), "higher_is_better": True})
    formats = sorted(verifiable[BASE]["per_format"])
    table = {"title": "Held-out prompts following the requested format (demo check / IFEval strict)",
             "columns": ["stage", "overall"] + [f"{f} (demo)" for f in formats] + [f"{f} (IFEval)" for f in formats],
             "rows": [[stage, verifiable[stage]["format_following"]]
                      + [verifiable[stage]["per_format"][f] for f in formats]
                      + [verifiable[stage]["ifeval"]["per_format_strict"][f] for f in formats] for stage in stages]}
    judgments = {"title": "Judge replies per stage (pairwise vs base, both orders)",
                 "columns": ["stage", "judgments", "unparseable", "backend errors"],
                 "rows": [[stage, s["n_judgments"], s["n_parse_failures"], s["n_backend_errors"]]
                          for stage, s in results["judgments"].items()]}
    ifeval = [{"model": stage, **{k: v for k, v in verifiable[stage]["ifeval"].items() if k != "per_format_strict"}}
              for stage in stages]
    lengths = results["lengths"]
    for last in stages:
        if last != BASE:
            # Neither direction is better: a stage that only grew longer would show here before any judge noticed.
            before_after.append({"metric": f"mean response length, characters: {BASE} -> {last}",
                                 "before": lengths[BASE]["mean_chars"], "after": lengths[last]["mean_chars"],
                                 "higher_is_better": None})
    length_table = {"title": "Response length per stage (held-out prompts)",
                    "columns": ["stage", "responses", "mean characters", "median characters", "mean words"],
                    "rows": [[stage, lengths[stage]["n"], lengths[stage]["mean_chars"], lengths[stage]["median_chars"],
                              lengths[stage]["mean_words"]] for stage in stages]}
    refusals = results.get("refusals") or {}
    for last in stages:
        if last == BASE or last not in refusals or BASE not in refusals:
            continue
        for metric, side, higher in (("refusal rate, prompts to refuse (patterns)", "should_refuse", True),
                                     ("over-refusal rate, prompts to answer (patterns)", "should_answer", False)):
            before, after = refusals[BASE][side]["all"]["rate"], refusals[last][side]["all"]["rate"]
            if before is not None and after is not None:
                before_after.append({"metric": f"{metric}: {BASE} -> {last}", "before": before, "after": after,
                                     "higher_is_better": higher})
    extra = {"refusals": [report_entry(stage, refusals[stage]) for stage in stages if stage in refusals]} \
        if refusals else {}
    meta = {"held-out prompts": results["n_rows"], "pairs judged per stage": results["n_judged_pairs"],
            "judge": results["judge"], "judge strategy": "plain, both orders"}
    if refusals:
        sides = next(iter(refusals.values()))
        meta.update({"refusal prompts (refuse + answer)": f"{sides['should_refuse']['all']['n']} + "
                                                          f"{sides['should_answer']['all']['n']}",
                     "refusal detection": "patterns (alignkit.evaluation.refusal)"})
    return {"title": "alignkit demo: base and tuned models on held-out prompts", "meta": meta,
            "win_rates": results["win_rates"], "ifeval": ifeval, "before_after": before_after,
            "tables": [table, length_table, judgments], **extra}
