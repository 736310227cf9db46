"""bench/pipeline.py: the ESL stage rates, per wall and per CPU second (medians)."""

from __future__ import annotations

from bench.pipeline import STAGES, esl_throughput


def test_every_stage_reports_wall_and_cpu_rates_of_every_event() -> None:
    out = esl_throughput(300, repeats=3)
    assert out["repeats"] == 3
    for stage in STAGES:
        result = out[stage]
        assert result["parsed"] == 300
        assert result["events_per_s"] > 0 and result["events_per_cpu_s"] > 0
        assert result["cpu_seconds"] > 0 and result["seconds"] > 0
    assert out["parse"]["updates"] == 0
    # ringing, active, hangup of ordinary calls: a dialog and a presence update each
    assert out["parse_normalize"]["updates"] == out["parse_normalize_engine"]["updates"] == 600
