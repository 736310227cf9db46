"""busylamp command line (placeholder until the CLI lands)."""

import click


@click.group()
def main() -> None:
    """busylamp: FreeSWITCH ESL bridge and SIP presence engine."""
