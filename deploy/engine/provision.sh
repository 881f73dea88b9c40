#!/usr/bin/env bash
# Provision what the engine tier needs, in order, and say how long each step took:
#
#   deploy/engine/provision.sh                  # all steps: engine base-images wheelhouse compose
#   deploy/engine/provision.sh wheelhouse       # only the named steps (the engine tier skips what
#                                               # the machine already has: devtools/toolchain.py)
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

steps=("$@")
[ "${#steps[@]}" -gt 0 ] || steps=(engine base-images wheelhouse compose)
for name in "${steps[@]}"; do
  case "$name" in
    engine) step engine "$ENGINE_DIR/engine.sh" start ;;
    base-images) step base-images "$ENGINE_DIR/base-images.sh" ;;
    wheelhouse) step wheelhouse "$ENGINE_DIR/wheelhouse.sh" ;;
    compose) step compose "$ENGINE_DIR/get-compose.sh" >/dev/null ;;
    *) die "unknown step $name (engine, base-images, wheelhouse, compose)" ;;
  esac
done
log "ready (${steps[*]}): DOCKER_HOST=$DOCKER_HOST"
