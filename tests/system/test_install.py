"""``pip install .`` puts one name into site-packages, and importing every module of it loads no
top-level ``presence``, ``bridge``, ``esl``, ``app`` or ``cli``.

The install is a real pip build of this checkout (with build isolation, as a user's
``pip install .``) into a fresh prefix; the import check runs in a new interpreter whose
working directory is not the checkout, so only the installed copy can be found.
"""

from __future__ import annotations

import json
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
STRAY = ("presence", "bridge", "esl", "app", "cli")

IMPORT_ALL = """
import json, pkgutil, sys
import busylamp
names = [m.name for m in pkgutil.walk_packages(busylamp.__path__, "busylamp.")]
for name in names:
    __import__(name)
stray = sorted(n for n in sys.modules if n.split(".")[0] in STRAY)
print(json.dumps({"file": busylamp.__file__, "modules": len(names), "stray": stray}))
"""


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    prefix = tmp_path_factory.mktemp("prefix")
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps",
                    "--prefix", str(prefix), str(REPO)], check=True, cwd=prefix, timeout=300)
    purelib = sysconfig.get_path("purelib", vars={"base": str(prefix), "platbase": str(prefix)})
    return Path(purelib)


def test_pip_install_puts_only_busylamp_into_site_packages(installed: Path) -> None:
    names = sorted(p.name for p in installed.iterdir() if p.name != "__pycache__")
    assert names == ["busylamp", "busylamp-0.1.0.dist-info"]
    entry_points = (installed / "busylamp-0.1.0.dist-info" / "entry_points.txt").read_text()
    assert "busylamp = busylamp.cli:main" in entry_points


def test_importing_every_module_loads_no_top_level_name_of_ours(installed: Path,
                                                                tmp_path: Path) -> None:
    code = f"STRAY = {STRAY!r}\n" + IMPORT_ALL
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=tmp_path, env={"PYTHONPATH": str(installed)}, timeout=120)
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout.splitlines()[-1])
    assert report["file"].startswith(str(installed))
    assert report["modules"] > 50
    assert report["stray"] == []
