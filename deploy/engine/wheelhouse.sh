#!/usr/bin/env bash
# Fill .tools/wheels with every wheel the images install, so `docker build` needs no index:
#
#   deploy/engine/wheelhouse.sh          # then: docker build --build-arg WHEELHOUSE=.tools/wheels ...
#
# Downloads on the host (PyPI through this machine's pip configuration), for CPython 3.12 on
# manylinux x86_64, whatever the host interpreter is: the project's dependencies, its hiredis
# and worker extras, its build backend (pyproject's build-system.requires) and gunicorn at the version
# Dockerfile.web pins. Idempotent: a stamp of the requirement list skips the download when
# nothing changed.
# shellcheck source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

WHEELS_DIR="$TOOLS_DIR/wheels"
PYTHON="${PYTHON:-$(default_python)}"

requirements() {
  local gunicorn
  gunicorn="$(sed -n 's/^ARG GUNICORN_VERSION=\([0-9.]*\)$/\1/p' "$REPO_ROOT/Dockerfile.web")"
  [ -n "$gunicorn" ] || die "no 'ARG GUNICORN_VERSION=' in Dockerfile.web"
  "$PYTHON" - "$REPO_ROOT/pyproject.toml" <<'EOF'
import sys
import tomllib

with open(sys.argv[1], "rb") as f:
    data = tomllib.load(f)
project = data["project"]
for requirement in [
    *project["dependencies"],
    *project["optional-dependencies"].get("hiredis", []),
    *project["optional-dependencies"].get("worker", []),
    *data["build-system"]["requires"],
    "wheel",
]:
    print(requirement)
EOF
  printf 'gunicorn==%s\n' "$gunicorn"
}

main() {
  local reqs stamp
  reqs="$(requirements)"
  stamp="$(printf '%s\n' "$reqs" | sha256sum | cut -c1-16)"
  if [ -f "$WHEELS_DIR/.stamp" ] && [ "$(cat "$WHEELS_DIR/.stamp")" = "$stamp" ]; then
    log "wheelhouse $WHEELS_DIR is current ($(find "$WHEELS_DIR" -name '*.whl' | wc -l) wheels)"
    return 0
  fi
  log "downloading wheels into $WHEELS_DIR: $(tr '\n' ' ' <<<"$reqs")"
  rm -rf "$WHEELS_DIR"
  mkdir -p "$WHEELS_DIR"
  local -a args
  mapfile -t args <<<"$reqs"
  "$PYTHON" -m pip download --quiet --disable-pip-version-check --dest "$WHEELS_DIR" \
    --only-binary=:all: --implementation cp --python-version 3.12 --abi cp312 --abi abi3 --abi none \
    --platform manylinux_2_36_x86_64 --platform manylinux2014_x86_64 --platform any \
    "${args[@]}"
  printf '%s\n' "$stamp" >"$WHEELS_DIR/.stamp"
  log "wheelhouse ready: $(find "$WHEELS_DIR" -name '*.whl' | wc -l) wheels"
}

main "$@"
