"""Build the optional C extension ``busylamp.presence.node._mmsg`` (recvmmsg/sendmmsg) in place.

``python -m busylamp.presence.node.buildext`` compiles ``_mmsg.c`` with the system C compiler next to
its source; scripts/bootstrap.sh runs it. Without it the UDP transport falls back to one
recvfrom/sendto per datagram (presence.node.mmsg). It also builds ``busylamp.presence._history``
(the history's NOTIFY-answer hook; without it presence.history uses its Python method) and
``busylamp.esl._eventhead`` (an ESL event's header lines; without it esl.protocol parses them in
Python) and ``busylamp.wire._plain`` (the update fast path's value check; without it a Python loop) and
``busylamp.presence.sip._scan`` (the response sniff and the common SIP head split; without it
presence/sip/sniff.py and parse.py do them in Python) and ``busylamp.presence.sip._values``
(plain URIs, name-addrs and Vias; without it presence/sip/uri.py and via.py parse them in Python).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

HERE = Path(__file__).resolve().parent


def build(quiet: bool = False, source: Path = HERE / "_mmsg.c") -> Path | None:
    """Compile the extension ``source``; returns its path, or None when it cannot be built here."""
    cc = os.environ.get("CC") or shutil.which("gcc") or shutil.which("cc")
    include = sysconfig.get_paths()["include"]
    if not sys.platform.startswith("linux") or cc is None \
            or not (Path(include) / "Python.h").exists():
        if not quiet:
            print(f"{source.stem} not built (needs Linux, a C compiler and Python.h); "
                  "its Python fallback is used", file=sys.stderr)
        return None
    target = source.with_name(f"{source.stem}{sysconfig.get_config_var('EXT_SUFFIX')}")
    tmp = target.with_name(f".{target.name}.{os.getpid()}")
    subprocess.run([cc, "-O2", "-Wall", "-shared", "-fPIC", f"-I{include}", "-o", str(tmp),
                    str(source)], check=True)
    os.replace(tmp, target)
    return target


if __name__ == "__main__":
    built = build()
    try:  # optional: presence.history falls back to its Python hook
        build(quiet=True, source=HERE.parent / "_history.c")
    except subprocess.CalledProcessError:
        print("_history not built: presence.history uses its Python hook", file=sys.stderr)
    for source, fallback in (("esl/_eventhead.c", "esl.protocol parses in Python"),
                             ("wire/_plain.c", "wire.updates checks values in Python"),
                             ("presence/sip/_scan.c", "presence.sip scans heads in Python"),
                             ("presence/sip/_values.c", "presence.sip parses values in Python")):
        try:  # optional: each has a Python fallback
            build(quiet=True, source=HERE.parent.parent / source)
        except subprocess.CalledProcessError:
            print(f"{source} not built: {fallback}", file=sys.stderr)
    sys.exit(0 if built else 1)
