#!/usr/bin/env bash
# Shared set-up for scripts/run.sh and scripts/test.sh: creates or reuses .venv and installs
# busylamp into it. Sourced, not run. BUSYLAMP_EXTRAS selects pip extras (e.g. "test").
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="$repo/.venv"

need_apt=()
apt_wanted() { dpkg -s "$1" >/dev/null 2>&1 || need_apt+=("$1"); }

ensure_apt() {
  # ensure_apt PKG... : installs the Debian packages that are missing (root only).
  need_apt=()
  for p in "$@"; do apt_wanted "$p"; done
  [ ${#need_apt[@]} -eq 0 ] && return 0
  if [ "$(id -u)" != 0 ]; then
    echo "busylamp: missing Debian packages: ${need_apt[*]} (run as root or install them)" >&2
    exit 1
  fi
  echo "busylamp: installing ${need_apt[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
}

if ! python3 -c 'import venv, ensurepip' >/dev/null 2>&1; then
  ensure_apt python3-venv
fi
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
fi
stamp="$venv/.installed-${BUSYLAMP_EXTRAS:-base}"
if [ ! -f "$stamp" ] || [ "$repo/setup.cfg" -nt "$stamp" ]; then
  "$venv/bin/pip" install -q --disable-pip-version-check --upgrade pip >/dev/null
  spec="$repo"
  [ -n "${BUSYLAMP_EXTRAS:-}" ] && spec="$repo[${BUSYLAMP_EXTRAS}]"
  "$venv/bin/pip" install -q --disable-pip-version-check -e "$spec"
  touch "$stamp"
fi
# the optional C extensions (recvmmsg/sendmmsg, the history's answer hook, the ESL header parser;
# each has a Python fallback), rebuilt when a source is newer than the last build
built="$repo/presence/node/.mmsg-built"
stale=0
[ -f "$built" ] || stale=1
for src in presence/node/_mmsg.c presence/_history.c esl/_eventhead.c wire/_plain.c \
    presence/sip/_scan.c presence/sip/_values.c; do
  [ "$repo/$src" -nt "$built" ] && stale=1
done
if [ "$stale" = 1 ]; then
  if "$venv/bin/python" -m busylamp.presence.node.buildext; then touch "$built"; fi
fi
export PATH="$venv/bin:$PATH"
