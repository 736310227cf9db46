"""Print the README's generated tables (run flags, JSON fields) from the code's own metadata.

    .venv/bin/python scripts/readme_tables.py flags
    .venv/bin/python scripts/readme_tables.py fields

tests/integration/test_readme.py checks that README.md carries exactly this output between its markers.
"""

from __future__ import annotations

import dataclasses
import sys

from busylamp.presence.config import RunConfig
from busylamp.presence.updates import FIELD_TABLE


def _cell(text: object) -> str:
    return str(text).replace("|", "\\|")


def _default(field: dataclasses.Field) -> str:
    meta = field.metadata
    if meta.get("default_text"):
        return str(meta["default_text"])
    if field.default is not dataclasses.MISSING:
        value = field.default
    elif field.default_factory is not dataclasses.MISSING:
        value = field.default_factory()
    else:
        return ""
    if value is None:
        return ""
    if isinstance(value, list):
        return ", ".join(str(v) for v in value)
    if isinstance(value, bool):
        return "on" if value else "off"
    return str(value)


def flags_table() -> str:
    rows = ["| flag | environment | default | meaning |", "|---|---|---|---|"]
    for field in dataclasses.fields(RunConfig):
        meta = field.metadata
        flag = f"`{meta['flag']}`" + (" (repeatable)" if meta.get("multiple") else "")
        default = _default(field)
        rows.append(
            f"| {flag} | `{meta['env']}` | {f'`{default}`' if default else ''} "
            f"| {_cell(meta['help'])} |"
        )
    return "\n".join(rows) + "\n"


def fields_table() -> str:
    out: list[str] = []
    for section, rows in FIELD_TABLE.items():
        out.append(f"**{section}**\n")
        out.append("| field | required | values | default | meaning |")
        out.append("|---|---|---|---|---|")
        for name, required, allowed, default, meaning in rows:
            out.append(
                f"| `{name}` | {'yes' if required else 'no'} | {_cell(allowed)} | {_cell(default)} "
                f"| {_cell(meaning)} |"
            )
        out.append("")
    return "\n".join(out)


def main() -> None:
    which = sys.argv[1] if len(sys.argv) > 1 else "flags"
    sys.stdout.write(flags_table() if which == "flags" else fields_table())


if __name__ == "__main__":
    main()
