"""The harness's record of CPU time the hypervisor took from each core during a step."""

from __future__ import annotations

from pathlib import Path

from bench import report
from bench.runner import cpu_jiffies, steal_percent

STAT_BEFORE = """cpu  300 0 100 1000 0 0 0 30 0 0
cpu0 200 0 50 500 0 0 0 20 0 0
cpu1 100 0 50 500 0 0 0 10 0 0
intr 1 2 3
ctxt 99
"""
# cpu0: 200 jiffies pass, 50 of them stolen; cpu1: 100 pass, none stolen
STAT_AFTER = """cpu  500 0 150 1100 0 0 0 80 0 0
cpu0 300 0 70 530 0 0 0 70 0 0
cpu1 200 0 50 500 0 0 0 10 0 0
intr 1 2 3
ctxt 120
"""


def test_steal_is_read_per_core_and_taken_as_a_share_of_that_cores_time(tmp_path: Path) -> None:
    before_file, after_file = tmp_path / "before", tmp_path / "after"
    before_file.write_text(STAT_BEFORE)
    after_file.write_text(STAT_AFTER)
    before, after = cpu_jiffies(str(before_file)), cpu_jiffies(str(after_file))
    assert before == {0: (20, 770), 1: (10, 660)}
    assert steal_percent(before, after, 0) == 25.0
    assert steal_percent(before, after, 1) == 0.0
    assert steal_percent(before, after, 2) is None  # no such core
    assert steal_percent(before, before, 0) is None  # no time passed


def test_this_machines_proc_stat_has_every_core() -> None:
    import os

    jiffies = cpu_jiffies()
    assert set(jiffies) >= os.sched_getaffinity(0)
    assert all(0 <= steal <= total for steal, total in jiffies.values())


def _step(**extra: float) -> dict:
    step = {"target_rate": 1000.0, "publish_rate": 990.0, "http_non_2xx": 0,
            "notify_per_s": 3960.0, "notify_per_cpu_s": 5000.0,
            "server_notify_retransmitted": 0, "delivery_ratio": 1.0, "right_state_ratio": 1.0,
            "latency_ms_p99": 4.2}
    step.update(extra)
    return step


def test_the_steps_table_shows_each_steps_steal_or_leaves_it_blank() -> None:
    results = {"busylamp": {"config": {"rate": 1000.0}, "fanout": [],
                            "ceiling": [_step(steal_pct_server_core=12.5,
                                              steal_pct_tools_core=3.0), _step()]}}
    rows = report.steps_table(results).splitlines()
    assert rows[0].endswith("| steal % (server / tools core) |")
    assert rows[2].endswith("| 4.2 | 12.5 / 3.0 |")
    assert rows[3].endswith("| 4.2 |  |")
    assert all(row.count("|") == rows[0].count("|") for row in rows)
