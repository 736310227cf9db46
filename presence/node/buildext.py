"""Build the optional C extension ``busylamp.presence.node._mmsg`` (recvmmsg/sendmmsg) in place.

``python -m busylamp.presence.node.buildext`` compiles ``_mmsg.c`` with the system C compiler next to
its source; scripts/bootstrap.sh runs it. Without it the UDP transport falls back to one
recvfrom/sendto per datagram (presence.node.mmsg).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

HERE = Path(__file__).resolve().parent


def build(quiet: bool = False) -> Path | None:
    """Compile the extension; returns its path, or None when it cannot be built here."""
    cc = os.environ.get("CC") or shutil.which("gcc") or shutil.which("cc")
    include = sysconfig.get_paths()["include"]
    if not sys.platform.startswith("linux") or cc is None \
            or not (Path(include) / "Python.h").exists():
        if not quiet:
            print("busylamp.presence.node._mmsg not built (needs Linux, a C compiler and Python.h); "
                  "the UDP transport uses recvfrom/sendto", file=sys.stderr)
        return None
    target = HERE / f"_mmsg{sysconfig.get_config_var('EXT_SUFFIX')}"
    tmp = target.with_name(f".{target.name}.{os.getpid()}")
    subprocess.run([cc, "-O2", "-Wall", "-shared", "-fPIC", f"-I{include}", "-o", str(tmp),
                    str(HERE / "_mmsg.c")], check=True)
    os.replace(tmp, target)
    return target


if __name__ == "__main__":
    sys.exit(0 if build() else 1)
