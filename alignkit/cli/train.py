"""The training commands: `sft`, `pref` and its shorthands (`dpo`, `ipo`, ...), `rm`.

Each reads a YAML config and key=value overrides into the stage's config dataclass, trains, and
says where the final model went; `--help` lists every config key with its default. These are the
only commands that run as one job under torchrun or accelerate launch (see `trains`).
"""
from __future__ import annotations

import argparse
import os

KEYS_HEADING = "config keys (YAML or key=value):\n"


def trains(command: str) -> bool:
    """sft, pref (and its shorthands), rm, and rl (and its presets): the commands that train as one run under
    torchrun."""
    from alignkit.rl.objective import ALGORITHMS  # the rl presets are its algorithms
    from alignkit.training.preference import SHORTHANDS

    return command in ("sft", "pref", "rm", "rl", *SHORTHANDS, *ALGORITHMS)


def _train(config_cls, run, a, overrides) -> None:
    from alignkit.config import load_config

    cfg = load_config(config_cls, a.config, overrides)
    run(cfg)
    print(f"saved to {os.path.join(cfg.train.output_dir, 'final')}")


def _add_training_command(sub, name: str, summary: str, keys: str, config_help: str, overrides_help: str,
                          func) -> None:
    p = sub.add_parser(name, help=summary, epilog=KEYS_HEADING + keys,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", help=config_help)
    p.add_argument("overrides", nargs="*", help=overrides_help)
    p.set_defaults(func=func)


def cmd_sft(a) -> None:
    from alignkit.training.sft import SFTConfig, run_sft

    _train(SFTConfig, run_sft, a, a.overrides)


def preset_overrides(overrides, key: str, preset: str | None, general: str) -> list[str]:
    """`key=preset` in front of the overrides for a shorthand command (`alignkit dpo` = `alignkit pref
    loss=dpo`); a conflicting `key=...` among them is an error naming the general command."""
    from alignkit.config import ConfigError

    overrides = list(overrides)
    if preset is None:
        return overrides
    chosen = [o.split("=", 1)[1].strip() for o in overrides if o.split("=", 1)[0].strip() == key]
    if any(c != preset for c in chosen):
        raise ConfigError(f"`alignkit {preset}` presets {key}={preset}; use `alignkit {general} {key}=...` for "
                          f"another {'loss' if key == 'loss' else 'one'}")
    return [f"{key}={preset}"] + overrides


def cmd_pref(a, preset: str | None = None) -> None:
    from alignkit.training.pref_run import PrefConfig, run_pref

    _train(PrefConfig, run_pref, a, preset_overrides(a.overrides, "loss", preset, "pref"))


def cmd_rm(a) -> None:
    from alignkit.training.reward import RMConfig, run_rm

    _train(RMConfig, run_rm, a, a.overrides)


def add_sft(sub) -> None:
    from alignkit.config import config_keys_help
    from alignkit.training.sft import SFTConfig

    _add_training_command(sub, "sft", "supervised fine-tuning from a YAML config", config_keys_help(SFTConfig()),
                          "YAML file (sections model, data, train)",
                          "key=value overrides, e.g. train.lr=1e-4 model.lora.enabled=true", cmd_sft)


def add_pref(sub) -> None:
    """`pref`, and one shorthand per common loss that presets it."""
    from alignkit.config import config_keys_help
    from alignkit.training.pref_run import PrefConfig
    from alignkit.training.preference import ALL_LOSSES, SHORTHANDS

    add_command_family(sub, "pref", "loss", f"preference training; loss={'|'.join(ALL_LOSSES)}", SHORTHANDS,
                       config_keys_help(PrefConfig()),
                       "YAML file (top-level loss keys, sections model, data, train, control)",
                       "key=value overrides, e.g. loss=ipo beta=0.5 train.lr=1e-6", cmd_pref)


def add_command_family(sub, general: str, key: str, summary: str, presets, keys: str, config_help: str,
                       overrides_help: str, func) -> None:
    """A general training command and its shorthands, each `alignkit <general> <key>=<shorthand>`."""
    _add_training_command(sub, general, summary, keys, config_help, overrides_help, func)
    for name in presets:
        _add_training_command(sub, name, f"= alignkit {general} {key}={name}", keys,
                              f"YAML file (as for alignkit {general})", "key=value overrides",
                              lambda a, preset=name: func(a, preset))


def add_rm(sub) -> None:
    from alignkit.config import config_keys_help
    from alignkit.training.reward import RMConfig

    _add_training_command(sub, "rm", "train a reward model (scalar head, Bradley-Terry) on preference pairs",
                          config_keys_help(RMConfig()), "YAML file (sections model, data, train)",
                          "key=value overrides, e.g. center_coefficient=0.01", cmd_rm)
