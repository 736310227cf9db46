#!/usr/bin/env bash
# Runs the whole test suite: installs what it needs (venv, pip packages, sipp, kamailio), then
# ruff and pytest. Extra arguments go to pytest. Fails when no test was collected.
set -euo pipefail
BUSYLAMP_EXTRAS=test
source "$(dirname "$0")/bootstrap.sh"
ensure_apt sip-tester kamailio kamailio-presence-modules kamailio-json-modules \
  kamailio-extra-modules kamailio-utils-modules
cd "$repo"
ruff check .
# pytest exits 5 when it collects nothing; that is a failure here too.
exec python -m pytest "$@"
