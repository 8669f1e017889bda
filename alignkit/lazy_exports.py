"""Public names of a package, imported on first use.

A package's `__init__` lists its entry points without importing the modules behind them, so
`import alignkit.data` costs nothing, a torch-free module never pulls torch in through its
package, and `alignkit --help` stays fast. A submodule imported directly
(`from alignkit.training.sft import run_sft`) is unaffected.
"""
from __future__ import annotations

import importlib
from typing import Any, Callable


def lazy_exports(package: str, exports: dict[str, tuple[str, ...]]) -> tuple[list[str], Callable[[str], Any]]:
    """`__all__` and the module `__getattr__` for `package`, whose public names are `exports`
    (submodule -> the names it defines). A name must not be a submodule's own name: `from package
    import submodule` asks `__getattr__` first, and would get the name instead of the module."""
    where = {name: module for module, names in exports.items() for name in names}

    def __getattr__(name: str) -> Any:
        if name not in where:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(importlib.import_module(f"{package}.{where[name]}"), name)

    return list(where), __getattr__
