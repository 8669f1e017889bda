"""Rewards for online RL, best-of-n and rejection sampling, all behind one interface.

A reward takes `Sample`s (prompt messages, completion text, the prompt record's metadata) and
returns a `RewardResult`: a score and a failure slot per sample (a failed sample gets its reward's
configured `failure_reward`, and is counted). Kinds: a trained reward model (`reward_model`),
checks with a verifiable answer (`verifiable`: IFEval instructions, formats, exact match, regex, a
user's Python function), and an LLM judge (`judge`). `CombinedReward` sums weighted rewards and
keeps each one's scores for logging; `ShapedReward` adds a length penalty, normalisation and
clipping (`shaping`). From a config: a list of `RewardSpec` (`spec`), checked by
`validate_reward_specs` (call it from the owning config's `validate`, since specs sit in a list)
and built by `build_reward`. Names are imported on first use (lazy_exports).
"""
from alignkit.lazy_exports import lazy_exports

__all__, __getattr__ = lazy_exports(__name__, {
    "interface": ("Sample", "RewardResult", "Reward", "CombinedReward"),
    "formats": ("follows_format",),
    "shaping": ("RewardShaping", "ShapedReward", "RunningMoments"),
    "spec": ("RewardSpec", "validate_reward_specs", "build_reward"),
    "verifiable": ("IFEvalReward", "FormatReward", "ExactMatchReward", "RegexReward", "FunctionReward"),
    "reward_model": ("RewardModelReward",),
    "judge": ("JudgeReward",),
})
