"""The `busylamp` subcommands, one module each (``run``, ``publish``, ``inspect``, ``tail``,
``why``, ``dialplan``, ``demo``), and what they share: ``base`` (one-line usage errors, option
types), ``httpclient`` (the node's HTTP API), ``logsetup``, ``promtext`` (Prometheus text),
``nsqpub`` (one NSQ PUB) and ``dialplanfiles`` (the FreeSWITCH snippets). ``busylamp.cli`` groups
them; process wiring is ``busylamp.app``'s, which only the CLI and these modules import.

Importing any of them monkey-patches nothing: the long-running commands patch for gevent first
thing in their body (``busylamp.app.patch_gevent``), so tests drive them with click's CliRunner.
"""
