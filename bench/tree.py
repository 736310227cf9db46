"""Import ``busylamp`` from a source tree that is not installed: this checkout or an older one.

A before/after benchmark runs two trees with one virtualenv. A tree from after the namespace
step has ``__init__.py`` at its root and is loaded as the package ``busylamp``. An older tree
installed four top-level names (``presence``, ``bridge``, ``esl``, ``cli``); for those,
``busylamp.<name>`` is made an alias of the old top-level module, so one copy of each module
is loaded and the benchmark code imports ``busylamp.…`` for both.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
import types
from pathlib import Path

OLD_TOP_LEVEL = ("presence", "bridge", "esl", "cli")


class _AliasFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Serves ``busylamp.X…`` as the already-importable top-level ``X…`` of an old tree."""

    def find_spec(self, fullname, path=None, target=None):
        head, _, rest = fullname.partition(".")
        if head != "busylamp" or not rest or rest.split(".")[0] not in OLD_TOP_LEVEL:
            return None
        return importlib.util.spec_from_loader(fullname, self)

    def create_module(self, spec):
        return importlib.import_module(spec.name.partition(".")[2])

    def exec_module(self, module) -> None:
        """The module ran when it was imported under its old name."""


def use_tree(tree: str | Path) -> None:
    """Make ``import busylamp…`` load the code of ``tree`` (call before any such import)."""
    root = Path(tree).resolve()
    init = root / "__init__.py"
    if init.exists():
        spec = importlib.util.spec_from_file_location(
            "busylamp", init, submodule_search_locations=[str(root)])
        module = importlib.util.module_from_spec(spec)
        sys.modules["busylamp"] = module
        spec.loader.exec_module(module)
        return
    sys.path.insert(0, str(root))
    package = types.ModuleType("busylamp")
    package.__path__ = []
    sys.modules["busylamp"] = package
    sys.meta_path.insert(0, _AliasFinder())


def launcher_code(tree: str | Path) -> str:
    """Python source for ``-c`` that runs the ``busylamp`` CLI of ``tree`` with ``sys.argv``."""
    bench_root = Path(__file__).resolve().parent.parent
    return (f"import sys; sys.path.insert(0, {str(bench_root)!r}); "
            f"from bench.tree import use_tree; use_tree({str(tree)!r}); "
            f"from busylamp import cli; sys.exit(cli.main(prog_name='busylamp'))")


def tool_setup(tree: str | None) -> None:
    """What a bench tool run as ``python -m bench.X`` does before importing ``busylamp``: the
    repository first on ``sys.path``, and ``tree`` (its ``--tree``) in place of this checkout
    when given."""
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    if tree:
        use_tree(tree)


def print_result(result: dict) -> None:
    """A bench tool's answer on one line: ``key=value`` for every value that is not None."""
    print(" ".join(f"{key}={value}" for key, value in result.items() if value is not None))
