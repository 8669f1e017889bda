"""The online RL commands: `rl` and its presets `grpo`, `rloo`, `reinforce` (= `rl algo=...`).

Like the other training commands they read a YAML config and key=value overrides, train, and say where
the final model went; `--help` lists every config key. They run as one process: the rollout source does
not yet split its sampling across processes, so under torchrun they are refused like other commands.
"""
from __future__ import annotations

PRESETS = ("grpo", "rloo", "reinforce")


def cmd_rl(a, preset: str | None = None) -> None:
    from alignkit.cli.train import _train
    from alignkit.config import ConfigError
    from alignkit.rl.run import RLConfig, run_rl

    overrides = list(a.overrides)
    if preset is not None:
        chosen = [o.split("=", 1)[1].strip() for o in overrides if o.split("=", 1)[0].strip() == "algo"]
        if any(c != preset for c in chosen):
            raise ConfigError(f"`alignkit {preset}` presets algo={preset}; use `alignkit rl algo=...` for another one")
        overrides = [f"algo={preset}"] + overrides
    _train(RLConfig, run_rl, a, overrides)


def add_rl(sub) -> None:
    """`rl`, and one preset per algorithm."""
    from alignkit.cli.train import _add_training_command
    from alignkit.config import config_keys_help
    from alignkit.rl.objective import ALGORITHMS
    from alignkit.rl.run import RLConfig

    keys = config_keys_help(RLConfig())
    _add_training_command(sub, "rl", f"online RL from a reward; algo={'|'.join(ALGORITHMS)}", keys,
                          "YAML file (top-level loss keys, prompts, rewards; sections model, rollout, train)",
                          "key=value overrides, e.g. algo=rloo rollout.group_size=8 train.lr=1e-6", cmd_rl)
    for name in PRESETS:
        _add_training_command(sub, name, f"= alignkit rl algo={name}", keys, "YAML file (as for alignkit rl)",
                              "key=value overrides", lambda a, preset=name: cmd_rl(a, preset))
