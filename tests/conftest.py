"""Shared pytest fixtures: paths to ../shared/fixtures (laid beside the clone in CI)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SHARED_FIXTURES = REPO.parent / "shared" / "fixtures"


@pytest.fixture(scope="session")
def shared_fixtures() -> Path:
    if not SHARED_FIXTURES.is_dir():
        pytest.fail(f"shared fixtures not found at {SHARED_FIXTURES}")
    return SHARED_FIXTURES


@pytest.fixture
def nsq_endpoints():
    """(nsqd TCP address, nsqlookupd HTTP address or None, the double or None).

    A real broker when NSQD_TCP_ADDRESS (and NSQLOOKUPD_HTTP_ADDRESS) are set, so the same tests
    run unchanged against nsqd; else the protocol double in tests/nsqd_double.py.
    """
    if os.environ.get("NSQD_TCP_ADDRESS"):
        yield os.environ["NSQD_TCP_ADDRESS"], os.environ.get("NSQLOOKUPD_HTTP_ADDRESS"), None
        return
    from tests.nsqd_double import NsqdDouble

    double = NsqdDouble()
    double.start()
    try:
        yield double.tcp_address, double.lookupd_address, double
    finally:
        double.stop()
