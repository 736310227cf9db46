"""docs/architecture.md names only files and functions that exist.

Every `` `folder/file.py` `` and `` `folder/file.py:Name.attr` `` it writes is checked: the file
exists, and the dotted name is defined in it (a class, function, method or module-level name),
found by reading the file's syntax tree, not by importing it.
"""

from __future__ import annotations

import ast
import re
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "architecture.md"
REFERENCE = re.compile(r"`((?:[\w.-]+/)*[\w.-]+\.(?:py|c|toml|cfg|md|xml|sh))(?::([\w.]+))?`")


def references() -> list[tuple[str, str | None]]:
    return sorted(set(REFERENCE.findall(DOC.read_text())), key=str)


@cache
def definitions(path: Path) -> frozenset[str]:
    """Dotted names defined in a Python file: classes, functions, methods, assigned names."""
    names: set[str] = set()

    def walk(body: list[ast.stmt], prefix: str) -> None:
        for node in body:
            if isinstance(node, ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
                names.add(prefix + node.name)
                if isinstance(node, ast.ClassDef):
                    walk(node.body, prefix + node.name + ".")
            elif isinstance(node, ast.Assign | ast.AnnAssign):
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                for target in targets:
                    if isinstance(target, ast.Name):
                        names.add(prefix + target.id)
            elif isinstance(node, ast.If | ast.Try):
                walk(node.body, prefix)

    walk(ast.parse(path.read_text()).body, "")
    return frozenset(names)


def test_the_doc_names_files_and_functions() -> None:
    refs = references()
    assert len(refs) > 40
    assert sum(1 for _, name in refs if name) > 25


@pytest.mark.parametrize(("path", "name"), references())
def test_named_file_and_function_exist(path: str, name: str) -> None:
    target = ROOT / path
    assert target.is_file(), f"docs/architecture.md names {path}, which does not exist"
    if name:
        assert name in definitions(target), f"docs/architecture.md names {path}:{name}, not defined"
