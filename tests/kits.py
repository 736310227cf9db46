"""Where the suite finds the real FreeSWITCH and nsqd kits, and what it does when one is missing.

The kits are test equipment kept outside the repository (`../shared/` beside a clone). The suite's
own environment variables point at them; without a variable it falls back to `../shared/...`:

| variable | what it names | fallback |
|---|---|---|
| `TESTKIT_NSQ` | folder holding the `nsqd` and `nsqlookupd` 1.3 binaries | `../shared/nsq` |
| `TESTKIT_FREESWITCH` | the FreeSWITCH kit folder (`install.sh`, `fs-up.sh`, `fs-down.sh`) | `../shared/freeswitch` |
| `TESTKIT_FREESWITCH_PREFIX` | the tree `install.sh` unpacked (`bin/freeswitch`) | `.venv/freeswitch` |
| `TESTKIT_REQUIRED` | `1`: a missing kit fails the test instead of skipping it (`.ci/run` sets it) | unset |

`scripts/test.sh` installs FreeSWITCH from the kit into `.venv/freeswitch` when the kit is there.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SHARED = REPO.parent / "shared"


@dataclass(frozen=True)
class NsqKit:
    nsqd: Path
    nsqlookupd: Path


@dataclass(frozen=True)
class FreeSwitchKit:
    kit: Path  # install.sh, fs-up.sh, fs-down.sh
    prefix: Path  # the installed tree: bin/freeswitch, etc/freeswitch, lib/

    @property
    def fs_up(self) -> Path:
        return self.kit / "fs-up.sh"

    @property
    def fs_down(self) -> Path:
        return self.kit / "fs-down.sh"


def _required() -> bool:
    return os.environ.get("TESTKIT_REQUIRED", "") not in ("", "0")


def missing(what: str, how: str) -> None:
    """Skip (or, under TESTKIT_REQUIRED, fail) with one line saying what is missing and how to provide it."""
    message = f"{what} not found: {how}"
    if _required():
        pytest.fail(f"{message} (TESTKIT_REQUIRED is set: CI runs every real-component test)",
                    pytrace=False)
    pytest.skip(message)


def _path(var: str, fallback: Path) -> Path:
    value = os.environ.get(var)
    return Path(value).resolve() if value else fallback


def find_nsq() -> NsqKit | None:
    folder = _path("TESTKIT_NSQ", SHARED / "nsq")
    kit = NsqKit(folder / "nsqd", folder / "nsqlookupd")
    ok = all(p.is_file() and os.access(p, os.X_OK) for p in (kit.nsqd, kit.nsqlookupd))
    return kit if ok else None


def find_freeswitch() -> FreeSwitchKit | None:
    kit = _path("TESTKIT_FREESWITCH", SHARED / "freeswitch")
    prefix = _path("TESTKIT_FREESWITCH_PREFIX", REPO / ".venv" / "freeswitch")
    if not (kit / "fs-up.sh").is_file() or not (prefix / "bin" / "freeswitch").is_file():
        return None
    return FreeSwitchKit(kit, prefix)


def require_nsq() -> NsqKit:
    kit = find_nsq()
    if kit is None:
        missing("real nsqd/nsqlookupd", "set TESTKIT_NSQ to a folder with the nsqd and nsqlookupd "
                "1.3 binaries, or lay the kit at ../shared/nsq")
    return kit


def require_freeswitch() -> FreeSwitchKit:
    kit = find_freeswitch()
    if kit is None:
        missing("real FreeSWITCH", "run ./scripts/test.sh with the kit at ../shared/freeswitch (it "
                "installs it into .venv/freeswitch), or set TESTKIT_FREESWITCH to the kit and "
                "TESTKIT_FREESWITCH_PREFIX to a tree its install.sh unpacked")
    return kit
