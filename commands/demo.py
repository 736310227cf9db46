"""`busylamp demo`: a simulated FreeSWITCH office lighting real lamps (``busylamp.app.demo``)."""

from __future__ import annotations

import click

import busylamp.app
from busylamp.commands.base import Command


@click.command(cls=Command)
@click.option("--duration", type=click.FloatRange(min=1), default=None, metavar="SECONDS",
              help="Keep replaying the office for this long (default: play it once, ~20 s).")
@click.option("--speed", type=click.FloatRange(min=0.1, max=50), default=1.0, show_default=True,
              help="Play the scenario faster (2 = twice as fast).")
@click.option("--headless", is_flag=True,
              help="Print one line per lamp change instead of the live lamp board.")
def demo(duration: float | None, speed: float, headless: bool) -> None:
    """Watch busylamp light lamps: a simulated FreeSWITCH office, the real bridge and engine,
    and SIP watchers on loopback whose NOTIFYs drive the lamp board. No FreeSWITCH needed."""
    busylamp.app.patch_gevent()
    from busylamp.app.demo.run import DemoError, run_demo

    try:
        result = run_demo(duration=duration, headless=headless, speed=speed)
    except DemoError as exc:
        raise click.ClickException(str(exc)) from None
    changes = sum(max(0, len(states) - 1) for states in result.lamps.values())
    click.echo(f"demo finished: {changes} lamp changes seen in {sum(result.notifies.values())} "
               f"NOTIFYs over {result.elapsed:.1f} s")
