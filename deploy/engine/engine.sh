#!/usr/bin/env bash
# Start, stop or inspect conveyor's private Docker engine.
#
#   deploy/engine/engine.sh start    install docker.io if needed, start dockerd, wait until it answers
#   deploy/engine/engine.sh stop     stop the dockerd this script started (by its PID) and its bridge
#   deploy/engine/engine.sh status   exit 0 when the engine answers
#   deploy/engine/engine.sh env      print `export DOCKER_HOST=...` for a shell
#
# The engine has its own data-root, exec-root, socket, pid file and bridge, so it never touches
# another engine on the host. It runs without iptables rules and without IP forwarding: containers
# reach each other on compose networks and the host reaches published ports through docker-proxy,
# but containers get no route out. Images are built offline (see base-images.sh, wheelhouse.sh).
# shellcheck source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
# This script only ever talks to the engine it starts.
export DOCKER_HOST="$ENGINE_HOST"

start_engine() {
  require_root
  if engine_running; then
    log "engine already running (pid $(cat "$ENGINE_PIDFILE"), $DOCKER_HOST)"
    return 0
  fi
  command -v dockerd >/dev/null 2>&1 || apt_install docker.io
  command -v docker >/dev/null 2>&1 || die "no docker client on PATH"
  mkdir -p "$ENGINE_DATA_ROOT" "$ENGINE_EXEC_ROOT" "$(dirname "$ENGINE_LOG")"
  rm -f "$ENGINE_PIDFILE" "$ENGINE_SOCKET"

  if ! ip link show "$ENGINE_BRIDGE" >/dev/null 2>&1; then
    ip link add name "$ENGINE_BRIDGE" type bridge
    ip addr add "$ENGINE_BRIDGE_CIDR" dev "$ENGINE_BRIDGE"
  fi
  ip link set "$ENGINE_BRIDGE" up

  log "starting dockerd ($DOCKER_HOST, data-root $ENGINE_DATA_ROOT, log $ENGINE_LOG)"
  # setsid: the engine outlives this script and the pytest process that called it; it is
  # stopped by `engine.sh stop`, which reads the pid file. 9>&-: it must not inherit
  # provision.sh's lock, or the lock is held for as long as the engine runs and the next
  # provision.sh (CONVEYOR_ENGINE_KEEP=1) waits for it in vain.
  setsid dockerd \
    --data-root "$ENGINE_DATA_ROOT" \
    --exec-root "$ENGINE_EXEC_ROOT" \
    --host "$DOCKER_HOST" \
    --pidfile "$ENGINE_PIDFILE" \
    --bridge "$ENGINE_BRIDGE" \
    --default-address-pool "base=$ENGINE_ADDRESS_POOL,size=24" \
    --iptables=false \
    --ip-forward=false \
    --ip-masq=false \
    --storage-driver overlay2 \
    --log-driver json-file \
    --log-opt max-size=10m \
    >"$ENGINE_LOG" 2>&1 </dev/null 9>&- &

  local deadline=$((SECONDS + 60))
  until docker version --format '{{.Server.Version}}' >/dev/null 2>&1; do
    if [ "$SECONDS" -ge "$deadline" ]; then
      tail -n 30 "$ENGINE_LOG" >&2 || true
      die "dockerd did not answer on $DOCKER_HOST within 60s (log above)"
    fi
    if [ -f "$ENGINE_PIDFILE" ] && ! kill -0 "$(cat "$ENGINE_PIDFILE")" 2>/dev/null; then
      tail -n 30 "$ENGINE_LOG" >&2 || true
      die "dockerd exited during start (log above)"
    fi
    sleep 0.5
  done
  log "engine up: server $(docker version --format '{{.Server.Version}}'), pid $(cat "$ENGINE_PIDFILE")"
}

stop_engine() {
  if [ -f "$ENGINE_PIDFILE" ]; then
    local pid
    pid="$(cat "$ENGINE_PIDFILE")"
    if kill -0 "$pid" 2>/dev/null; then
      log "stopping dockerd pid $pid"
      kill -TERM "$pid"
      local deadline=$((SECONDS + 45))
      while kill -0 "$pid" 2>/dev/null; do
        if [ "$SECONDS" -ge "$deadline" ]; then
          log "dockerd pid $pid ignored SIGTERM for 45s; sending SIGKILL"
          kill -KILL "$pid" 2>/dev/null || true
          break
        fi
        sleep 0.5
      done
    fi
    rm -f "$ENGINE_PIDFILE"
  fi
  if ip link show "$ENGINE_BRIDGE" >/dev/null 2>&1; then
    ip link delete "$ENGINE_BRIDGE" || true
  fi
  log "engine stopped"
}

case "${1:-}" in
  start) start_engine ;;
  stop) stop_engine ;;
  status) engine_running ;;
  env) printf 'export DOCKER_HOST=%q\n' "$DOCKER_HOST" ;;
  *) die "usage: $0 start|stop|status|env" ;;
esac
