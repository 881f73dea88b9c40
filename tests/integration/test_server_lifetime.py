"""The servers tests start end by themselves after their lifetime, even if no test stops them."""

from __future__ import annotations

import time

import pytest

from devtools.redis_server import RedisProcess, SentinelProcess, find_server_binary, free_port


def gone_within(process: RedisProcess | SentinelProcess, seconds: float) -> bool:
    """Tell whether the process exits within seconds (it is reaped here, so its pid is not reused)."""
    assert process.proc is not None
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.proc.poll() is not None:
            return True
        time.sleep(0.1)
    return False


@pytest.mark.parametrize("cluster", [False, True], ids=["plain", "cluster-node"])
def test_a_server_left_running_ends_after_its_lifetime(cluster: bool) -> None:
    """redis-server and valkey-server handle SIGALRM themselves (they log it and go on): still bounded."""
    binary = find_server_binary()
    assert binary
    # The bus port defaults to port + 10000, past 65535 for a high port: give one.
    extra = ("--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf") if cluster else ()
    extra += ("--cluster-port", str(free_port())) if cluster else ()
    server = RedisProcess(binary, lifetime=1, extra_args=extra)
    server.start()
    try:
        assert gone_within(server, 30)
    finally:
        server.stop()


def test_a_sentinel_left_running_ends_after_its_lifetime() -> None:
    binary = find_server_binary()
    assert binary
    primary = RedisProcess(binary, lifetime=60)
    primary.start()
    sentinel = SentinelProcess(binary, primary.port, lifetime=1)
    sentinel.start()
    try:
        assert gone_within(sentinel, 30)
    finally:
        sentinel.stop()
        primary.stop()
