#!/usr/bin/env bash
# Runs busylamp on the embedded default: FreeSWITCH ESL at 127.0.0.1:8021, in-process bus,
# SIP on 0.0.0.0:5065 (UDP+TCP), HTTP API on 127.0.0.1:8080. Extra arguments go to `busylamp run`.
set -euo pipefail
source "$(dirname "$0")/bootstrap.sh"
exec busylamp run "$@"
