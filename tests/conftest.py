"""Shared pytest fixtures: the suite's own data (tests/fixtures) and the real-component kits."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from busylamp.bridge.nsq import NsqLoop
from tests.kits import FreeSwitchKit, NsqKit, require_freeswitch, require_nsq
from tests.nsq_kit import NsqCluster

REPO = Path(__file__).resolve().parent.parent
LAYERS = ("unit", "integration", "system")
FIXTURES = REPO / "tests" / "fixtures"


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
    """Captured ESL/SIP data and the torture messages, copies of the project kit fixtures, each folder with its SOURCES.md."""
    return FIXTURES


@pytest.fixture(scope="session")
def nsq_kit() -> NsqKit:
    return require_nsq()


@pytest.fixture(scope="session")
def freeswitch_kit() -> FreeSwitchKit:
    return require_freeswitch()


@pytest.fixture
def nsq(nsq_kit: NsqKit, tmp_path: Path) -> Iterator[NsqCluster]:
    """A real nsqlookupd + nsqd (the kit) on this test's own free ports, stopped at teardown."""
    cluster = NsqCluster(nsq_kit, tmp_path / "nsq")
    try:
        yield cluster.start()
    finally:
        cluster.stop()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark each test with its layer, the folder it lives in: ``-m unit`` runs the tests that
    open no socket, ``-m integration`` those that use sockets in one process, ``-m system``
    those that start sipp, Kamailio, FreeSWITCH, nsqd or other processes."""
    for item in items:
        parts = Path(str(item.path)).relative_to(REPO / "tests").parts
        if parts and parts[0] in LAYERS:
            item.add_marker(getattr(pytest.mark, parts[0]))


@pytest.fixture
def loop() -> Iterator[NsqLoop]:
    """The NSQ bus's tornado loop, started for one test and stopped after it."""
    nsq_loop = NsqLoop()
    nsq_loop.start()
    yield nsq_loop
    nsq_loop.stop()
