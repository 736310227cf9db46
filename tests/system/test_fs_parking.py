"""Valet parking against the real FreeSWITCH: the slot lamps phones watch as docs/phones.md says.

Calls are parked on the slots of ``30_busylamp_valet_park.xml`` (7001..7099, lot
``busylamp_lot@${domain_name}``) by ``originate``-ing a loopback call to the slot (the kit README's
way) or by a sipp phone dialling it; they are retrieved the same way (dial the slot).
"""

from __future__ import annotations

import re
import time

import pytest

from tests.polling import wait_until
from tests.system.freeswitch import DOMAIN, PHONES_DOC, originate, valet_slots
from tests.system.phones import Caller, CallerPlan, LampWatcher, SteadyWatcher, lamp
from tests.system.test_cli_subprocess import metric

AFTER_TERMINATED = 'busylamp_updates_dropped_total{reason="after_terminated"}'


def documented_slot_uri(slot: str) -> str:
    """The Request-URI docs/phones.md tells a parking-slot BLF key to watch (its table row)."""
    row = next(line for line in PHONES_DOC.read_text().splitlines()
               if line.startswith("| parking slot"))
    documented = re.search(r"parking slot (\d+)", row).group(1)
    uri = re.search(r"`sip:([^`]+)`", row).group(1)
    return uri.replace(documented, slot).replace("<domain>", DOMAIN)


def lamps(watch: LampWatcher) -> list[str]:
    return [lamp(d) for d in watch.dialogs()]


def last_lamp(watch: LampWatcher) -> str | None:
    seen = lamps(watch)
    return seen[-1] if seen else None


def watch_all(node, tmp_path, *presentities: str) -> list[LampWatcher]:
    watchers = [SteadyWatcher(p, ("127.0.0.1", node.sip_port), tmp_path).start() for p in presentities]
    for watch in watchers:
        wait_until(lambda w=watch: w.notifies(), timeout=10, message=f"{watch.presentity}: no NOTIFY")
    return watchers


@pytest.fixture(autouse=True)
def _no_calls_left(fs):
    yield
    fs.api("hupall")
    wait_until(lambda: not fs.channels(), timeout=10, message="calls left on the switch")


def test_documented_slot_key_and_alias_light_and_repark_at_once(fs, busylamp_all, tmp_path):
    """Defects 2 and 3: a BLF key set up as docs/phones.md says (the slot number) and its
    ``park+`` alias light when a call is parked, go dark on retrieval, and light again when the
    slot is taken again a moment later (a new dialog, not swallowed by the last one's tombstone);
    the lot's lamp too."""
    node = busylamp_all
    slot_uri = documented_slot_uri("7001")
    assert slot_uri == f"7001@{DOMAIN}"
    keys = watch_all(node, tmp_path, slot_uri, f"park+7001@{DOMAIN}", f"busylamp_lot@{DOMAIN}")
    dropped_before = metric(node.http_port, AFTER_TERMINATED)

    for round_, (parker, retriever) in enumerate([("1003", "1004"), ("1005", "1006")], start=1):
        started = time.time()
        parked = originate(fs, "7001", presence_user=parker)
        wait_until(lambda: "7001" in valet_slots(fs), timeout=10, message="the call never parked")
        for watch in keys:
            wait_until(lambda w=watch: last_lamp(w) == "confirmed", timeout=5,
                       message=f"round {round_}: {watch.presentity} not lit: {lamps(watch)}")
        lit = max(w.notifies()[-1].at for w in keys)
        print(f"round {round_}: park -> lamps lit {lit - started:.3f}s after originate")
        assert parked  # the A leg (loopback) is what originate returned; the slot holds its B leg

        started = time.time()
        originate(fs, "7001", presence_user=retriever)
        for watch in keys:
            wait_until(lambda w=watch: last_lamp(w) == "idle", timeout=5,
                       message=f"round {round_}: {watch.presentity} still lit: {lamps(watch)}")
        dark = max(w.notifies()[-1].at for w in keys)
        print(f"round {round_}: retrieval -> lamps dark {dark - started:.3f}s after originate")

    for watch in keys:
        assert lamps(watch) == ["idle", "confirmed", "idle", "confirmed", "idle"], watch.presentity
    assert metric(node.http_port, AFTER_TERMINATED) == dropped_before
    for watch in keys:
        watch.stop()


def test_slot_dialog_names_the_parked_caller_and_dials_the_slot(fs, busylamp_all, tmp_path):
    """A sipp phone (1000) dials 7002 and is parked; the slot's dialog shows it, with the slot as
    remote target (pressing the lit key dials the slot: a retrieval); the caller hanging up empties
    the slot."""
    (watch,) = watch_all(busylamp_all, tmp_path, f"7002@{DOMAIN}")
    caller = Caller("1000", "7002", CallerPlan(talk_ms=3000), fs.sip, tmp_path).start()
    wait_until(lambda: last_lamp(watch) == "confirmed", timeout=10,
               message=f"slot 7002 never lit: {lamps(watch)}")
    (dialog,) = watch.dialogs()[-1]
    assert dialog.direction == "recipient"
    assert dialog.remote_target == f"sip:7002@{DOMAIN}"
    assert dialog.id == valet_slots(fs)["7002"]
    body = watch.notifies()[-1].body
    assert "sip:1000@" in body  # the remote identity is the parked caller
    caller.wait(30)
    wait_until(lambda: last_lamp(watch) == "idle", timeout=5,
               message=f"slot 7002 still lit after the caller hung up: {lamps(watch)}")
    watch.stop()


def test_lot_lamp_stays_lit_until_its_last_slot_empties(fs, busylamp_all, tmp_path):
    """The lot's lamp holds one dialog per parked call: lit while any slot is taken."""
    (lot,) = watch_all(busylamp_all, tmp_path, f"busylamp_lot@{DOMAIN}")
    originate(fs, "7003", presence_user="1007")
    originate(fs, "7004", presence_user="1008")
    wait_until(lambda: {"7003", "7004"} <= set(valet_slots(fs)), timeout=10,
               message=f"not both parked: {valet_slots(fs)}")
    wait_until(lambda: len(lot.dialogs()[-1]) == 2, timeout=5,
               message=f"the lot does not show both calls: {lot.dialogs()}")
    assert last_lamp(lot) == "confirmed"
    originate(fs, "7003", presence_user="1009")  # retrieve one
    wait_until(lambda: len([d for d in lot.dialogs()[-1] if d.state == "confirmed"]) == 1,
               timeout=5, message=f"the retrieved call is still in the lot: {lot.dialogs()}")
    assert last_lamp(lot) == "confirmed"
    originate(fs, "7004", presence_user="1009")
    wait_until(lambda: last_lamp(lot) == "idle", timeout=5,
               message=f"the empty lot is still lit: {lamps(lot)}")
    lot.stop()
