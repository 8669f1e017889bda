"""The command-line package and the demo package: every import they name resolves, neither takes part
in an import cycle, the training commands list their config keys in --help, and the demo data ships."""
from __future__ import annotations

import ast
import glob
import importlib
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from alignkit.cli import main
from tests.helpers.paths import ROOT

PACKAGE = ROOT / "alignkit"


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> list[tuple[str, list[str]]]:
    """(module, names) of every `from alignkit... import ...` and `import alignkit...` in a file, at
    any depth: the commands import lazily, so a moved module shows only when that command runs."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").startswith("alignkit"):
            found.append((node.module, [a.name for a in node.names]))
        elif isinstance(node, ast.Import):
            found += [(a.name, []) for a in node.names if a.name.startswith("alignkit")]
    return found


def test_every_import_in_the_cli_and_demo_packages_resolves():
    files = sorted((PACKAGE / "cli").glob("*.py")) + sorted((PACKAGE / "demo").rglob("*.py"))
    missing = []
    for path in files:
        for module, names in _imports(path):
            try:
                imported = importlib.import_module(module)
            except ImportError as e:
                missing.append(f"{path.relative_to(ROOT)}: {module} ({e})")
                continue
            for name in names:
                if not hasattr(imported, name):
                    try:  # a submodule: `from alignkit.evaluation import grading`
                        importlib.import_module(f"{module}.{name}")
                    except ImportError:
                        missing.append(f"{path.relative_to(ROOT)}: {module}.{name}")
    assert not missing, "\n".join(missing)


def _import_graph() -> dict[str, set[str]]:
    """Module -> the alignkit modules it imports (at any depth), for every module of the package."""
    modules = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph = {}
    for name, path in modules.items():
        targets = set()
        for module, names in _imports(path):
            submodules = {f"{module}.{n}" for n in names} & modules.keys()
            targets |= submodules or ({module} & modules.keys())
        graph[name] = targets - {name}
    return graph


@pytest.mark.parametrize("package", ["alignkit.cli", "alignkit.demo"])
def test_no_import_cycle_runs_through(package):
    graph = _import_graph()
    for start in [m for m in graph if m == package or m.startswith(package + ".")]:
        seen, stack = set(), [(start, [start])]
        while stack:
            node, trail = stack.pop()
            for target in graph.get(node, ()):
                assert target != start, "import cycle: " + " -> ".join(trail + [target])
                if target not in seen:
                    seen.add(target)
                    stack.append((target, trail + [target]))


@pytest.mark.parametrize("command, keys", [
    ("sft", ["data.train_on ('all_assistant')", "train.output_dir", "merge_lora (True)"]),
    ("dpo", ["loss ('dpo')", "beta (", "train.output_dir"]),
    ("rm", ["center_coefficient (0.0)", "train.output_dir"]),
])
def test_training_commands_list_their_config_keys(command, keys, capsys):
    with pytest.raises(SystemExit) as stop:
        main([command, "--help"])
    assert stop.value.code == 0
    help_text = capsys.readouterr().out
    assert "config keys (YAML or key=value):" in help_text
    for key in keys:
        assert key in help_text


def test_config_keys_help_reads_the_field_comments():
    from dataclasses import dataclass, field

    from alignkit.config import config_keys_help

    @dataclass
    class Inner:
        depth: int = 2  # how deep

    @dataclass
    class Outer:
        name: str = ""
        inner: Inner = field(default_factory=Inner)

    assert config_keys_help(Outer()) == "  name (empty)\n  inner.depth (2): how deep"


def test_package_data_covers_the_demo_files():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    patterns = config["tool"]["setuptools"]["package-data"]["alignkit"]
    shipped = {Path(p) for pattern in patterns for p in glob.glob(str(PACKAGE / pattern))}
    demo_files = set((PACKAGE / "demo" / "data").glob("*.jsonl"))
    assert demo_files and demo_files <= shipped
    resources = set((PACKAGE / "construction" / "resources").glob("*"))  # the data commands' own prompts
    assert resources and resources <= shipped
    assert config["project"]["scripts"]["alignkit"] == "alignkit.cli:main"


def test_python_dash_m_alignkit_cli_is_the_command():
    proc = subprocess.run([sys.executable, "-m", "alignkit.cli", "--help"], capture_output=True, text=True,
                          timeout=120, cwd=ROOT, env={**os.environ, "COLUMNS": "200"})
    assert proc.returncode == 0 and "rm-eval" in proc.stdout


@pytest.mark.parametrize("command", ["templates", "self-instruct", "evolve", "label", "critique", "contrast", "dedup",
                                     "decontaminate", "stats"])
def test_every_data_command_key_is_explained_in_its_help(command, capsys):
    with pytest.raises(SystemExit) as stop:
        main(["data", command, "--help"])
    assert stop.value.code == 0
    keys = capsys.readouterr().out.split("config keys (YAML or key=value):")[1].strip("\n").splitlines()
    assert any(line.strip().startswith("output_dir (") for line in keys)
    unexplained = [line.strip() for line in keys if "): " not in line]  # `key (default): what it does`
    assert not unexplained, unexplained
