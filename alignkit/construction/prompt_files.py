"""Reading the YAML files of prompts, principles and directions that data commands are driven by.

alignkit ships its own (construction/resources/, written for this project); a config key points at a
user's copy instead. Every key is checked when the file loads, before any model does: an unknown key (a
misspelt one would be silently ignored), a missing or empty text, a repeated name, a jinja2 syntax error
or a template variable the command cannot fill is a one-line DataError naming the file and key.
"""
from __future__ import annotations

from typing import Any, Sequence

import jinja2
import yaml
from jinja2 import meta
from jinja2.sandbox import SandboxedEnvironment

from alignkit.data.errors import DataError
from alignkit.data.readers import read_text

# Sandboxed: a prompts file is data a user may have been handed, and rendering it must not reach Python.
_JINJA = SandboxedEnvironment(undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True,
                              autoescape=False)


def read_yaml_resource(path: str, keys: Sequence[str]) -> dict:
    """The mapping in a YAML prompts/principles file, with no key but `keys`."""
    try:
        tree = yaml.safe_load(read_text(path))
    except yaml.YAMLError as error:
        raise DataError(f"{path}: not valid YAML: {' '.join(str(error).split())}") from None
    if not isinstance(tree, dict):
        raise DataError(f"{path}: the top level must be a mapping")
    unknown = sorted(str(key) for key in set(tree) - set(keys))
    if unknown:
        raise DataError(f"{path}: unknown key(s) {unknown}; expected {', '.join(keys)}")
    return tree


def text_key(tree: dict, path: str, key: str) -> str:
    value = tree.get(key)
    if not isinstance(value, str) or not value.strip():
        raise DataError(f"{path}: {key}: must be a non-empty string, got {value!r:.80}")
    return value


def named_entries(tree: dict, path: str, section: str, fields: tuple[str, ...]) -> list[dict]:
    """`tree[section]`: a non-empty list of mappings, each with a unique `name` and non-empty string `fields`
    (and no other keys)."""
    entries = tree.get(section)
    if not isinstance(entries, list) or not entries:
        raise DataError(f"{path}: {section}: must be a non-empty list, got {entries!r:.80}")
    allowed, names = ("name", *fields), set()
    for index, entry in enumerate(entries):
        where = f"{path}: {section}[{index}]"
        if not isinstance(entry, dict):
            raise DataError(f"{where}: must be a mapping with keys {', '.join(allowed)}")
        unknown = sorted(set(entry) - set(allowed))
        if unknown:
            raise DataError(f"{where}: unknown key(s) {unknown}; expected {', '.join(allowed)}")
        for key in allowed:
            if not isinstance(entry.get(key), str) or not entry[key].strip():
                raise DataError(f"{where}.{key}: must be a non-empty string, got {entry.get(key)!r:.80}")
        if entry["name"] in names:
            raise DataError(f"{where}.name: {entry['name']!r} is used twice; names must be unique")
        names.add(entry["name"])
    return entries


def compile_template(text: Any, where: str, variables: Sequence[str], required: Sequence[str] = ()) -> jinja2.Template:
    """A jinja2 template that may use only `variables` and must use `required`; `where` names the file and key."""
    if not isinstance(text, str) or not text.strip():
        raise DataError(f"{where}: must be a non-empty template text, got {text!r:.80}")
    try:
        used = meta.find_undeclared_variables(_JINJA.parse(text))
    except jinja2.TemplateSyntaxError as error:
        raise DataError(f"{where}: template line {error.lineno}: {error.message}") from None
    unknown = sorted(used - set(variables))
    if unknown:
        raise DataError(f"{where}: unknown template variable(s) {unknown}; it can use {sorted(variables)}")
    missing = [name for name in required if name not in used]
    if missing:
        raise DataError(f"{where}: the template must use {', '.join('{{ ' + m + ' }}' for m in missing)}")
    return _JINJA.from_string(text)
