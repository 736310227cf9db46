"""README.md carries the generated tables and exactly two set-up commands."""

from __future__ import annotations

import re
import subprocess
import sys

from tests.conftest import REPO

README = (REPO / "README.md").read_text()


def _generated(which: str) -> str:
    return subprocess.run(
        [sys.executable, str(REPO / "scripts" / "readme_tables.py"), which],
        capture_output=True, text=True, check=True, cwd=REPO,
    ).stdout


def _between(name: str) -> str:
    match = re.search(rf"<!-- {name}:begin -->\n(.*?)<!-- {name}:end -->", README, re.S)
    assert match, f"markers for {name} missing"
    return match.group(1)


def test_flag_table_is_generated_from_the_config():
    assert _between("flags") == _generated("flags")


def test_json_field_table_is_generated_from_the_validator():
    assert _between("fields") == _generated("fields")


def test_exactly_two_setup_commands_and_ci_uses_the_test_one():
    setup = README.split("## Set up", 1)[1].split("```sh", 1)[1].split("```", 1)[0]
    commands = [line.split("#")[0].strip() for line in setup.strip().splitlines()]
    assert commands == ["./scripts/run.sh", "./scripts/test.sh"]
    assert "./scripts/test.sh" in (REPO / ".ci" / "run").read_text()
