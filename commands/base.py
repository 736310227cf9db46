"""click building blocks shared by the commands: one-line usage errors and option types."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click

from busylamp.presence.config import Address, parse_host_port

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


class OneLineUsageError(click.UsageError):
    """A usage error printed as one line: `Error: busylamp run: <message>`; exit code 2."""

    def show(self, file: Any = None) -> None:
        where = self.ctx.command_path if self.ctx else "busylamp"
        click.echo(f"Error: {where}: {self.format_message()} (see {where} --help)",
                   file=file, err=True)


class _OneLineErrors:
    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        try:
            return super().parse_args(ctx, args)  # type: ignore[misc]
        except OneLineUsageError:
            raise
        except click.UsageError as err:
            raise OneLineUsageError(err.format_message(), ctx) from None


class Command(_OneLineErrors, click.Command):
    """click.Command whose parse errors are one line."""


class Group(_OneLineErrors, click.Group):
    """click.Group whose parse and unknown-command errors are one line."""

    command_class = Command

    def resolve_command(self, ctx: click.Context, args: list[str]) -> Any:
        try:
            return super().resolve_command(ctx, args)
        except OneLineUsageError:
            raise
        except click.UsageError as err:
            raise OneLineUsageError(err.format_message(), ctx) from None


Group.group_class = Group


class AddressType(click.ParamType):
    """HOST:PORT (also http://HOST:PORT) → presence.config.Address."""

    name = "HOST:PORT"

    def convert(self, value: Any, param: Any, ctx: Any) -> Address:
        if isinstance(value, Address):
            return value
        text = str(value).strip().removeprefix("http://").rstrip("/")
        try:
            return parse_host_port(text)
        except ValueError:
            self.fail(f'"{value}": expected HOST:PORT', param, ctx)


ADDRESS = AddressType()


def json_option(command: Callable) -> Callable:
    """--json: machine-readable output."""
    return click.option("--json", "as_json", is_flag=True, help="Machine-readable JSON.")(command)
