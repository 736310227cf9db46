"""The unit layer opens no socket and starts no process: both raise here, so a test that needs
one fails and belongs in tests/integration or tests/system."""

from __future__ import annotations

import socket
import subprocess

import gevent.socket
import pytest


def _refuse(what: str):
    def refuse(self, *args, **kwargs):
        raise AssertionError(f"a unit test may not {what}; move it to tests/integration or tests/system")
    return refuse


@pytest.fixture(autouse=True)
def no_sockets_or_processes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(socket.socket, "__init__", _refuse("open a socket"))
    monkeypatch.setattr(gevent.socket.socket, "__init__", _refuse("open a socket"))
    monkeypatch.setattr(subprocess.Popen, "__init__", _refuse("start a process"))
