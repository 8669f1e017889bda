"""Typed configs: dataclasses loaded from YAML, with `key=value` overrides from the command line.

`load_config(SFTConfig, "sft.yaml", ["train.lr=1e-4", "model.lora.enabled=true"])` reads the file,
applies the overrides (values parsed as YAML scalars, so types come out right) and checks every
key against the dataclass fields, naming the unknown ones. Then every section that has a
`validate(where)` method checks its values (see `validate_config`), so a bad value is a one-line
error naming its key before anything is loaded. `config_keys_help` lists a config's keys, defaults
and field comments for a command's `--help`.
"""
from __future__ import annotations

import dataclasses
import inspect
import math
import re
import types
import typing
from typing import Any, TypeVar

import yaml

from alignkit.atomic_write import write_text_atomic

T = TypeVar("T")


class ConfigError(ValueError):
    pass


def _unwrap_optional(tp):
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return tp


def _build(tp, value: Any, where: str):
    tp = _unwrap_optional(tp)
    if value is None:
        return None
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if isinstance(value, str):  # a bare string fills the first field (e.g. a data path)
            return tp(value)
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping for {tp.__name__}, got {value!r}")
        hints = typing.get_type_hints(tp)
        names = {f.name for f in dataclasses.fields(tp) if f.init}
        unknown = set(value) - names
        if unknown:
            raise ConfigError(f"{where or 'config'}: unknown key(s) {sorted(unknown)}; valid keys: {sorted(names)}")
        kwargs = {k: _build(hints[k], v, f"{where}.{k}" if where else k) for k, v in value.items()}
        return tp(**kwargs)
    origin = typing.get_origin(tp)
    if origin in (list, tuple):
        (item,) = typing.get_args(tp)[:1] or (Any,)
        items = value if isinstance(value, (list, tuple)) else [value]
        return origin(_build(item, v, f"{where}[{i}]") for i, v in enumerate(items))
    if origin is dict or tp is Any:
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: expected true/false, got {value!r}")
    if tp in (int, float):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            if isinstance(value, str):
                try:
                    return tp(float(value)) if tp is float else int(value)
                except ValueError:
                    pass
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        if tp is int and float(value) != int(value):
            raise ConfigError(f"{where}: expected a whole number, got {value!r}")
        return tp(value)
    if tp is str:
        return str(value)
    return value


def _set_dotted(tree: dict, dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    node = tree
    for k in keys[:-1]:
        node = node.setdefault(k, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override {dotted}: {k} is not a section")
    node[keys[-1]] = value


def to_dict(cfg) -> dict:
    return dataclasses.asdict(cfg)


def load_config(cls: type[T], path: str | None = None, overrides: typing.Sequence[str] = ()) -> T:
    tree = read_yaml(path) if path else {}
    defaults = dataclasses.asdict(cls()) if _all_defaulted(cls) else {}
    merged = _deep_merge(defaults, tree)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like key=value")
        key, raw = item.split("=", 1)
        _set_dotted(merged, key.strip(), yaml.safe_load(raw) if raw.strip() else "")
    cfg = _build(cls, merged, "")
    validate_config(cfg)
    return cfg


def read_yaml(path: str) -> dict:
    """The mapping in a YAML file; anything that stops it being read is a ConfigError naming the file."""
    try:
        # UTF-8 whatever the locale: YAML files are UTF-8 by the spec.
        with open(path, encoding="utf-8") as f:
            tree = yaml.safe_load(f) or {}
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except IsADirectoryError:
        raise ConfigError(f"{path}: is a folder, not a YAML config file") from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not a text file (byte {e.start} is not UTF-8)") from None
    except OSError as e:
        raise ConfigError(f"{path}: cannot read the config file: {e.strerror or e}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {' '.join(str(e).split())}") from None
    if not isinstance(tree, dict):
        raise ConfigError(f"{path}: the top level must be a mapping")
    return tree


def validate_config(cfg, where: str = "") -> None:
    """Call `validate(where)` on every dataclass node of a config that has one, children first.

    `where` is the node's dotted key (`train`, `model.lora`), so each node's errors name the full
    key. Runs before any model or data is loaded: a bad value fails in milliseconds.
    """
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if dataclasses.is_dataclass(value):
            validate_config(value, f"{where}.{f.name}" if where else f.name)
    hook = getattr(cfg, "validate", None)
    if callable(hook):
        hook(where)


def _key(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key


def _show(value: Any) -> str:
    # -1 rather than -1.0: the error echoes what the user typed where it can.
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return repr(value) if isinstance(value, str) else str(value)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def require(ok: bool, where: str, key: str, rule: str, value: Any) -> None:
    """Raise `where.key: must be <rule>, got <value>` unless `ok`."""
    if not ok:
        raise ConfigError(f"{_key(where, key)}: must be {rule}, got {_show(value)}")


def require_number(where: str, key: str, value: Any, *, low: float, high: float = math.inf,
                   low_open: bool = False, high_open: bool = False, whole: bool = False) -> None:
    """A finite number (a whole one with `whole`) between low and high, each bound open or closed."""
    ok = _is_number(value) and (not whole or float(value).is_integer())
    ok = ok and (value > low if low_open else value >= low) and (value < high if high_open else value <= high)
    kind = "a whole number" if whole else "a number"
    if low == 0 and low_open and high == math.inf:
        rule = f"a positive {kind[2:]}"
    elif high == math.inf:
        rule = f"{kind} {'>' if low_open else '>='} {_show(low)}"
    else:
        rule = f"{kind} in {'(' if low_open else '['}{_show(low)}, {_show(high)}{')' if high_open else ']'}"
    require(ok, where, key, rule, value)


def require_choice(where: str, key: str, value: Any, choices: typing.Iterable[str]) -> None:
    choices = list(choices)
    require(value in choices, where, key, f"one of {', '.join(choices)}", value)


def _all_defaulted(cls) -> bool:
    try:
        cls()
        return True
    except TypeError:
        return False


def _deep_merge(base: dict, top: dict) -> dict:
    out = dict(base)
    for k, v in top.items():
        out[k] = _deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def save_config(cfg, path: str) -> None:
    write_text_atomic(path, yaml.safe_dump(to_dict(cfg), sort_keys=False))


def config_keys_help(config, prefix: str = "") -> str:
    """One line per key of a config (a dataclass instance holding the defaults), `key (default):
    comment`, read from the dataclass source so the help never drifts from the field comments."""
    comments = {}
    for klass in reversed(type(config).__mro__):
        if dataclasses.is_dataclass(klass):
            for line in inspect.getsource(klass).splitlines():
                found = re.match(r"\s+(\w+): [^#]*#\s*(.+)$", line)
                if found:
                    comments[found.group(1)] = found.group(2).strip()
    lines = []
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if dataclasses.is_dataclass(value):
            lines.append(config_keys_help(value, f"{prefix}{f.name}."))
            continue
        default = f"{value!r}" if value not in ("", None, []) else "empty"
        lines.append(f"  {prefix}{f.name} ({default}): {comments.get(f.name, '')}".rstrip(": "))
    return "\n".join(lines)
