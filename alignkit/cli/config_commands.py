"""Commands that are one config dataclass and one run function (the sampling-with-a-reward methods, the
data commands): a table names each command's module, config class and run function; the command reads
`--config FILE` and key=value overrides into the config and runs it."""
from __future__ import annotations

import argparse
import importlib

# command: (module, config class, run function, one-line summary)
Table = dict[str, tuple[str, str, str, str]]


def load_method(package: str, table: Table, command: str):
    """(config class, run function) of `command`."""
    module, config_name, run_name, _ = table[command]
    mod = importlib.import_module(f"{package}.{module}")
    return getattr(mod, config_name), getattr(mod, run_name)


def run_method(package: str, table: Table, command: str, config_path: str | None, overrides: list[str]):
    from alignkit.config import load_config

    config_cls, run = load_method(package, table, command)
    return run(load_config(config_cls, config_path, overrides))


def add_config_arguments(p: argparse.ArgumentParser, config_file: str, example: str) -> None:
    p.add_argument("--config", help=f"YAML file (see {config_file})")
    p.add_argument("overrides", nargs="*", help=f"key=value overrides, e.g. {example}")


def keys_epilog(package: str, table: Table, command: str) -> str:
    """The config keys with their defaults and comments, for --help."""
    from alignkit.cli.train import KEYS_HEADING
    from alignkit.config import config_keys_help

    return KEYS_HEADING + config_keys_help(load_method(package, table, command)[0]())
