"""``pip install .`` puts one name into site-packages, and importing every module of it loads no
top-level ``presence``, ``bridge``, ``esl``, ``app`` or ``cli``.

pip builds the wheel of this checkout as ``pip install .`` does (with build isolation); the
wheel's top level is what lands in site-packages. It is unpacked into a temporary folder rather
than installed, because installing would replace the suite's own editable install. The import
check runs in a new interpreter whose working directory is not the checkout, so only the
unpacked copy can be found.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import zipfile
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
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    # a copy of the checkout's files: pip builds in the source tree and leaves build/ there
    source = tmp_path_factory.mktemp("source")
    listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"],
                            cwd=REPO, capture_output=True, text=True, check=True).stdout
    for name in listed.splitlines():
        if (REPO / name).is_file():
            (source / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, source / name)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps",
                    "--wheel-dir", str(out), str(source)], check=True, cwd=out, timeout=300)
    (built,) = out.glob("busylamp-*.whl")
    return built


@pytest.fixture(scope="module")
def installed(wheel: Path, tmp_path_factory) -> Path:
    site = tmp_path_factory.mktemp("site-packages")
    with zipfile.ZipFile(wheel) as archive:
        archive.extractall(site)
    return site


def test_pip_install_puts_only_busylamp_into_site_packages(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
    top = sorted({name.split("/")[0] for name in names})
    # data files (the dialplan snippets) go to <prefix>/share, not to site-packages
    assert top == ["busylamp", "busylamp-0.1.0.data", "busylamp-0.1.0.dist-info"]
    assert all(n.startswith("busylamp-0.1.0.data/data/share/busylamp/")
               for n in names if n.startswith("busylamp-0.1.0.data/"))
    entry_points = [n for n in names if n.endswith("entry_points.txt")]
    with zipfile.ZipFile(wheel) as archive:
        text = archive.read(entry_points[0]).decode()
    assert "busylamp = busylamp.cli:main" in text


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
