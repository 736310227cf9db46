"""`busylamp dialplan show|install`: the FreeSWITCH dialplan snippets that set presence_id."""

from __future__ import annotations

import difflib
import shutil
import time
from pathlib import Path

import click

from busylamp.commands.base import Group
from busylamp.commands.dialplanfiles import (
    DEFAULT_XML,
    DialplanEditError,
    backup_path,
    dialplan_source,
    edit_default_xml,
    snippet_files,
)


@click.group(cls=Group)
def dialplan() -> None:
    """FreeSWITCH dialplan snippets that set presence_id for busylamp."""


_SOURCE = click.option("--source", type=click.Path(file_okay=False, exists=True, path_type=Path),
                       help="Snippet folder [default: the one shipped with busylamp].")


@dialplan.command("show")
@_SOURCE
def dialplan_show(source: Path | None) -> None:
    """Print the snippets with their paths relative to the FreeSWITCH conf dir."""
    folder = dialplan_source(source)
    for relative in snippet_files(folder):
        click.echo(f"==> {relative} <==")
        click.echo((folder / relative).read_text(encoding="utf-8").rstrip("\n"))
        click.echo()


@dialplan.command("install")
@click.option("--freeswitch-conf", "conf_dir", required=True,
              type=click.Path(file_okay=False, exists=True, writable=True, path_type=Path),
              help="FreeSWITCH conf dir (e.g. /etc/freeswitch).")
@click.option("--dry-run", is_flag=True, help="Show a unified diff; change nothing.")
@click.option("--force", is_flag=True, help="Replace files that differ (a backup is kept).")
@_SOURCE
def dialplan_install(conf_dir: Path, dry_run: bool, force: bool, source: Path | None) -> None:
    """Copy the snippets into the conf dir, idempotently; backups of anything replaced."""
    folder = dialplan_source(source)
    stamp = time.strftime("%Y%m%d%H%M%S")
    plan = []
    for relative in snippet_files(folder):
        new = (folder / relative).read_text(encoding="utf-8")
        dest = conf_dir / relative
        old = dest.read_text(encoding="utf-8", errors="replace") if dest.exists() else None
        plan.append((relative, dest, old, new))
    conflicts = [rel for rel, _, old, new in plan if old is not None and old != new]
    default_xml = conf_dir / DEFAULT_XML
    edits: list[str] = []
    if default_xml.is_file():
        old = default_xml.read_text(encoding="utf-8", errors="replace")
        try:
            new, edits = edit_default_xml(old)
        except DialplanEditError as exc:
            raise click.ClickException(str(exc)) from None
        plan.append((DEFAULT_XML, default_xml, old, new))
    else:
        click.echo(f"note: no {DEFAULT_XML} in {conf_dir}: include default/00_busylamp_presence.xml "
                   "at the top of your context and disable the extensions that take 1000-1019 and "
                   "**<ext> before the snippets do", err=True)
    if dry_run:
        for relative, _, old, new in plan:
            if old != new:
                click.echo("".join(difflib.unified_diff(
                    (old or "").splitlines(keepends=True), new.splitlines(keepends=True),
                    f"a/{relative}" if old is not None else "/dev/null", f"b/{relative}")),
                    nl=False)
        changes = sum(old != new for _, _, old, new in plan)
        click.echo(f"dry run: {changes} file(s) would change in {conf_dir}", err=True)
        return
    if conflicts and not force:
        raise click.ClickException(
            "these files differ from busylamp's and were left alone: "
            + ", ".join(map(str, conflicts)) + " (see --dry-run; --force replaces them and "
            "keeps a .busylamp-bak copy)")
    changed = 0
    for relative, dest, old, new in plan:
        if old == new:
            click.echo(f"unchanged  {relative}")
            continue
        dest.parent.mkdir(parents=True, exist_ok=True)
        if old is not None:
            backup = backup_path(dest, stamp)
            shutil.copy2(dest, backup)
            verb = "edited  " if relative == DEFAULT_XML else "replaced"
            click.echo(f"{verb}   {relative} (backup {backup.name})")
            if relative == DEFAULT_XML:
                for note in edits:
                    click.echo(f"             {note}")
        else:
            click.echo(f"installed  {relative}")
        dest.write_text(new, encoding="utf-8")
        changed += 1
    if changed:
        click.echo("now run: fs_cli -x reloadxml")
    else:
        click.echo("nothing to do: the snippets are already installed")
