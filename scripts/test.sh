#!/usr/bin/env bash
# Install everything castle's tests need (Debian 12, as root) and run the whole suite:
# ruff, mypy and pytest. Extra arguments go to pytest, e.g. `scripts/test.sh -k compose -x`.
# Reruns are fast: apt only runs when a tool is missing, pip only when pyproject.toml changed.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export PATH="$PATH:/usr/local/sbin:/usr/sbin:/sbin"

NCA_VERSION="2.1.0"   # network-config-analyzer; tests/oracles/kube.py parses its output
PYTHON="${PYTHON:-python3}"

say() { printf '== %s\n' "$*"; }

# Run pip quietly: print its output only when it fails, less the index-location noise.
quiet_pip() {
  local log rc=0
  log=$(mktemp)
  "$@" >"$log" 2>&1 || rc=$?
  if [ "$rc" -ne 0 ]; then
    cat "$log" >&2
  else
    grep -v "is ignored: it is neither a file nor a directory" "$log" || true
  fi
  rm -f "$log"
  return "$rc"
}

# -- system packages ------------------------------------------------------------------------
# COMMAND:PACKAGE, one a line: the package is installed when the command is missing.
needs=(
  iptables:iptables
  nft:nftables
  ip:iproute2
  shellcheck:shellcheck
  openssl:openssl
  modprobe:kmod
  rsvg-convert:librsvg2-bin
  dot:graphviz
  dockerd:docker.io
  mmdebstrap:mmdebstrap
  busybox:busybox-static
  nsenter:util-linux
  ss:iproute2
)
missing=()
for pair in "${needs[@]}"; do
  command -v "${pair%%:*}" >/dev/null 2>&1 || missing+=("${pair#*:}")
done
if ! command -v "$PYTHON" >/dev/null 2>&1; then
  missing+=(python3 python3-venv)
elif ! "$PYTHON" -c 'import ensurepip, venv' >/dev/null 2>&1; then
  missing+=(python3-venv)   # Debian's python3 ships venv without ensurepip
fi
if [ "${#missing[@]}" -gt 0 ]; then
  if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
    say "apt-get install ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  else
    say "warning: missing ${missing[*]} (not root or no apt-get): tests needing them will skip"
  fi
fi

# -- Python environments ------------------------------------------------------------------
# ensure_venv DIR STAMP PIP-ARGS...: (re)create DIR and install when STAMP changed.
ensure_venv() {
  local dir=$1 stamp=$2
  shift 2
  if [ -x "$dir/bin/python" ] && "$dir/bin/python" -c '' 2>/dev/null \
      && [ "$(cat "$dir/.castle-stamp" 2>/dev/null)" = "$stamp" ]; then
    return 0
  fi
  say "installing $dir"
  [ -x "$dir/bin/python" ] || "$PYTHON" -m venv "$dir"
  quiet_pip "$dir/bin/python" -m pip install -q --disable-pip-version-check "$@"
  printf '%s' "$stamp" >"$dir/.castle-stamp"
}

py_version=$("$PYTHON" -c 'import sys; print(sys.version)')
ensure_venv .venv "$(sha256sum pyproject.toml | cut -d' ' -f1) $py_version" -e '.[test]'
# nca pins exact PyYAML, networkx and lxml versions: it gets a venv of its own.
ensure_venv .venv-nca "nca==$NCA_VERSION $py_version" "network-config-analyzer==$NCA_VERSION"
export CASTLE_NCA="$PWD/.venv-nca/bin/nca"

# -- checks: run all three, fail if any failed -------------------------------------------
failed=()
say "ruff"
.venv/bin/ruff check castle tests benchmarks || failed+=(ruff)
say "mypy"
.venv/bin/mypy || failed+=(mypy)
say "pytest"
rc=0
.venv/bin/python -m pytest "$@" || rc=$?
case "$rc" in
  0) ;;
  5) say "pytest collected no tests: that is a failure here"; failed+=(pytest) ;;
  *) failed+=(pytest) ;;
esac
if [ "${#failed[@]}" -gt 0 ]; then
  say "FAILED: ${failed[*]}"
  exit 1
fi
say "all checks passed"
