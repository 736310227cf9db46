"""A real FreeSWITCH for system tests, from the kit (tests/kits.py), on ports of its own.

:class:`FreeSwitch` copies the kit's vanilla configuration into a work folder and sets it up the way
an operator following this repository's documents would, nothing more:

1. its own ports (SIP, TLS, event socket, RTP range; the fixed WS/WSS bindings removed) so
   several switches and test runs can share the machine;
2. the sofia ``<param>`` lines of docs/phones.md's XML block applied to the ``internal``
   profile, read from the document itself: a wrong document fails the tests;
3. ``busylamp dialplan install --freeswitch-conf COPY`` run as the README says.

It starts the switch with the kit's ``fs-up.sh`` and stops it by PID with ``fs-down.sh``.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from tests.kits import REPO, FreeSwitchKit
from tests.polling import wait_until
from tests.sipp_util import free_port

DOMAIN = "127.0.0.1"
PASSWORD = "fs-test-pw"  # every directory user 1000..1019 of the kit's configuration
ESL_PASSWORD = "ClueCon"
PHONES_DOC = REPO / "docs" / "phones.md"

# The first ```xml block after this heading in docs/phones.md holds the sofia profile settings.
_PHONES_HEADING = "## FreeSWITCH sofia profile settings"


def documented_sofia_params(doc: Path = PHONES_DOC) -> dict[str, str]:
    """``name -> value`` of every ``<param>`` in docs/phones.md's sofia settings block."""
    text = doc.read_text()
    start = text.index(_PHONES_HEADING)
    block = re.search(r"```xml\n(.*?)```", text[start:], re.S)
    if block is None:
        raise AssertionError("docs/phones.md: no ```xml block under the sofia settings heading")
    params = dict(re.findall(r'<param name="([^"]+)" value="([^"]*)"\s*/>', block.group(1)))
    if not params:
        raise AssertionError("docs/phones.md: the sofia settings block has no <param> lines")
    return params


def set_profile_params(profile_xml: str, params: dict[str, str]) -> str:
    """Set (replace, or add to ``<settings>``) each ``<param>`` of a sofia profile's XML."""
    for name, value in params.items():
        line = f'<param name="{name}" value="{value}"/>'
        pattern = re.compile(rf'<!--\s*<param name="{re.escape(name)}"[^>]*/>\s*-->'
                             rf'|<param name="{re.escape(name)}"[^>]*/>')
        if pattern.search(profile_xml):
            profile_xml = pattern.sub(line, profile_xml, count=1)
            # a second live occurrence would win in FreeSWITCH: drop it
            first = profile_xml.index(line) + len(line)
            rest = re.sub(rf'<param name="{re.escape(name)}"[^>]*/>', "", profile_xml[first:])
            profile_xml = profile_xml[:first] + rest
        else:
            profile_xml = profile_xml.replace("<settings>", f"<settings>\n    {line}", 1)
    return profile_xml


class FreeSwitch:
    """One FreeSWITCH process from the kit, with its configuration copy in ``workdir``."""

    _rtp_block = 0

    def __init__(self, kit: FreeSwitchKit, workdir: Path, *, install_dialplan: bool = True,
                 profile_params: dict[str, str] | None = None) -> None:
        self.kit = kit
        self.workdir = workdir
        self.conf = workdir / "conf"
        self.rundir = workdir / "run"
        self.sip_port = free_port(socket.SOCK_DGRAM)
        self.esl_port = free_port(socket.SOCK_STREAM)
        self.pid: int | None = None
        self.profile_params = (documented_sofia_params() if profile_params is None
                               else profile_params)
        self._configure()
        if install_dialplan:
            self.dialplan_install()

    # --- configuration ---------------------------------------------------------------------

    def _configure(self) -> None:
        shutil.copytree(self.kit.prefix / "etc" / "freeswitch", self.conf)
        vars_xml = self.conf / "vars.xml"
        text = vars_xml.read_text()
        text = re.sub(r'data="internal_sip_port=\d+"', f'data="internal_sip_port={self.sip_port}"', text)
        text = re.sub(r'data="internal_tls_port=\d+"',
                      f'data="internal_tls_port={free_port(socket.SOCK_STREAM)}"', text)
        vars_xml.write_text(text)

        esl = self.conf / "autoload_configs" / "event_socket.conf.xml"
        esl.write_text(re.sub(r'name="listen-port" value="\d+"',
                              f'name="listen-port" value="{self.esl_port}"', esl.read_text()))

        profile = self.conf / "sip_profiles" / "internal.xml"
        xml = profile.read_text()
        xml = re.sub(r'\s*<param name="wss?-binding"[^>]*/>', "", xml)
        profile.write_text(set_profile_params(xml, self.profile_params))

        # RTP: a block of 200 ports of its own, below the kernel's ephemeral range's usual start
        start = 20000 + (os.getpid() % 40) * 400 + FreeSwitch._rtp_block * 200
        FreeSwitch._rtp_block = (FreeSwitch._rtp_block + 1) % 2
        switch = self.conf / "autoload_configs" / "switch.conf.xml"
        switch.write_text(
            switch.read_text()
            .replace('<!-- <param name="rtp-start-port" value="16384"/> -->',
                     f'<param name="rtp-start-port" value="{start}"/>')
            .replace('<!-- <param name="rtp-end-port" value="32768"/> -->',
                     f'<param name="rtp-end-port" value="{start + 199}"/>'))

    def dialplan_install(self, *extra: str) -> subprocess.CompletedProcess:
        """``busylamp dialplan install --freeswitch-conf COPY`` as the README has it."""
        result = subprocess.run(
            [sys.executable, "-c", "from busylamp import cli; cli.main(prog_name='busylamp')",
             "dialplan", "install", "--freeswitch-conf", str(self.conf), *extra],
            capture_output=True, text=True, timeout=60, cwd=REPO)
        if result.returncode != 0:
            raise AssertionError(f"dialplan install failed ({result.returncode}):\n"
                                 f"{result.stdout}\n{result.stderr}")
        return result

    # --- process -----------------------------------------------------------------------------

    @property
    def esl(self) -> str:
        """The ``--esl`` value for busylamp."""
        return f"{ESL_PASSWORD}@127.0.0.1:{self.esl_port}"

    @property
    def sip(self) -> tuple[str, int]:
        return ("127.0.0.1", self.sip_port)

    def _env(self) -> dict[str, str]:
        return {**os.environ, "FS_PREFIX": str(self.kit.prefix), "FS_CONF": str(self.conf),
                "FS_ESL_PORT": str(self.esl_port), "FS_ESL_PASSWORD": ESL_PASSWORD,
                "FS_TIMEOUT": "60"}

    def start(self) -> int:
        result = subprocess.run([str(self.kit.fs_up), str(self.rundir)], capture_output=True,
                                text=True, env=self._env(), timeout=90)
        if result.returncode != 0:
            raise AssertionError(f"fs-up.sh failed:\n{result.stdout}\n{result.stderr}")
        self.pid = int(result.stdout.strip().splitlines()[-1])
        # the profile binds its SIP port a little after the event socket answers
        wait_until(lambda: re.search(rf"@127\.0\.0\.1:{self.sip_port}\s+RUNNING",
                                     self.api("sofia status")),
                   timeout=20, interval=0.2, message="sofia profile internal never ran")
        return self.pid

    def stop(self) -> None:
        if self.pid is None:
            return
        subprocess.run([str(self.kit.fs_down), str(self.rundir)], capture_output=True,
                       env=self._env(), timeout=60)
        self.pid = None

    def kill(self) -> None:
        """SIGKILL: a crash, no orderly hangups."""
        if self.pid is None:
            return
        os.kill(self.pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and Path(f"/proc/{self.pid}").exists():
            time.sleep(0.05)
        (self.rundir / "run" / "freeswitch.pid").unlink(missing_ok=True)
        self.pid = None

    def api(self, command: str, timeout: float = 15) -> str:
        """One API command through fs_cli (the kit's own client, not busylamp's)."""
        env = self._env()
        env["LD_LIBRARY_PATH"] = str(self.kit.prefix / "lib")
        result = subprocess.run(
            [str(self.kit.prefix / "bin" / "fs_cli"), "-H", "127.0.0.1", "-P", str(self.esl_port),
             "-p", ESL_PASSWORD, "-x", command],
            capture_output=True, text=True, env=env, timeout=timeout)
        return result.stdout

    def log_text(self) -> str:
        path = self.rundir / "log" / "freeswitch.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def handled_by(self, destination: str) -> list[list[str]]:
        """Per call routed to ``destination``, the dialplan extensions that ran actions, in order
        (read from the switch's log: "parsing [default->NAME]" then "Action ..." lines)."""
        calls: dict[str, list[str]] = {}
        current: dict[str, str] = {}
        for line in self.log_text().splitlines():
            uuid, _, rest = line.partition(" ")
            if f"->{destination} in context " in rest and "Processing " in rest:
                calls[uuid] = []
            elif uuid in calls:
                parsing = re.search(r"parsing \[[^\]]*?->([^\]]+)\]", rest)
                if parsing:
                    current[uuid] = parsing.group(1)
                elif " Action " in rest and current.get(uuid):
                    names = calls[uuid]
                    if not names or names[-1] != current[uuid]:
                        names.append(current[uuid])
        return list(calls.values())

    def channels(self) -> list[dict]:
        import json

        text = self.api("show channels as json")
        data = json.loads(text) if text.strip().startswith("{") else {}
        return data.get("rows") or []

    def __enter__(self) -> FreeSwitch:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


# --- calls placed with originate (where a phone is not the point) ---------------------------------

def originate(fs: FreeSwitch, destination: str, *, presence_user: str, caller: str | None = None,
              app: str = "&park()") -> str:
    """``originate`` a loopback call into the default context with ``presence_id`` and caller id
    ``presence_user`` (the kit README's way); the A leg's uuid."""
    caller = caller or presence_user
    answer = fs.api(f"originate {{presence_id={presence_user}@{DOMAIN},"
                    f"origination_caller_id_number={caller}}}loopback/{destination}/default {app}")
    if not answer.startswith("+OK "):
        raise AssertionError(f"originate {destination} failed: {answer!r}")
    return answer.split()[1]


def valet_slots(fs: FreeSwitch) -> dict[str, str]:
    """``slot -> parked uuid`` from ``valet_info`` (the switch's own view of its park lots)."""
    return {slot: uuid for uuid, slot in
            re.findall(r'<extension uuid="([^"]+)">([^<]+)</extension>', fs.api("valet_info"))}

# --- appended helpers (real-call tests) ------------------------------------------------------

# Prompts mod_voicemail plays before it records a message (lang/en/vm/sounds.xml). The kit has no
# sounds: without them voicemail says "goodbye" (a missing file) and hangs up within a second.
VOICEMAIL_PROMPTS = ("voicemail/vm-person.wav", "voicemail/vm-not_available.wav",
                     "voicemail/vm-record_message.wav")


def write_silence(path: Path, seconds: float, rate: int = 8000) -> None:
    """A mono 16-bit WAV of silence (mod_sndfile plays it)."""
    import wave

    path.parent.mkdir(parents=True, exist_ok=True)
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes(b"\0\0" * int(rate * seconds))


def use_silent_prompts(fs: FreeSwitch, seconds: float,
                       prompts: tuple[str, ...] = VOICEMAIL_PROMPTS) -> Path:
    """Point the switch's ``sound_prefix`` at silent prompts of ``seconds`` each (then reloadxml),
    so a caller stays in voicemail's greeting that long. Test equipment only."""
    folder = fs.workdir / "sounds"
    for prompt in prompts:
        write_silence(folder / prompt, seconds)
    vars_xml = fs.conf / "vars.xml"
    vars_xml.write_text(re.sub(r'data="sound_prefix=[^"]*"', f'data="sound_prefix={folder}"',
                               vars_xml.read_text(), count=1))
    if fs.pid is not None:
        fs.api("reloadxml")
    return folder
