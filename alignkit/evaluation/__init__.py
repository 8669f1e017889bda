"""Evaluation: the commands the CLI calls one-to-one (`eval_pairwise`, `eval_grade`, `run_meta_eval`,
`build_report`; `alignkit leaderboard` is `commands.leaderboard`, since `leaderboard`
here is the Bradley-Terry module), IFEval (`run_ifeval`), reward models (`run_score`, `run_rm_eval`,
`write_length_report`), refusals (`run_refusal_eval`),
win rates and the HTML report. Names are imported on first use (lazy_exports).
"""
from alignkit.lazy_exports import lazy_exports

__all__, __getattr__ = lazy_exports(__name__, {
    "commands": ("JudgeOptions", "eval_pairwise", "eval_grade", "run_meta_eval", "build_report"),
    "ifeval": ("run_ifeval", "score_ifeval", "load_ifeval_prompts"),
    "reward_eval": ("run_score", "run_rm_eval", "rm_eval"),
    "refusal": ("run_refusal_eval",),
    "length_bias": ("write_length_report",),
    "winrate": ("win_rate", "length_controlled_win_rate"),
    "leaderboard": ("bradley_terry",),
    "report": ("write_report",),
})
