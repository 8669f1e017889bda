"""Each package's `__init__` names its entry points (`__all__`): every name resolves, none hides a
submodule of the same name, and importing the package alone imports none of its modules."""
from __future__ import annotations

import importlib
import pkgutil
import subprocess
import sys

import pytest

PACKAGES = ["alignkit.data", "alignkit.models", "alignkit.training", "alignkit.serving", "alignkit.evaluation",
            "alignkit.generation", "alignkit.rewards"]


@pytest.mark.parametrize("name", PACKAGES)
def test_every_exported_name_resolves_and_hides_no_submodule(name):
    package = importlib.import_module(name)
    assert package.__all__
    submodules = {info.name for info in pkgutil.iter_modules(package.__path__)}
    assert not set(package.__all__) & submodules
    for exported in package.__all__:
        assert getattr(package, exported) is not None
    with pytest.raises(AttributeError):
        package.not_a_name


def test_importing_the_packages_imports_none_of_their_modules():
    code = ("import sys\n"
            f"for name in {PACKAGES!r}: __import__(name)\n"
            "loaded = [m for m in sys.modules if m.startswith('alignkit.') and m.count('.') > 1 or m == 'torch']\n"
            "print(sorted(loaded))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"
