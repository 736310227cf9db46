"""A fake FreeSWITCH inbound event socket (gevent), speaking mod_event_socket's protocol.

Used by tests and ``busylamp demo``.  Replies are byte-for-byte what mod_event_socket.c writes:
``auth/request`` on connect, ``command/reply`` with ``Reply-Text``, ``api/response`` with a
Content-Length body, ``text/event-plain`` events (only subscribed names), ``+OK bye`` plus the
ClueCon ``text/disconnect-notice`` on ``exit`` and after ``-ERR invalid``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
import uuid as uuidlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import gevent
import gevent.lock
import gevent.server
import gevent.socket

from busylamp.esl.fsheaders import (
    Leg,
    SwitchInfo,
    callstate_headers,
    channel_data,
    event_base,
    message_waiting_headers,
    presence_in_headers,
    progress_headers,
)
from busylamp.esl.protocol import encode_event, encode_frame

log = logging.getLogger(__name__)

DISCONNECT_TEXT = b"Disconnected, goodbye.\nSee you at ClueCon! http://www.cluecon.com/\n"
CHANNEL_COLUMNS = (
    "uuid", "direction", "created", "created_epoch", "name", "state", "cid_name", "cid_num",
    "ip_addr", "dest", "application", "application_data", "dialplan", "context", "read_codec",
    "read_rate", "read_bit_rate", "write_codec", "write_rate", "write_bit_rate", "secure",
    "hostname", "presence_id", "presence_data", "accountcode", "callstate", "callee_name",
    "callee_num", "callee_direction", "call_uuid", "sent_callee_name", "sent_callee_num",
    "initial_cid_name", "initial_cid_num", "initial_ip_addr", "initial_dest", "initial_dialplan",
    "initial_context",
)  # CREATE TABLE channels, src/switch_core_sqldb.c


@dataclass(slots=True)
class Call:
    """A call the simulator placed: A leg (inbound from the caller), optional B leg."""

    a: Leg
    b: Leg | None = None


def fake_ip(user: str) -> str:
    """A stable TEST-NET-1 address per user."""
    return f"192.0.2.{sum(user.encode()) % 250 + 1}"


class _Client:
    __slots__ = ("sock", "lock", "authed", "events", "closed")

    def __init__(self, sock: gevent.socket.socket) -> None:
        self.sock = sock
        self.lock = gevent.lock.Semaphore()
        self.authed = False
        self.events: set[str] = set()
        self.closed = False

    def send(self, data: bytes) -> None:
        if self.closed:
            return
        with self.lock:
            try:
                self.sock.sendall(data)
            except OSError:
                self.closed = True

    def wants(self, name: str, subclass: str | None) -> bool:
        if not self.authed or not self.events:
            return False
        if "ALL" in self.events:
            return True
        if name == "CUSTOM":
            return subclass is not None and subclass in self.events
        return name in self.events


class FreeSwitchSimulator:
    """Fake FreeSWITCH: event socket server plus a small call model that fires real events."""

    def __init__(self, password: str = "ClueCon", host: str = "127.0.0.1", port: int = 0,
                 core_uuid: str | None = None, hostname: str = "fs1",
                 domain: str = "example.com", heartbeat_interval: float | None = 20.0,
                 clock: Callable[[], float] = time.time,
                 new_uuid: Callable[[], str] = lambda: str(uuidlib.uuid4())) -> None:
        self.clock = clock
        self.new_uuid = new_uuid
        self.password = password
        self.host = host
        self.port = port
        self.domain = domain
        self.heartbeat_interval = heartbeat_interval
        self.switch = SwitchInfo(core_uuid or new_uuid(), hostname,
                                 "127.0.0.1", "::1")
        self.channels: list[Leg] = []
        self.commands: list[str] = []
        self.connections = 0
        self.auth_failures = 0
        self.mailboxes: dict[str, tuple[int, int]] = {}
        self.lots: dict[str, dict[str, str]] = {}  # valet lot -> slot -> parked channel uuid
        self._clients: list[_Client] = []
        self._sequence = 0
        self._silent = False
        self._server: gevent.server.StreamServer | None = None
        self._heartbeat: gevent.Greenlet | None = None

    # -- server ---------------------------------------------------------------------------

    def start(self) -> tuple[str, int]:
        self._server = gevent.server.StreamServer((self.host, self.port), self._handle)
        self._server.start()
        self.port = self._server.server_port
        if self.heartbeat_interval:
            self._heartbeat = gevent.spawn(self._heartbeat_loop, self.heartbeat_interval)
        return self.host, self.port

    def stop(self) -> None:
        if self._heartbeat is not None:
            self._heartbeat.kill(block=False)
            self._heartbeat = None
        if self._server is not None:
            self._server.stop(timeout=0)
            self._server = None
        self.drop_connections()

    @property
    def core_uuid(self) -> str:
        return self.switch.core_uuid

    def restart(self, new_core_uuid: bool = True, keep_calls: bool = False) -> None:
        """Simulate a FreeSWITCH restart: clients dropped, new Core-UUID, calls gone."""
        self.drop_connections()
        if new_core_uuid:
            self.switch.core_uuid = self.new_uuid()
        if not keep_calls:
            self.channels.clear()
            self.lots.clear()
        self._silent = False

    def drop_connections(self) -> None:
        """Close every client socket abruptly (no disconnect notice)."""
        for client in list(self._clients):
            self._close(client)

    def go_silent(self) -> None:
        """Keep sockets open but send nothing more (no events, no replies)."""
        self._silent = True

    def speak(self) -> None:
        """Undo ``go_silent``."""
        self._silent = False

    def _close(self, client: _Client) -> None:
        client.closed = True
        with contextlib.suppress(OSError):
            client.sock.shutdown(gevent.socket.SHUT_RDWR)
        client.sock.close()
        if client in self._clients:
            self._clients.remove(client)

    def _send(self, client: _Client, data: bytes) -> None:
        if not self._silent:
            client.send(data)

    def _handle(self, sock: gevent.socket.socket, _address: object) -> None:
        client = _Client(sock)
        self.connections += 1
        self._clients.append(client)
        self._send(client, b"Content-Type: auth/request\n\n")
        buf = b""
        try:
            while not client.closed:
                data = sock.recv(65536)
                if not data:
                    break
                buf += data
                while not client.closed:
                    cmd, body, buf = _split_command(buf)
                    if cmd is None:
                        break
                    if not self._command(client, cmd, body):
                        self._send(client, encode_frame({"Content-Type": "text/disconnect-notice"},
                                                        DISCONNECT_TEXT))
                        self._close(client)
        except OSError:
            pass
        finally:
            if client in self._clients:
                self._close(client)

    def _reply(self, client: _Client, text: str) -> None:
        self._send(client, f"Content-Type: command/reply\nReply-Text: {text}\n\n".encode())

    def _command(self, client: _Client, block: str, body: bytes) -> bool:
        """Handle one command; False closes the connection after the reply."""
        lines = block.split("\n")
        cmd = lines[0].rstrip("\r")
        self.commands.append(cmd if not cmd.startswith("auth ") else "auth <hidden>")
        low = cmd.lower()
        if low.startswith("exit") or low.startswith("..."):
            self._reply(client, "+OK bye")
            return False
        if not client.authed:
            if low.startswith("auth "):
                if cmd[5:] == self.password:
                    client.authed = True
                    self._reply(client, "+OK accepted")
                    return True
                self.auth_failures += 1
                self._reply(client, "-ERR invalid")
                return False
            self._reply(client, "-ERR command not found")
            return True
        if low.startswith("event "):
            words = cmd.split()[1:]
            if words and words[0].lower() in ("plain", "json", "xml"):
                words = words[1:]
            if not words:
                self._reply(client, "-ERR no keywords supplied")
                return True
            client.events.update(words)
            self._reply(client, "+OK event listener enabled plain")
        elif low.startswith("noevents"):
            client.events.clear()
            self._reply(client, "+OK no longer listening for events")
        elif low.startswith("api "):
            out = self.api(cmd[4:].strip()).encode()
            self._send(client, encode_frame({"Content-Type": "api/response"}, out))
        elif low.startswith("sendevent"):
            event_uuid = self.new_uuid()
            headers = {"Event-UUID": event_uuid}
            for line in lines[1:]:
                name, sep, value = line.rstrip("\r").partition(":")
                if sep and name:
                    headers[name] = value.lstrip(" ")
            headers.pop("Content-Length", None)
            name = cmd[9:].strip() or "CUSTOM"
            self._reply(client, f"+OK {event_uuid}")
            self._sendevent(name.upper(), headers, body.decode("utf-8", "replace") or None)
        else:
            self._reply(client, "-ERR command not found")
        return True

    # -- events ---------------------------------------------------------------------------

    def _now_us(self) -> int:
        return int(self.clock() * 1_000_000)

    def _base(self) -> tuple[int, int]:
        self._sequence += 1
        return self._sequence, self._now_us()

    def emit(self, headers: Mapping[str, str], body: str | None = None) -> None:
        """Send any event (headers already complete) to the clients subscribed to it."""
        if self._silent:
            return
        name = headers.get("Event-Name", "")
        subclass = headers.get("Event-Subclass")
        frame: bytes | None = None
        for client in list(self._clients):
            if client.wants(name, subclass):
                frame = frame or encode_event(headers, body)
                client.send(frame)

    def _sendevent(self, name: str, given: Mapping[str, str], body: str | None) -> None:
        seq, ts = self._base()
        headers = {"Event-Name": name, "Core-UUID": self.core_uuid,
                   "FreeSWITCH-Hostname": self.switch.hostname,
                   "FreeSWITCH-Switchname": self.switch.hostname,
                   "FreeSWITCH-IPv4": self.switch.ipv4, "FreeSWITCH-IPv6": self.switch.ipv6,
                   "Event-Date-Timestamp": str(ts), "Event-Sequence": str(seq)}
        headers.update(given)
        self.emit(headers, body)
        if name == "MESSAGE_QUERY":
            account = next((v for k, v in given.items() if k.lower() == "message-account"), None)
            if account:
                self._message_query(account)

    def _message_query(self, account: str) -> None:
        box = account.split(":", 1)[1] if account.startswith("sip:") else account
        new, saved = self.mailboxes.get(box, (0, 0))
        seq, ts = self._base()
        self.emit(message_waiting_headers(account, new, saved, self.switch, seq, ts,
                                          update_reason=None))

    def _heartbeat_loop(self, interval: float) -> None:
        started = time.time()
        while True:
            gevent.sleep(interval)
            seq, ts = self._base()
            h = {
                "Event-Name": "HEARTBEAT", "Core-UUID": self.core_uuid,
                "FreeSWITCH-Hostname": self.switch.hostname,
                "FreeSWITCH-Switchname": self.switch.hostname,
                "FreeSWITCH-IPv4": self.switch.ipv4, "FreeSWITCH-IPv6": self.switch.ipv6,
                "Event-Date-Timestamp": str(ts), "Event-Calling-File": "switch_core.c",
                "Event-Calling-Function": "send_heartbeat", "Event-Calling-Line-Number": "70",
                "Event-Sequence": str(seq), "Event-Info": "System Ready",
                "Up-Time": f"0 years, 0 days, 0 hours, 0 minutes, {int(time.time() - started)} seconds",
                "Session-Count": str(len(self.channels)), "Max-Sessions": "1000",
            }
            self.emit(h)

    def replay_file(self, path: str | Path) -> None:
        """Send a fixture file's bytes verbatim to every authenticated client."""
        data = Path(path).read_bytes()
        for client in list(self._clients):
            if client.authed:
                self._send(client, data)

    # -- call model -----------------------------------------------------------------------

    def _set_callstate(self, leg: Leg, callstate: str, state: str | None = None,
                       presence_status: str | None = None) -> None:
        if state:
            leg.state = state
        if leg.callstate == callstate or leg.callstate == "HANGUP":
            return
        original, leg.callstate = leg.callstate, callstate
        seq, ts = self._base()
        self.emit(callstate_headers(leg, original, self.switch, seq, ts))
        if leg.presence_id and presence_status:
            seq, ts = self._base()
            self.emit(presence_in_headers(leg, presence_status, self.switch, seq, ts))

    def _new_leg(self, direction: str, user: str, cid_name: str, cid_num: str, dest: str,
                 presence: bool, presence_id: str | None = None) -> Leg:
        now = self._now_us()
        leg = Leg(uuid=self.new_uuid(), direction=direction, user=user, domain=self.domain,
                  ip_addr=fake_ip(user), cid_name=cid_name, cid_num=cid_num, dest=dest,
                  created_us=now,
                  presence_id=presence_id or (f"{user}@{self.domain}" if presence else None))
        self.channels.append(leg)
        return leg

    def _progress(self, leg: Leg) -> None:
        seq, ts = self._base()
        self.emit(progress_headers(leg, self.switch, seq, ts))

    def originate(self, caller: str, callee: str, *, caller_presence: bool = True,
                  callee_presence: bool = True, early_media: bool = False) -> Call:
        """Caller dials callee as real FreeSWITCH with busylamp's dialplan does: the A leg turns
        RINGING when routing starts, before the dialplan sets its presence_id (PRESENCE_IN
        "CS_ROUTING" once it has); the B leg rings (CHANNEL_PROGRESS, RINGING; EARLY with media)
        and the 180 reaches the A leg (its CHANNEL_PROGRESS)."""
        a = self._new_leg("inbound", caller, caller, caller, callee, False)
        a.application, a.application_data = "bridge", f"user/{callee}@{self.domain}"
        self._set_callstate(a, "RINGING", "CS_ROUTING", "CS_ROUTING")
        if caller_presence:
            # 00_busylamp_presence.xml sets it inline, during routing: the state machine's
            # check_presence then fires PRESENCE_IN "CS_ROUTING" for the leg
            a.presence_id = f"{caller}@{self.domain}"
            seq, ts = self._base()
            self.emit(presence_in_headers(
                a, "CS_ROUTING", self.switch, seq, ts, calling_function="check_presence",
                calling_line=521, calling_file="src/switch_core_state_machine.c"))
        a.state = "CS_EXECUTE"
        b = self._new_leg("outbound", callee, caller, caller, callee, callee_presence)
        b.call_uuid = a.uuid
        b.callee_name = b.callee_num = callee
        b.other, b.other_type = a, "originator"
        b.progress_us = self._now_us()
        self._progress(b)
        self._set_callstate(b, "RINGING", "CS_CONSUME_MEDIA", "CS_CONSUME_MEDIA")
        a.progress_us = self._now_us()
        self._progress(a)
        if early_media:
            for leg in (b, a):
                leg.early_media = True
                leg.progress_media_us = self._now_us()
                self._set_callstate(leg, "EARLY", None, "early")
        return Call(a, b)

    def answer(self, call: Call) -> None:
        now = self._now_us()
        legs = [call.b, call.a] if call.b else [call.a]
        for leg in legs:
            if leg is None:
                continue
            leg.answered, leg.answered_us = True, now
            if call.b is not None:
                leg.bridged_us = now
            if leg is call.a and call.b is not None:
                leg.other, leg.other_type = call.b, "originatee"
                # real FreeSWITCH: the caller's leg gets the media first (EARLY), then ACTIVE
                self._set_callstate(leg, "EARLY", None, None)
            self._set_callstate(leg, "ACTIVE", "CS_EXCHANGE_MEDIA", "answered")

    def hold(self, call: Call, leg: str = "a") -> None:
        target = call.a if leg == "a" else call.b
        if target is not None:
            target.last_hold_us = self._now_us()
            self._set_callstate(target, "HELD", None, "hold")

    def unhold(self, call: Call, leg: str = "a") -> None:
        target = call.a if leg == "a" else call.b
        if target is not None:
            if target.last_hold_us:
                target.hold_accum_us += self._now_us() - target.last_hold_us
            self._set_callstate(target, "UNHELD", None, "answered")

    def hangup(self, call: Call, cause: str = "NORMAL_CLEARING") -> None:
        now = self._now_us()
        for leg in (call.a, call.b):
            if leg is None or leg.callstate == "HANGUP":
                continue
            leg.hangup_cause, leg.hangup_us = cause, now
            self._unpark(leg)
            self._set_callstate(leg, "HANGUP", "CS_HANGUP", "CS_HANGUP")
            if leg in self.channels:
                self.channels.remove(leg)

    def park(self, caller: str, slot: str, lot: str | None = None) -> Call:
        """Valet park (mod_valet_parking as FreeSWITCH 1.11 does it): one answered inbound leg,
        presence id the caller's own, in application ``valet_park LOT SLOT``; the slot is
        announced by ``CUSTOM valet_parking::info`` ``Action: hold`` with the parked channel's
        data, then ``PRESENCE_IN`` ``proto: park`` for the lot and the slot. Hanging up the call
        (:meth:`hangup`) empties the slot as mod_valet_parking does."""
        lot = lot or f"valet_lot@{self.domain}"
        a = self._new_leg("inbound", caller, caller, caller, slot, True)
        a.application, a.application_data = "valet_park", f"{lot} {slot}"
        self._set_callstate(a, "RINGING", "CS_ROUTING", "CS_ROUTING")
        a.answered, a.answered_us = True, self._now_us()
        self._set_callstate(a, "ACTIVE", "CS_EXECUTE", "answered")
        self.lots.setdefault(lot, {})[slot] = a.uuid
        self._valet_event(a, lot, slot, "hold")
        self._valet_presence(lot, slot)
        return Call(a)

    def _valet_event(self, leg: Leg, lot: str, slot: str, action: str) -> None:
        seq, ts = self._base()
        h = event_base("CUSTOM", self.switch, seq, ts, "mod_valet_parking.c",
                       "valet_parking_function", 706)
        h.update({"Event-Subclass": "valet_parking::info", "Valet-Lot-Name": lot,
                  "Valet-Extension": slot, "Action": action})
        h.update(channel_data(leg))
        self.emit(h)

    def _valet_presence(self, lot: str, slot: str) -> None:
        """valet_send_presence: the lot (callers or Empty), then the slot (Holding or Empty)."""
        lot_user, _, domain = lot.partition("@")
        domain = domain or self.domain
        count = len(self.lots.get(lot, {}))
        holding = slot in self.lots.get(lot, {})
        for user, status, answer in (
                (lot_user, f"Active ({count} caller{'' if count == 1 else 's'})" if count else "Empty",
                 "confirmed" if count else "terminated"),
                (slot, "Holding" if holding else "Empty", "confirmed" if holding else "terminated")):
            seq, ts = self._base()
            h = event_base("PRESENCE_IN", self.switch, seq, ts, "mod_valet_parking.c",
                           "valet_send_presence", 340)
            h.update({"proto": "park", "login": user, "from": f"{user}@{domain}",
                      "force-status": status, "rpid": "active" if answer == "confirmed" else "unknown",
                      "event_type": "presence", "alt_event_type": "dialog",
                      "event_count": str(seq), "unique-id": user,
                      "channel-state": "CS_ROUTING" if answer == "confirmed" else "CS_HANGUP",
                      "answer-state": answer, "call-direction": "inbound"})
            self.emit(h)

    def _unpark(self, leg: Leg) -> None:
        """The parked caller left (hung up): the slot empties, then ``Action: exit``."""
        for lot, slots in self.lots.items():
            for slot, uuid in list(slots.items()):
                if uuid == leg.uuid:
                    del slots[slot]
                    self._valet_presence(lot, slot)
                    self._valet_event(leg, lot, slot, "exit")

    def leave_voicemail(self, mailbox: str, new: int = 1, saved: int = 0) -> None:
        """Set a mailbox's counts and fire MESSAGE_WAITING (mod_voicemail update_mwi)."""
        box = mailbox if "@" in mailbox else f"{mailbox}@{self.domain}"
        self.mailboxes[box] = (new, saved)
        seq, ts = self._base()
        self.emit(message_waiting_headers(box, new, saved, self.switch, seq, ts))

    # -- api ------------------------------------------------------------------------------

    def api(self, command: str) -> str:
        """The text FreeSWITCH's api would return for the few commands simulated."""
        words = command.split()
        if words[:2] == ["global_getvar", "core_uuid"]:
            return self.core_uuid
        if words[:2] == ["show", "channels"]:
            rows = [self._row(leg) for leg in sorted(self.channels, key=lambda x: x.created_us)]
            if words[2:4] == ["as", "json"]:
                if not rows:
                    return '{"row_count": 0}\n'
                return json.dumps({"row_count": len(rows), "rows": rows}, separators=(",", ":"))
            if not rows:
                return "\n0 total.\n"
            lines = [",".join(CHANNEL_COLUMNS)]
            lines += [",".join(row[c] for c in CHANNEL_COLUMNS) for row in rows]
            return "\n".join(lines) + f"\n\n{len(rows)} total.\n"
        if words[:1] == ["valet_info"]:
            lines = ["<lots>"]
            for lot, slots in self.lots.items():
                lines.append(f'  <lot name="{lot}">')
                lines += [f'    <extension uuid="{uuid}">{slot}</extension>'
                          for slot, uuid in slots.items()]
                lines.append("  </lot>")
            return "\n".join([*lines, "</lots>", ""])
        if words[:1] == ["status"]:
            return f"UP 0 years, 0 days\nFreeSWITCH ({self.switch.hostname}) is ready\n"
        return f"-ERR {words[0] if words else ''} Command not found!\n"

    def _row(self, leg: Leg) -> dict[str, str]:
        created = leg.created_us / 1_000_000
        row = dict.fromkeys(CHANNEL_COLUMNS, "")
        row.update({
            "uuid": leg.uuid, "direction": leg.direction,
            "created": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(created)),
            "created_epoch": str(int(created)), "name": leg.channel_name, "state": leg.state,
            "cid_name": leg.cid_name, "cid_num": leg.cid_num, "ip_addr": leg.ip_addr,
            "dest": leg.dest, "application": leg.application,
            "application_data": leg.application_data, "dialplan": "XML",
            "context": leg.context, "read_codec": "PCMU", "read_rate": "8000",
            "read_bit_rate": "64000", "write_codec": "PCMU", "write_rate": "8000",
            "write_bit_rate": "64000", "hostname": self.switch.hostname,
            "presence_id": leg.presence_id or "", "callstate": leg.callstate,
            "callee_name": leg.callee_name, "callee_num": leg.callee_num,
            "callee_direction": "SEND" if leg.callee_num else "",
            "call_uuid": leg.call_uuid or leg.uuid,
            "initial_cid_name": leg.cid_name, "initial_cid_num": leg.cid_num,
            "initial_ip_addr": leg.ip_addr, "initial_dest": leg.dest,
            "initial_dialplan": "XML", "initial_context": leg.context,
        })
        return row


def _split_command(buf: bytes) -> tuple[str | None, bytes, bytes]:
    """One client command block (up to the empty line) and its Content-Length body, if whole."""
    while buf[:1] in (b"\n", b"\r"):
        buf = buf[1:]
    end = buf.find(b"\n\n")
    if end < 0:
        return None, b"", buf
    block = buf[:end].decode("utf-8", "replace")
    rest = buf[end + 2:]
    length = 0
    for line in block.split("\n")[1:]:
        name, _, value = line.partition(":")
        if name.strip().lower() == "content-length":
            try:
                length = max(0, int(value))
            except ValueError:
                length = 0
    if len(rest) < length:
        return None, b"", buf
    return block, rest[:length], rest[length:]

