#!/usr/bin/env bash
# Runs the whole test suite: installs what it needs (venv, pip packages, sipp, kamailio, and
# FreeSWITCH from the kit at ../shared/freeswitch when it is there), then ruff and pytest.
# Extra arguments go to pytest. Fails when no test was collected. The real-component kits are
# found as tests/kits.py says (TESTKIT_* variables, else ../shared/).
set -euo pipefail
BUSYLAMP_EXTRAS=test
source "$(dirname "$0")/bootstrap.sh"
ensure_apt sip-tester kamailio kamailio-presence-modules kamailio-json-modules \
  kamailio-extra-modules kamailio-utils-modules
fs_kit="${TESTKIT_FREESWITCH:-$repo/../shared/freeswitch}"
if [ -x "$fs_kit/install.sh" ] && [ -z "${TESTKIT_FREESWITCH_PREFIX:-}" ]; then
  "$fs_kit/install.sh" "$venv/freeswitch"
fi
cd "$repo"
ruff check .
# pytest exits 5 when it collects nothing; that is a failure here too.
exec python -m pytest "$@"
