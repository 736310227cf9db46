"""Builds the harness's C tools (``bench/c/*.c``) with gcc into ``bench/build/`` on first use."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

SRC = Path(__file__).resolve().parent / "c"
BUILD = Path(__file__).resolve().parent / "build"
CFLAGS = ["-O2", "-Wall", "-Wextra", "-std=gnu11"]


def tool(name: str) -> Path:
    """Path of the compiled tool ``name``, (re)built when missing or older than its source."""
    src = SRC / f"{name}.c"
    exe = BUILD / name
    if exe.exists() and exe.stat().st_mtime >= src.stat().st_mtime:
        return exe
    cc = os.environ.get("CC") or shutil.which("gcc") or shutil.which("cc")
    if cc is None:
        raise RuntimeError("no C compiler: the benchmark tools need gcc (apt-get install gcc)")
    BUILD.mkdir(exist_ok=True)
    tmp = exe.with_name(f".{name}.{os.getpid()}")
    subprocess.run([cc, *CFLAGS, "-o", str(tmp), str(src), "-lm"], check=True)
    os.replace(tmp, exe)
    return exe
