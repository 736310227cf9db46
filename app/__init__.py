"""The composition root: the only code that wires processes (roles, demo, tail) out of the
engine (``presence/``), the bridge (``bridge/``) and the ESL client (``esl/``). Only the CLI
(``busylamp.cli`` and ``busylamp.commands``) imports it."""


def patch_gevent() -> None:
    """Monkey-patch the process for gevent: first thing a long-running command does (run, demo,
    tail over ESL or NSQ), never on import."""
    from gevent import monkey

    monkey.patch_all()
