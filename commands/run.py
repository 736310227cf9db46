"""`busylamp run`: the bridge and/or the presence node, configured from flags, `BUSYLAMP_*`
variables and a TOML file.

One click option per ``presence.config.RunConfig`` field, and click resolves each the usual way:
flag > environment variable (the option's ``envvar``, BUSYLAMP_<NAME>) > the ``--config`` file
(or BUSYLAMP_CONFIG), loaded into the context's ``default_map`` by the eager ``--config`` option
> the RunConfig default. Values stay raw in click; ``presence.config.load_config`` parses the
ones that were given, each error naming its source (the flag, the variable or "KEY in FILE").
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import click
from click.core import ParameterSource

import busylamp.app
from busylamp.commands.base import Command, OneLineUsageError
from busylamp.commands.logsetup import setup_logging
from busylamp.presence.config import (
    FIELDS,
    ConfigError,
    RunConfig,
    load_config,
    normalize_file_keys,
    split_list,
)

log = logging.getLogger("busylamp")

CONFIG_LABEL = "busylamp.config_file"  # ctx.meta key: the --config file's name, for errors


class RawValue(click.ParamType):
    """A run option's value as given, unconverted (presence.config parses it); a repeatable
    option's environment variable holds a comma-separated list."""

    name = "VALUE"

    def convert(self, value: Any, param: click.Parameter | None,
                ctx: click.Context | None) -> Any:
        return value

    def split_envvar_value(self, rv: str) -> Sequence[str]:
        return split_list(rv)


class RawSwitch(click.types.BoolParamType):
    """An on/off option's value as given (True/False from --x/--no-x, text from a variable or
    the file), unconverted: presence.config parses it and names the source of a bad one."""

    def convert(self, value: Any, param: click.Parameter | None,
                ctx: click.Context | None) -> Any:
        return value


def read_toml(path: Path) -> dict[str, Any]:
    """Parse a TOML config file; ConfigError (one line) when unreadable or malformed."""
    import tomllib

    try:
        with open(path, "rb") as handle:
            return tomllib.load(handle)
    except OSError as err:
        raise ConfigError("--config", "a readable TOML file", path,
                          message=f"cannot read --config {path}: {err.strerror}") from None
    except tomllib.TOMLDecodeError as err:
        raise ConfigError("--config", "TOML", path,
                          message=f"invalid TOML in --config {path}: {err}") from None


def _load_config_file(ctx: click.Context, param: click.Parameter,
                      path: Path | None) -> Path | None:
    """Eager --config callback: the file's values become the default_map of the options."""
    if path is None or ctx.resilient_parsing:
        return path
    try:
        values = normalize_file_keys(read_toml(path), str(path))
    except ConfigError as err:
        raise OneLineUsageError(str(err), ctx) from None
    ctx.default_map = {**(ctx.default_map or {}), **values}
    ctx.meta[CONFIG_LABEL] = str(path)
    return path


def _default_text(name: str) -> str:
    value = getattr(RunConfig(node_id="x"), name)
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, list):
        return ", ".join(map(str, value)) or "none"
    return str(value)


def _run_options(command: Callable) -> Callable:
    """One option per RunConfig field, with its BUSYLAMP_* variable and no click default."""
    for name in reversed(list(FIELDS)):
        meta = FIELDS[name].metadata
        default = meta["default_text"] or _default_text(name)
        text = f"{meta['help']} [default: {default}; env {meta['env']}]"
        flag = meta["flag"]
        if meta["boolean"]:
            option = click.option(f"{flag}/--no-{flag[2:]}", name, type=RawSwitch(),
                                  envvar=meta["env"], help=text)
        else:
            option = click.option(flag, name, type=RawValue(), multiple=meta["multiple"],
                                  envvar=meta["env"], help=text, metavar="VALUE")
        command = option(command)
    return command


def _source_label(ctx: click.Context, name: str, source: ParameterSource | None) -> str:
    meta = FIELDS[name].metadata
    if source == ParameterSource.ENVIRONMENT:
        return meta["env"]
    if source == ParameterSource.DEFAULT_MAP:
        return f"{name} in {ctx.meta.get(CONFIG_LABEL, 'config file')}"
    return meta["flag"]


def resolve_config(ctx: click.Context, options: dict[str, Any]) -> RunConfig:
    """The RunConfig of the options click resolved: the ones given by flag, variable or file
    are parsed (errors name that source), the rest keep RunConfig's defaults."""
    given: dict[str, Any] = {}
    labels: dict[str, str] = {}
    for name, value in options.items():
        source = ctx.get_parameter_source(name)
        if source in (ParameterSource.COMMANDLINE, ParameterSource.ENVIRONMENT,
                      ParameterSource.DEFAULT_MAP):
            given[name] = value
            labels[name] = _source_label(ctx, name, source)
    try:
        return load_config(given, labels=labels, hostname=socket.gethostname())
    except ConfigError as err:
        raise OneLineUsageError(str(err), ctx) from None


@click.command(cls=Command, context_settings={"max_content_width": 120})
@click.option("--config", "config_file", type=click.Path(dir_okay=False, path_type=Path),
              envvar="BUSYLAMP_CONFIG", is_eager=True, callback=_load_config_file,
              help="TOML file of options (keys = option names) [env BUSYLAMP_CONFIG].")
@_run_options
def run(config_file: Path | None, **options: Any) -> None:
    """Run the bridge and/or the presence node (flag > BUSYLAMP_* env > --config file > default)."""
    ctx = click.get_current_context()
    config = resolve_config(ctx, options)
    busylamp.app.patch_gevent()
    setup_logging(config.log_level, config.log_format)
    from busylamp.app.roles import run_roles

    try:
        run_roles(config)
    except ConfigError as err:
        raise OneLineUsageError(str(err), ctx) from None
    except KeyboardInterrupt:
        log.info("interrupted, stopped")
