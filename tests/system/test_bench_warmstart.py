"""bench/warmstart.py: the office state it publishes, a tiny real run, and a loud failure when a
node never serves."""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path

import pytest

from bench import warmstart
from bench.warmstart import BenchError, Node, office_state


def test_the_office_has_presence_everywhere_a_call_on_a_tenth_and_mwi_on_three_tenths():
    updates = office_state(1000)
    assert Counter(u["Event-Package"] for u in updates) == {
        "presence": 1000, "dialog": 100, "message-summary": 300}
    assert [u["Sequence"] for u in updates] == list(range(1, 1401))
    assert len({(u["Event-Package"], u["Presentity"], u.get("Call-ID")) for u in updates}) == 1400


def test_a_small_run_warms_a_node_with_every_record_of_its_peer(capsys):
    assert warmstart.main(["--presentities", "200", "--repeats", "1", "--timeout", "60"]) == 0
    report = json.loads(capsys.readouterr().out)
    build = report["builds"]["current"]
    assert build["records"] == {"presence": 200, "dialog": 20, "message-summary": 60}
    assert build["warm"]["records"] == 280
    assert min(build["floor"]["health_s"], build["warm"]["health_s"],
               build["warm"]["subscribe_s"]) > 0
    rows = [s for s in build["snapshot"] if s["content_type"] == "application/x-busylamp-rows"]
    assert rows and rows[0]["lines"] == 2  # the marks and one line of 280 rows


def _fake_busylamp(tmp_path: Path, script: str) -> str:
    exe = tmp_path / "busylamp"
    exe.write_text(f"#!/bin/sh\n{script}\n")
    exe.chmod(0o755)
    return str(exe)


def test_a_node_that_exits_fails_the_run_naming_its_log(tmp_path):
    node = Node(_fake_busylamp(tmp_path, "echo no such option >&2; exit 2"), tmp_path, "warm-x")
    node.start()
    with pytest.raises(BenchError, match=r"warm-x exited with 2; see .*warm-x\.log"):
        warmstart.wait_serving(node, 30, sip=True)
    assert "no such option" in node.log.read_text()


def test_a_node_that_never_serves_fails_the_run_after_the_timeout(tmp_path):
    node = Node(_fake_busylamp(tmp_path, "exec sleep 30"), tmp_path, "warm-y")
    node.start()
    try:
        with pytest.raises(BenchError, match=r"warm-y not serving 1s after start"):
            warmstart.wait_serving(node, 1.0, sip=True)
    finally:
        node.stop()
    assert node.proc.returncode == -15 and not os.path.exists(f"/proc/{node.proc.pid}/stat")


def test_codec_mode_measures_both_formats_on_the_same_records():
    report = warmstart.codec(300, 1)
    assert report["records"] == {"presence": 300, "dialog": 30, "message-summary": 90}
    assert 0 < report["rows_bytes"] < report["objects_bytes"] / 1.5
    assert all(report[fmt][side] > 0 for fmt in ("objects", "rows")
               for side in ("peer_cpu_s", "node_cpu_s"))
