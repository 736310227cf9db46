"""The composition root: the only code that wires processes (roles, demo, tail) out of the
engine (``presence/``), the bridge (``bridge/``) and the ESL client (``esl/``). Only the CLI
imports it."""
