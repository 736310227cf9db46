"""busylamp: a FreeSWITCH event-socket bridge with a built-in, distributed SIP presence engine.

The repository root is this package: ``bridge/``, ``presence/``, ``esl/``, ``app/`` and ``cli.py``
install as ``busylamp.bridge``, ``busylamp.presence``, ``busylamp.esl``, ``busylamp.app`` and
``busylamp.cli`` (setup.cfg maps the folders), so nothing else lands at site-packages' top level.
"""

__version__ = "0.1.0"
