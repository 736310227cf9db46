"""The optional C extensions in tests: each module's tests run with and without them."""

from __future__ import annotations

import os

import pytest


def require_built_extension(source: str) -> None:
    """Fail in CI (.ci/run sets TESTKIT_REQUIRED), where scripts/bootstrap.sh builds every
    extension; skip elsewhere. Called by a test that needs the extension ``source``."""
    if os.environ.get("TESTKIT_REQUIRED") or os.environ.get("CI"):
        pytest.fail(f"{source} is not built: python -m busylamp.presence.node.buildext")
    pytest.skip(f"{source} not built (python -m busylamp.presence.node.buildext)")
