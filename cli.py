"""busylamp command line: the click group; each subcommand lives in ``busylamp.commands``.

Importing this module patches nothing (only the long-running command bodies monkey-patch with
gevent), so tests drive it with click's CliRunner.
"""

from __future__ import annotations

import click

from busylamp.commands.base import CONTEXT, Group
from busylamp.commands.demo import demo
from busylamp.commands.dialplan import dialplan
from busylamp.commands.inspect import inspect
from busylamp.commands.publish import publish
from busylamp.commands.run import run
from busylamp.commands.tail import tail
from busylamp.commands.why import why


@click.group(cls=Group, context_settings=CONTEXT)
def main() -> None:
    """busylamp: FreeSWITCH event-socket bridge with a built-in SIP presence engine."""


for command in (run, publish, inspect, tail, dialplan, demo, why):
    main.add_command(command)
