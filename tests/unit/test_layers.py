"""The layers of docs/architecture.md, proven from the imports: every import statement of every
module, at every depth (inside functions and ``TYPE_CHECKING`` blocks too), resolved to the
module it names and checked against the rules below."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
FOLDERS = ("app", "bridge", "commands", "esl", "presence", "wire")
TOP_LEVEL = ("app", "bridge", "commands", "esl", "presence", "wire", "cli")
CLI = ("busylamp.cli", "busylamp.commands")

# Modules of the sans-IO core: no gevent, no sockets, no clock (time comes in as an argument).
SANS_IO = (
    "busylamp.presence.sip",
    "busylamp.presence.engine",
    "busylamp.presence.subscriptions",
    "busylamp.presence.state",
    "busylamp.presence.lifecycle",
    "busylamp.presence.packages",
    "busylamp.presence.updates",
    "busylamp.presence.snapshots",
    "busylamp.presence.limits",
    "busylamp.presence.registrations",
    "busylamp.bridge.normalize",
    "busylamp.bridge.resync",
    "busylamp.esl.protocol",
    "busylamp.esl.session",
    "busylamp.wire",
)
IO_MODULES = ("gevent", "socket", "select", "selectors", "asyncio", "threading", "time",
              "ssl", "http", "urllib.request")


def package_files() -> Iterator[tuple[str, Path]]:
    """(dotted name, path) of every module installed under ``busylamp``."""
    yield "busylamp", ROOT / "__init__.py"
    yield "busylamp.cli", ROOT / "cli.py"
    for folder in FOLDERS:
        for path in sorted((ROOT / folder).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            yield ".".join(("busylamp", *parts)), path


def imports_of(name: str, path: Path) -> Iterator[tuple[int, str]]:
    """(line, absolute module name) of each import in the file, relative ones resolved."""
    is_package = path.name == "__init__.py"
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".")
                base = base[: len(base) - node.level + (1 if is_package else 0)]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            if node.module is None or node.level:
                # ``from . import x`` names submodules as well as attributes
                for alias in node.names:
                    yield node.lineno, f"{module}.{alias.name}"
            yield node.lineno, module


MODULES = list(package_files())


def within(module: str, *prefixes: str) -> bool:
    return any(module == p or module.startswith(p + ".") for p in prefixes)


IMPORTS = {name: (path, list(imports_of(name, path))) for name, path in MODULES}


def violations(rule) -> list[str]:
    found = []
    for name, (path, imports) in IMPORTS.items():
        for line, module in imports:
            why = rule(name, module)
            if why:
                found.append(f"{path.relative_to(ROOT)}:{line}: {name} imports {module}: {why}")
    return found


def test_the_walk_sees_the_whole_package() -> None:
    names = {name for name, _ in MODULES}
    assert {"busylamp.cli", "busylamp.presence.engine", "busylamp.esl.session",
            "busylamp.bridge.normalize", "busylamp.app.roles", "busylamp.app.tail",
            "busylamp.commands.run", "busylamp.commands.tail"} <= names
    # in-function imports are seen: the roles import the bridge lazily
    assert any(within(m, "busylamp.bridge") for _, m in imports_of(
        "busylamp.app.roles", ROOT / "app" / "roles.py"))


def test_our_modules_are_imported_through_the_busylamp_namespace() -> None:
    def rule(name: str, module: str) -> str:
        if within(module, *TOP_LEVEL):
            return "our code is busylamp.<folder>, never a top-level name"
        return ""

    assert violations(rule) == []


def test_esl_imports_nothing_of_ours() -> None:
    def rule(name: str, module: str) -> str:
        if within(name, "busylamp.esl") and within(module, "busylamp") and not within(
                module, "busylamp.esl"):
            return "esl/ is a library of its own"
        return ""

    assert violations(rule) == []


def test_presence_imports_neither_bridge_nor_esl_nor_the_wiring() -> None:
    def rule(name: str, module: str) -> str:
        if within(name, "busylamp.presence") and within(
                module, "busylamp.bridge", "busylamp.esl", "busylamp.app", *CLI):
            return "presence/ knows updates, not where they come from"
        return ""

    assert violations(rule) == []


def test_bridge_does_not_import_the_engine_or_the_wiring() -> None:
    def rule(name: str, module: str) -> str:
        if within(name, "busylamp.bridge") and within(
                module, "busylamp.presence", "busylamp.app", *CLI):
            return "bridge/ publishes updates; it does not know the engine"
        return ""

    assert violations(rule) == []


def test_wire_imports_nothing_of_ours() -> None:
    """The message contract stands alone: bridge/ and presence/ build and check messages
    through it, it knows neither of them."""
    def rule(name: str, module: str) -> str:
        if within(name, "busylamp.wire") and within(module, "busylamp") and not within(
                module, "busylamp.wire"):
            return "wire/ is the contract between bridge and presence, below both"
        return ""

    assert violations(rule) == []


def test_the_bridge_and_presence_reach_the_wire() -> None:
    """The rule above is no empty promise: both sides do build/check messages through wire."""
    users = {name.split(".")[1] for name, (_, imports) in IMPORTS.items()
             if any(within(module, "busylamp.wire") for _, module in imports)}
    assert {"bridge", "presence"} <= users


def test_only_the_cli_imports_the_composition_root() -> None:
    def rule(name: str, module: str) -> str:
        if within(module, "busylamp.app") and not within(name, "busylamp.app", *CLI):
            return "the composition root is imported by the CLI (cli, commands/) only"
        return ""

    assert violations(rule) == []


def test_the_cli_wires_nothing_itself() -> None:
    """cli.py and commands/ parse options and print; ESL clients, NSQ and the bridge are the
    composition root's (busylamp.app) to build."""
    def rule(name: str, module: str) -> str:
        if within(name, *CLI) and within(module, "busylamp.esl", "busylamp.bridge"):
            return "the CLI reaches esl/ and bridge/ through busylamp.app only"
        return ""

    assert violations(rule) == []


def test_nothing_below_the_cli_imports_it() -> None:
    def rule(name: str, module: str) -> str:
        if within(module, *CLI) and not within(name, *CLI):
            return "the CLI is the top: nothing imports it"
        return ""

    assert violations(rule) == []


@pytest.mark.parametrize("core", SANS_IO)
def test_the_sans_io_core_has_no_sockets_no_gevent_no_clock(core: str) -> None:
    assert any(within(name, core) for name, _ in MODULES), f"{core} is gone: update SANS_IO"

    def rule(name: str, module: str) -> str:
        if within(name, core) and within(module, *IO_MODULES):
            return "sans-IO: the adapter owns sockets, greenlets and the clock"
        if within(name, core) and within(module, "busylamp.presence.node"):
            return "sans-IO: the core does not know its adapter"
        return ""

    assert violations(rule) == []


def test_setup_cfg_installs_every_package_folder() -> None:
    """setup.cfg maps the folders into ``busylamp`` by an explicit list; a new package folder
    missing from it would be left out of ``pip install .``."""
    text = (ROOT / "setup.cfg").read_text()
    listed = text.split("packages =", 1)[1].split("install_requires", 1)[0].split()
    folders = {name for name, path in MODULES if path.name == "__init__.py"}
    assert sorted(listed) == sorted(folders)
