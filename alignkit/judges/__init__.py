"""LLM judges anything in alignkit can call: evaluation, data construction from AI feedback, RL rewards.

Prompts (`prompts.py`), strict reading of replies (`verdicts.py`), the shared calling and re-asking
machinery (`calls.py`), pairwise judgments (`pairwise.py`) and numeric scores (`scoring.py`). Judges
reach models only through a `generation.Backend`, and import generation/ and data/, never
evaluation/ or training/, so every layer above can use them.
"""
from alignkit.judges.calls import Asked, CallLog, ask_parsed, completion_failure
from alignkit.judges.pairwise import (ORDERS, STRATEGY_PARTS, JudgeConfig, OrderVerdict, PairItem, PairJudgment,
                                      Strategy, judge_pairs)
from alignkit.judges.prompts import (RULES, defuse_markers, metrics_prompt, pairwise_prompt, reference_prompt,
                                     rubric_prompt, single_grade_prompt, swap_decision_prompt)
from alignkit.judges.scoring import RUBRIC_SCALE, SINGLE_SCALE, ask_scores
from alignkit.judges.verdicts import ParsedScore, ParsedVerdict, parse_score, parse_verdict, verdict_from_logprobs

__all__ = [
    # calling a judge
    "Asked", "CallLog", "ask_parsed", "completion_failure",
    # pairwise judgments
    "ORDERS", "STRATEGY_PARTS", "JudgeConfig", "OrderVerdict", "PairItem", "PairJudgment", "Strategy", "judge_pairs",
    # numeric scores
    "RUBRIC_SCALE", "SINGLE_SCALE", "ask_scores",
    # prompts
    "RULES", "defuse_markers", "metrics_prompt", "pairwise_prompt", "reference_prompt", "rubric_prompt",
    "single_grade_prompt", "swap_decision_prompt",
    # reading replies
    "ParsedScore", "ParsedVerdict", "parse_score", "parse_verdict", "verdict_from_logprobs",
]
