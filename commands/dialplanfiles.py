"""busylamp's FreeSWITCH dialplan snippets on disk: where they are, which files, and the edits of
the vanilla ``dialplan/default.xml`` that ``busylamp dialplan install`` makes.

The snippets are looked up, in order, in: `--source DIR`, the BUSYLAMP_DIALPLAN_DIR variable,
`contrib/freeswitch-dialplan` of the package folder (a source checkout or an editable install),
and `<sys.prefix>/share/busylamp/freeswitch-dialplan` (an installed package shipping them as data
files).
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

import click

DIALPLAN_SUBDIR = Path("contrib") / "freeswitch-dialplan"


def dialplan_source(explicit: Path | None = None) -> Path:
    """The snippet folder: --source, BUSYLAMP_DIALPLAN_DIR, the checkout, then share/busylamp."""
    candidates = [explicit] if explicit else []
    if os.environ.get("BUSYLAMP_DIALPLAN_DIR"):
        candidates.append(Path(os.environ["BUSYLAMP_DIALPLAN_DIR"]))
    candidates += [Path(__file__).resolve().parents[1] / DIALPLAN_SUBDIR,
                   Path(sys.prefix) / "share" / "busylamp" / "freeswitch-dialplan"]
    for folder in candidates:
        if folder.is_dir() and snippet_files(folder):
            return folder
    raise click.ClickException("no dialplan snippets found (looked in "
                               + ", ".join(str(c) for c in candidates) + "); pass --source DIR")


def snippet_files(folder: Path) -> list[Path]:
    """Snippet paths relative to `folder` (README.md and hidden files skipped), sorted."""
    return sorted(p.relative_to(folder) for p in folder.rglob("*")
                  if p.is_file() and p.name != "README.md"
                  and not any(part.startswith(".") for part in p.relative_to(folder).parts))


# The vanilla default.xml hunts its own extensions before the default/*.xml includes: these
# vanilla extensions would take the calls busylamp's snippets are written for.
VANILLA_REPLACED = {
    "Local_Extension": "dialplan/default/10_busylamp_local_extension.xml",
    "intercept-ext": "dialplan/default/20_busylamp_intercept.xml",
    "vmain": "dialplan/default/40_busylamp_voicemail.xml",
}
DEFAULT_XML = Path("dialplan") / "default.xml"
TOP_INCLUDE = '<X-PRE-PROCESS cmd="include" data="default/00_busylamp_presence.xml"/>'
VANILLA_GUARD = '<condition field="${busylamp_vanilla}" expression="^enabled$"/>'
_CONTEXT = re.compile(r'<context\s+name="default"\s*>')


class DialplanEditError(ValueError):
    """default.xml does not have the shape the install edits; the message says what to do."""


def edit_default_xml(text: str) -> tuple[str, list[str]]:
    """busylamp's edits of the vanilla ``dialplan/default.xml`` (pure, idempotent).

    Includes ``00_busylamp_presence.xml`` at the top of the ``default`` context (the caller's
    presence_id before any extension acts) and disables each vanilla extension of
    :data:`VANILLA_REPLACED` with a first condition that never holds (its text stays as it was).
    Returns the new text and one line per change.
    """
    notes: list[str] = []
    if TOP_INCLUDE not in text:
        context = _CONTEXT.search(text)
        if context is None:
            raise DialplanEditError(
                f'{DEFAULT_XML}: no <context name="default">; add {TOP_INCLUDE} as the first line '
                "of the context your phones' calls use")
        indent = "\n    "
        text = (text[:context.end()] + indent
                + "<!-- busylamp (dialplan install): the caller's presence_id first -->"
                + indent + TOP_INCLUDE + text[context.end():])
        notes.append("includes default/00_busylamp_presence.xml at the top of the context")
    for name, snippet in VANILLA_REPLACED.items():
        pattern = re.compile(rf'(<extension\s+name="{re.escape(name)}"[^>]*>)(\s*)')
        pieces: list[str] = []
        last = 0
        for match in pattern.finditer(text):
            pieces.append(text[last:match.end()])
            last = match.end()
            if text.startswith(VANILLA_GUARD, match.end()) or text.startswith("<!-- busylamp:",
                                                                                match.end()):
                continue
            indent = match.group(2) or "\n      "
            pieces.append(f"<!-- busylamp: disabled by busylamp dialplan install, {snippet} "
                          f"replaces it; delete this line and the next to enable it again -->"
                          f"{indent}{VANILLA_GUARD}{indent}")
            notes.append(f"disables vanilla extension {name} ({snippet} replaces it)")
        pieces.append(text[last:])
        text = "".join(pieces)
    return text, notes


def backup_path(dest: Path, stamp: str) -> Path:
    """A free ``NAME.busylamp-bak-STAMP[-N]`` next to `dest` for the file about to be replaced."""
    backup = dest.with_name(f"{dest.name}.busylamp-bak-{stamp}")
    serial = 1
    while backup.exists():
        backup = dest.with_name(f"{dest.name}.busylamp-bak-{stamp}-{serial}")
        serial += 1
    return backup
