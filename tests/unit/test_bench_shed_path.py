"""bench/shed_path.py measures what it says: every SUBSCRIBE shed (or, with --accept, accepted),
by the raw-bytes refusal unless --full-parse turns it off."""

from __future__ import annotations

import pytest

from bench import shed_path as sp
from busylamp.presence.engine import dispatch


class CountingParse:
    def __init__(self) -> None:
        self.calls = 0
        self.real = dispatch.parse_message

    def __call__(self, data, **kwargs):
        self.calls += 1
        return self.real(data, **kwargs)


def test_every_subscribe_is_shed_without_a_parse(monkeypatch: pytest.MonkeyPatch) -> None:
    parse = CountingParse()
    monkeypatch.setattr(dispatch, "parse_message", parse)
    assert sp.run(40, accept=False, timed=False) == {"subscribes": 40, "answers": 40,
                                                      "subscribes_per_cpu_s": None}
    assert parse.calls == 0


def test_accept_mode_makes_subscriptions() -> None:
    assert sp.run(20, accept=True, timed=False)["answers"] == 40  # a 200 and a NOTIFY each


def test_full_parse_takes_the_old_path(monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    monkeypatch.setattr(dispatch, "plain_new_subscribe", dispatch.plain_new_subscribe)
    parse = CountingParse()
    monkeypatch.setattr(dispatch, "parse_message", parse)
    sp.main(["--subscribes", "30", "--full-parse"])
    assert capsys.readouterr().out.split() == ["subscribes=30", "answers=30"]
    assert parse.calls == 30 + sp.PRESENTITIES  # the warm-up's too


def test_the_datagrams_are_distinct_sipp_subscribes() -> None:
    datagrams = [sp.sipp_subscribe(i) for i in range(8)]
    assert len(set(datagrams)) == 8
    assert sp.source_of(datagrams[5]) == (sp.HOST, 20001)
