# shellcheck shell=bash disable=SC2034  # the variables are used by the scripts that source this
# Paths and helpers shared by the engine scripts; sourced, never run.
#
# Everything this directory starts or builds is private to conveyor: its own dockerd data-root,
# exec-root, socket and pid file, and caches under .tools/ (gitignored). No other engine on the
# machine is touched.

set -euo pipefail

ENGINE_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(cd "$ENGINE_DIR/../.." && pwd)"
TOOLS_DIR="${CONVEYOR_TOOLS_DIR:-$REPO_ROOT/.tools}"

ENGINE_DATA_ROOT="${CONVEYOR_ENGINE_DATA_ROOT:-/var/lib/conveyor-docker}"
ENGINE_EXEC_ROOT="${CONVEYOR_ENGINE_EXEC_ROOT:-/run/conveyor-docker}"
ENGINE_SOCKET="${CONVEYOR_ENGINE_SOCKET:-/run/conveyor-docker.sock}"
ENGINE_PIDFILE="${CONVEYOR_ENGINE_PIDFILE:-/run/conveyor-docker.pid}"
ENGINE_BRIDGE="${CONVEYOR_ENGINE_BRIDGE:-conveyor0}"
# The private bridge's address and the pool compose networks are carved from: chosen away from
# Docker's defaults (172.17.0.0/16 and up) so a second engine on the host never overlaps.
ENGINE_BRIDGE_CIDR="${CONVEYOR_ENGINE_BRIDGE_CIDR:-172.31.250.1/24}"
ENGINE_ADDRESS_POOL="${CONVEYOR_ENGINE_ADDRESS_POOL:-172.31.0.0/17}"
ENGINE_LOG="$TOOLS_DIR/engine/dockerd.log"

ENGINE_HOST="unix://$ENGINE_SOCKET"
# The engine base-images.sh imports into: conveyor's own, or the machine's engine when the engine
# tier found one that answers (it passes its address as CONVEYOR_DOCKER_HOST).
export DOCKER_HOST="${CONVEYOR_DOCKER_HOST:-$ENGINE_HOST}"

log() {
  printf '[conveyor-engine] %s\n' "$*" >&2
}

die() {
  printf '[conveyor-engine] ERROR: %s\n' "$*" >&2
  exit 1
}

require_root() {
  [ "$(id -u)" = 0 ] || die "must run as root (dockerd and debootstrap need it)"
}

# apt_install PACKAGE... : install Debian packages that are missing, from the configured mirror.
apt_install() {
  local missing=()
  local pkg
  for pkg in "$@"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' || missing+=("$pkg")
  done
  [ "${#missing[@]}" -eq 0 ] && return 0
  log "apt-get install ${missing[*]}"
  # An update first: a fresh machine has no package lists.
  apt-get update -qq >/dev/null
  # policy-rc.d keeps the package's service from starting on a host that runs an init system.
  local policy=/usr/sbin/policy-rc.d created_policy=0
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod 755 "$policy" && created_policy=1
  fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  [ "$created_policy" = 1 ] && rm -f "$policy"
  return 0
}

# debian_mirror: the Debian archive this machine's apt uses (deb822 or one-line sources).
debian_mirror() {
  if [ -n "${CONVEYOR_DEBIAN_MIRROR:-}" ]; then
    printf '%s\n' "$CONVEYOR_DEBIAN_MIRROR"
    return
  fi
  local file uri
  for file in /etc/apt/sources.list.d/*.sources /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
    [ -f "$file" ] || continue
    case "$file" in
      *.sources)
        # The URIs of the first stanza whose Suites name bookworm and not a -security suite.
        uri="$(awk '
          /^[[:space:]]*$/ { if (uris != "" && suites ~ /(^| )bookworm( |$)/) { print uris; exit } uris=""; suites=""; next }
          /^URIs:/ { uris=$2 }
          /^Suites:/ { $1=""; suites=$0 }
          END { if (uris != "" && suites ~ /(^| )bookworm( |$)/) print uris }
        ' "$file" | head -n1)"
        ;;
      *)
        uri="$(awk '$1 == "deb" && $0 ~ / bookworm / { for (i = 2; i <= NF; i++) if ($i ~ /^[a-z]+:\/\//) { print $i; exit } }' "$file" | head -n1)"
        ;;
    esac
    if [ -n "$uri" ]; then
      printf '%s\n' "${uri%/}"
      return
    fi
  done
  printf '%s\n' "http://deb.debian.org/debian"
}

engine_running() {
  [ -f "$ENGINE_PIDFILE" ] && kill -0 "$(cat "$ENGINE_PIDFILE")" 2>/dev/null &&
    docker version --format '{{.Server.Version}}' >/dev/null 2>&1
}

# default_python: the project's virtualenv when there is one (it has pip), else python3.
default_python() {
  if [ -x "$REPO_ROOT/.venv/bin/python" ]; then
    printf '%s\n' "$REPO_ROOT/.venv/bin/python"
  else
    printf '%s\n' python3
  fi
}
