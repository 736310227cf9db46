"""Shared pytest fixtures: the suite's own data (tests/fixtures) and the real-component kits."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.kits import FreeSwitchKit, NsqKit, require_freeswitch, require_nsq

REPO = Path(__file__).resolve().parent.parent
FIXTURES = REPO / "tests" / "fixtures"


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
    """Captured ESL/SIP data and the torture messages, copied from ../shared/fixtures (SOURCES.md)."""
    return FIXTURES


@pytest.fixture(scope="session")
def nsq_kit() -> NsqKit:
    return require_nsq()


@pytest.fixture(scope="session")
def freeswitch_kit() -> FreeSwitchKit:
    return require_freeswitch()


@pytest.fixture
def nsq_endpoints():
    """(nsqd TCP address, nsqlookupd HTTP address or None, the double or None)."""
    from tests.nsqd_double import NsqdDouble

    double = NsqdDouble()
    double.start()
    try:
        yield double.tcp_address, double.lookupd_address, double
    finally:
        double.stop()
