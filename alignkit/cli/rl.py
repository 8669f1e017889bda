"""The online RL commands: `rl` and its presets `grpo`, `rloo`, `reinforce`, `ppo` (= `rl algo=...`).

Like the other training commands they read a YAML config and key=value overrides, train, and say where
the final model went; `--help` lists every config key. Under torchrun or accelerate launch they train as one
run, each process sampling its share of every step's prompts (rl/rollout.py).
"""
from __future__ import annotations

PRESETS = ("grpo", "rloo", "reinforce", "ppo")  # = rl.objective.ALGORITHMS, which cli/train.py checks by


def cmd_rl(a, preset: str | None = None) -> None:
    from alignkit.cli.train import _train, preset_overrides
    from alignkit.rl.run import RLConfig, run_rl

    _train(RLConfig, run_rl, a, preset_overrides(a.overrides, "algo", preset, "rl"))


def add_rl(sub) -> None:
    """`rl`, and one preset per algorithm."""
    from alignkit.cli.train import add_command_family
    from alignkit.config import config_keys_help
    from alignkit.rl.objective import ALGORITHMS
    from alignkit.rl.run import RLConfig

    add_command_family(sub, "rl", "algo", f"online RL from a reward; algo={'|'.join(ALGORITHMS)}", PRESETS,
                       config_keys_help(RLConfig()),
                       "YAML file (top-level loss keys, prompts, rewards; sections model, rollout, train, critic)",
                       "key=value overrides, e.g. algo=rloo rollout.group_size=8 train.lr=1e-6", cmd_rl)
