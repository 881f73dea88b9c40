#!/usr/bin/env bash
# Build stand-ins for the two base images the Dockerfiles and compose.yaml name, locally and
# offline, and import them into the engine at $DOCKER_HOST (conveyor's own unless
# CONVEYOR_DOCKER_HOST names another) under tags of their own, so an official tag never names one:
#
#   conveyor-local/python:3.12-slim-bookworm   Debian 12 minbase (debootstrap from this machine's
#                                              apt mirror) + the host's CPython 3.12 build in /usr/local
#   conveyor-local/redis:7                     the same Debian 12 + Debian's redis-server 7.0 package
#
# The builds pick them with --build-arg PYTHON_IMAGE=... (compose: CONVEYOR_PYTHON_IMAGE and
# CONVEYOR_REDIS_IMAGE); devtools/toolchain.py decides between them and the official images.
#
# This exists only because no container registry is reachable here; with a registry the
# official images are pulled and this script is not needed. Both root filesystems are cached as
# tarballs under .tools/engine/cache keyed by a hash of this script and its inputs, so a warm run
# only re-imports (or finds the images already present and does nothing).
#
# Environment: CONVEYOR_PYTHON_PREFIX (default: pyenv's 3.12 build), CONVEYOR_DEBIAN_MIRROR.
# shellcheck source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

PYTHON_TAG="conveyor-local/python:3.12-slim-bookworm"
REDIS_TAG="conveyor-local/redis:7"
SUITE="bookworm"
LABEL_KEY="dev.conveyor.rootfs-key"

# The shared libraries the stdlib's extension modules link to (ssl, ctypes, sqlite3, uuid, lzma,
# bz2, zlib, readline, curses, dbm, nis), plus what the official slim image carries.
BASE_PACKAGES="ca-certificates,netbase,tzdata,libssl3,libffi8,libsqlite3-0,libexpat1,libuuid1,libreadline8,libncursesw6,libbz2-1.0,liblzma5,zlib1g,libnsl2,libtirpc3,libgdbm6,libdb5.3"

find_python_prefix() {
  if [ -n "${CONVEYOR_PYTHON_PREFIX:-}" ]; then
    printf '%s\n' "$CONVEYOR_PYTHON_PREFIX"
    return
  fi
  local candidate
  for candidate in /root/.pyenv/versions/3.12.*; do
    [ -x "$candidate/bin/python3.12" ] && printf '%s\n' "$candidate"
  done | sort -V | tail -n1
}

cache_key() {
  # Anything that changes the root filesystems changes the key (comment lines do not).
  {
    grep -v '^[[:space:]]*#' "$ENGINE_DIR/base-images.sh"
    printf '%s\n' "$MIRROR" "$PYTHON_PREFIX"
    "$PYTHON_PREFIX/bin/python3.12" -VV
  } | sha256sum | cut -c1-16
}

image_key() {
  docker image inspect --format "{{ index .Config.Labels \"$LABEL_KEY\" }}" "$1" 2>/dev/null || true
}

build_rootfs() {
  local work="$1" python_tar="$2" redis_tar="$3"
  local rootfs="$work/rootfs"
  apt_install debootstrap

  log "debootstrap $SUITE minbase from $MIRROR"
  debootstrap --variant=minbase --include="$BASE_PACKAGES" "$SUITE" "$rootfs" "$MIRROR" \
    >"$work/debootstrap.log" 2>&1 || { tail -n 30 "$work/debootstrap.log" >&2; die "debootstrap failed"; }

  enter_chroot "$rootfs"

  log "copying CPython from $PYTHON_PREFIX to /usr/local"
  # The stdlib and the interpreter; not the test suite, IDLE, tkinter, the static library, the
  # host's site-packages or pyenv's console scripts (their shebangs name the host path).
  tar -C "$PYTHON_PREFIX" -cf - \
    --exclude='lib/python3.12/test' --exclude='lib/python3.12/idlelib' \
    --exclude='lib/python3.12/tkinter' --exclude='lib/python3.12/turtledemo' \
    --exclude='lib/python3.12/lib-dynload/_tkinter*' --exclude='lib/python3.12/lib-dynload/*_test*' \
    --exclude='lib/python3.12/site-packages/*' --exclude='*.a' --exclude='share' \
    --exclude='bin/pip*' --exclude='bin/idle*' --exclude='bin/2to3*' --exclude='bin/pydoc*' \
    --exclude='*/tests' --exclude='*/idle_test' \
    bin include lib | tar -C "$rootfs/usr/local" -xf -
  # The binary's RUNPATH names the host prefix; ld.so.cache finds libpython in /usr/local/lib.
  chroot "$rootfs" /sbin/ldconfig
  ln -sf python3.12 "$rootfs/usr/local/bin/python3"
  ln -sf python3.12 "$rootfs/usr/local/bin/python"
  # pip from the interpreter's own bundled wheel (offline), with /usr/local shebangs.
  chroot "$rootfs" /usr/bin/env -i PATH=/usr/local/bin:/usr/bin:/bin \
    /usr/local/bin/python3.12 -m ensurepip --default-pip >"$work/ensurepip.log" 2>&1 ||
    { cat "$work/ensurepip.log" >&2; die "ensurepip failed"; }
  chroot "$rootfs" /usr/local/bin/python3 -c '
import bz2, ctypes, decimal, hashlib, lzma, sqlite3, ssl, sys, uuid, zlib
assert sys.prefix == "/usr/local", sys.prefix
print(sys.version.split()[0], ssl.OPENSSL_VERSION)
' >&2
  chroot "$rootfs" /usr/local/bin/pip --version >&2

  leave_chroot "$rootfs"
  log "packing $python_tar"
  tar --numeric-owner --one-file-system -C "$rootfs" -cf "$python_tar.tmp" . && mv "$python_tar.tmp" "$python_tar"

  # Redis: the same tree without Python, plus Debian's redis-server.
  log "installing redis-server into the rootfs"
  rm -rf "$rootfs/usr/local/bin/"* "$rootfs/usr/local/lib/"* "$rootfs/usr/local/include/"*
  enter_chroot "$rootfs"
  chroot "$rootfs" /sbin/ldconfig
  chroot "$rootfs" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin DEBIAN_FRONTEND=noninteractive \
    sh -c 'apt-get update -qq && apt-get install -y -qq --no-install-recommends redis-server' \
    >"$work/redis.log" 2>&1 ||
    { tail -n 30 "$work/redis.log" >&2; die "installing redis-server failed"; }
  mkdir -p "$rootfs/data"
  chroot "$rootfs" chown redis:redis /data
  # Like the official image: an entrypoint that runs redis-server in the foreground with
  # protected mode off (the official build compiles it off; the server is only reachable on
  # the compose network), so `command: redis-server --appendonly yes ...` means the same on both.
  cat >"$rootfs/usr/local/bin/docker-entrypoint.sh" <<'EOF'
#!/bin/sh
set -e
if [ "$1" = "redis-server" ]; then
  shift
  set -- redis-server --protected-mode no "$@"
fi
exec "$@"
EOF
  chmod 755 "$rootfs/usr/local/bin/docker-entrypoint.sh"
  leave_chroot "$rootfs"
  log "packing $redis_tar"
  tar --numeric-owner --one-file-system -C "$rootfs" -cf "$redis_tar.tmp" . && mv "$redis_tar.tmp" "$redis_tar"
}

# enter_chroot ROOTFS: /proc, the host's resolver and a policy-rc.d (no service may start).
enter_chroot() {
  local rootfs="$1"
  cp /etc/resolv.conf "$rootfs/etc/resolv.conf"
  printf '#!/bin/sh\nexit 101\n' >"$rootfs/usr/sbin/policy-rc.d"
  chmod 755 "$rootfs/usr/sbin/policy-rc.d"
  mount -t proc proc "$rootfs/proc"
}

# leave_chroot ROOTFS: undo enter_chroot and drop what an image does not need.
leave_chroot() {
  local rootfs="$1"
  umount "$rootfs/proc"
  rm -f "$rootfs/usr/sbin/policy-rc.d"
  rm -rf "$rootfs/var/lib/apt/lists/"* "$rootfs/var/cache/apt/"*.bin "$rootfs/var/cache/apt/archives/"*.deb \
    "$rootfs/usr/share/doc/"* "$rootfs/usr/share/man/"* "$rootfs/usr/share/info/"* \
    "$rootfs/usr/share/locale/"* "$rootfs/var/log/"*.log "$rootfs/tmp/"*
  # The engine provides resolv.conf at run time.
  : >"$rootfs/etc/resolv.conf"
}

# release_work: unmount the chroot's /proc (never delete through a mount) and remove the tree.
release_work() {
  [ -n "${WORK:-}" ] || return 0
  if mountpoint -q "$WORK/rootfs/proc" 2>/dev/null; then
    umount "$WORK/rootfs/proc"
  fi
  mountpoint -q "$WORK/rootfs/proc" 2>/dev/null && die "could not unmount $WORK/rootfs/proc"
  rm -rf "$WORK"
}

import_image() {
  local tarball="$1" tag="$2"
  shift 2
  log "docker import $tag"
  docker import --change "LABEL $LABEL_KEY=$KEY" "$@" "$tarball" "$tag" >/dev/null
}

main() {
  require_root
  docker version --format '{{.Server.Version}}' >/dev/null 2>&1 ||
    die "no Docker engine answers at $DOCKER_HOST (deploy/engine/engine.sh start)"
  PYTHON_PREFIX="$(find_python_prefix)"
  [ -n "$PYTHON_PREFIX" ] || die "no CPython 3.12 build found (set CONVEYOR_PYTHON_PREFIX)"
  MIRROR="$(debian_mirror)"
  KEY="$(cache_key)"
  local python_version
  python_version="$("$PYTHON_PREFIX/bin/python3.12" -c 'import platform; print(platform.python_version())')"

  if [ "$(image_key "$PYTHON_TAG")" = "$KEY" ] && [ "$(image_key "$REDIS_TAG")" = "$KEY" ]; then
    log "$PYTHON_TAG and $REDIS_TAG are current (key $KEY)"
    return 0
  fi

  local cache="$TOOLS_DIR/engine/cache"
  local python_tar="$cache/python-3.12-slim-bookworm-$KEY.tar"
  local redis_tar="$cache/redis-7-$KEY.tar"
  mkdir -p "$cache"
  if [ ! -f "$python_tar" ] || [ ! -f "$redis_tar" ]; then
    WORK="$TOOLS_DIR/engine/work"
    release_work
    rm -f "$cache/"*.tar
    mkdir -p "$WORK"
    trap release_work EXIT
    build_rootfs "$WORK" "$python_tar" "$redis_tar"
    release_work
    trap - EXIT
  else
    log "using cached root filesystems (key $KEY)"
  fi

  import_image "$python_tar" "$PYTHON_TAG" \
    --change "ENV PATH=/usr/local/bin:/usr/local/sbin:/usr/sbin:/usr/bin:/sbin:/bin" \
    --change "ENV LANG=C.UTF-8" \
    --change "ENV PYTHON_VERSION=$python_version" \
    --change 'CMD ["python3"]'
  import_image "$redis_tar" "$REDIS_TAG" \
    --change "ENV PATH=/usr/local/bin:/usr/local/sbin:/usr/sbin:/usr/bin:/sbin:/bin" \
    --change "WORKDIR /data" \
    --change "USER redis" \
    --change "EXPOSE 6379" \
    --change 'ENTRYPOINT ["docker-entrypoint.sh"]' \
    --change 'CMD ["redis-server"]'
  # The images these tags named before are not needed any more; pruning is for our own engine
  # only, never for one that holds someone else's images.
  if [ "$DOCKER_HOST" = "$ENGINE_HOST" ]; then docker image prune --force >/dev/null; fi
  docker image ls --format '{{.Repository}}:{{.Tag}} {{.Size}}' "$PYTHON_TAG" >&2
  docker image ls --format '{{.Repository}}:{{.Tag}} {{.Size}}' "$REDIS_TAG" >&2
}

main "$@"
