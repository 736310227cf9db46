"""Fixtures of the real-FreeSWITCH system tests: a switch from the kit, busylamp next to it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.kits import FreeSwitchKit
from tests.system.freeswitch import FreeSwitch
from tests.system.test_cli_subprocess import Node, run_node


@pytest.fixture(scope="module")
def fs(freeswitch_kit: FreeSwitchKit, tmp_path_factory) -> Iterator[FreeSwitch]:
    """One switch per test module (configured as docs/phones.md and the README say)."""
    switch = FreeSwitch(freeswitch_kit, tmp_path_factory.mktemp("fs"))
    switch.start()
    try:
        yield switch
    finally:
        switch.stop()


@pytest.fixture
def busylamp_all(fs: FreeSwitch, tmp_path: Path) -> Iterator[Node]:
    """``busylamp run --role all`` on the switch's event socket (memory bus), SIP on loopback."""
    with run_node(tmp_path / "busylamp", "--esl", fs.esl, role="all", ready_timeout=15) as node:
        yield node
