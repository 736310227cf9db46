"""The unit layer opens no socket and starts no process: both raise here, so a test that needs
one fails and belongs in tests/integration or tests/system."""

from __future__ import annotations

import socket
import subprocess

import gevent.socket
import pytest

from tests.extensions import require_built_extension


def _refuse(what: str):
    def refuse(self, *args, **kwargs):
        raise AssertionError(f"a unit test may not {what}; move it to tests/integration or tests/system")
    return refuse


@pytest.fixture(autouse=True)
def no_sockets_or_processes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(socket.socket, "__init__", _refuse("open a socket"))
    monkeypatch.setattr(gevent.socket.socket, "__init__", _refuse("open a socket"))
    monkeypatch.setattr(subprocess.Popen, "__init__", _refuse("start a process"))


@pytest.fixture(params=["c", "python"])
def head_split(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """A test that uses this runs with the C head split (presence/sip/_scan.c) and with the
    Python one; tests/unit/test_sip_scan.py checks the two agree on mutants."""
    from busylamp.presence.sip import parse

    if request.param == "python":
        monkeypatch.setattr(parse, "_split_head_c", None)
    elif parse._split_head_c is None:
        require_built_extension("presence/sip/_scan.c")
    return request.param


@pytest.fixture(params=["c", "python"])
def value_parse(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """A test that uses this runs with the C URI, name-addr and Via parsers
    (presence/sip/_values.c) and with the Python ones, each from an empty memo;
    tests/unit/test_sip_values.py checks the two agree on mutants."""
    from busylamp.presence.sip import uri, via

    monkeypatch.setattr(uri, "_uri_memo", {})
    monkeypatch.setattr(uri, "_name_addr_memo", {})
    if request.param == "python":
        monkeypatch.setattr(uri, "_sip_uri_c", None)
        monkeypatch.setattr(uri, "_name_addr_c", None)
        monkeypatch.setattr(via, "_via_c", None)
    elif via._via_c is None:
        require_built_extension("presence/sip/_values.c")
    return request.param
