"""The SUBSCRIBE/s ladder's search (bench/runner.py): bracket the ceiling, then bisect to 2%.

The sipp runs are replaced by a server model with a known ceiling: what is under test is the
search, not sipp (the harness's smoke test runs the real one)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from bench import runner
from bench.sipp import SippResult


def ladder(monkeypatch, tmp_path, ceiling: float, start: float, max_rungs: int = 14):
    offered: list[float] = []

    def fake_run(server, csv_path, calls, rate, workdir, **kwargs):
        offered.append(rate)
        clean = rate <= ceiling
        return SippResult(rate, calls, calls if clean else calls - 5, 0 if clean else 5,
                          0 if clean else 40, 0, 0, calls / min(rate, ceiling), 0)

    monkeypatch.setattr(runner, "run_subscribe", fake_run)
    monkeypatch.setattr(runner, "write_sipp_csv", lambda path, rows: list(rows))
    cfg = SimpleNamespace(probe_seconds=1.0, probe_step=1.3, probe_max_rungs=max_rungs)
    rungs = runner._subscribe_ladder(SimpleNamespace(sip_port=5060), cfg, tmp_path, 0, start)
    return offered, rungs


@pytest.mark.parametrize("start", [3000.0, 20000.0])
def test_ladder_brackets_then_bisects_to_two_percent(monkeypatch, tmp_path, start):
    offered, rungs = ladder(monkeypatch, tmp_path, ceiling=7777.0, start=start)
    best = max(r.rate for r in rungs if r.clean)
    assert 7777.0 / 1.02 <= best <= 7777.0
    clean = [rate for rate in offered if rate <= 7777.0]
    unclean = [rate for rate in offered if rate > 7777.0]
    assert min(unclean) <= max(clean) * 1.02 and len(offered) <= 14


def test_ladder_stops_at_its_rung_budget(monkeypatch, tmp_path):
    offered, rungs = ladder(monkeypatch, tmp_path, ceiling=1e9, start=1000.0, max_rungs=4)
    assert offered == pytest.approx([1000.0, 1300.0, 1690.0, 2197.0])
    assert all(r.clean for r in rungs)
