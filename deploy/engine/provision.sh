#!/usr/bin/env bash
# Provision everything the engine tier needs, in order, and say how long each step took:
#
#   deploy/engine/provision.sh       # engine up, base images imported, wheelhouse, compose binary
#
# Each step is idempotent and cached (see README.md here), so a warm run takes seconds.
# Stop the engine afterwards with `deploy/engine/engine.sh stop`.
# shellcheck source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

step() {
  local name="$1"
  shift
  local start=$SECONDS
  "$@"
  log "step $name: $((SECONDS - start))s"
}

# Two provisioning runs at once would race on the caches and the engine's start.
mkdir -p "$TOOLS_DIR/engine"
exec 9>"$TOOLS_DIR/engine/provision.lock"
flock --wait 1500 9 || die "another provision.sh kept $TOOLS_DIR/engine/provision.lock for 1500s"

step engine "$ENGINE_DIR/engine.sh" start
step base-images "$ENGINE_DIR/base-images.sh"
step wheelhouse "$ENGINE_DIR/wheelhouse.sh"
step compose "$ENGINE_DIR/get-compose.sh" >/dev/null
log "ready: DOCKER_HOST=$DOCKER_HOST compose=$TOOLS_DIR/bin/docker-compose"
