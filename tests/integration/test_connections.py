"""Connection forms: rediss:// (TLS) URLs and unix:// sockets, end to end where possible."""

from __future__ import annotations

import asyncio
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from conveyor.exceptions import RedisUnavailable

from devtools.redis_server import find_server_binary, free_port
from tests import tasks
from tests.conftest import SAVE_POINTS

from .conftest import BackendFactory


@pytest.fixture
def unix_socket_redis() -> Iterator[Path]:
    """Start a redis-server that listens only on a unix socket in a temporary directory."""
    binary = find_server_binary()
    assert binary, "a redis-server or valkey-server binary is needed"
    workdir = Path(tempfile.mkdtemp(prefix="conveyor-unix-"))
    path = workdir / "redis.sock"
    args = [binary, "--port", "0", "--unixsocket", str(path), "--unixsocketperm", "700"]
    args += ["--save", SAVE_POINTS, "--appendonly", "no", "--dir", str(workdir)]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while True:
            assert proc.poll() is None, f"{binary} exited with {proc.returncode}"
            try:
                with socket.socket(socket.AF_UNIX) as sock:
                    sock.connect(str(path))
                    sock.sendall(b"PING\r\n")
                    if sock.recv(16).startswith(b"+PONG"):
                        break
            except OSError:
                assert time.monotonic() < deadline, "the unix-socket server never answered"
                time.sleep(0.02)
        yield path
    finally:
        proc.kill()
        proc.wait(timeout=10)


def test_enqueue_through_a_unix_socket(make_backend: BackendFactory, unix_socket_redis: Path) -> None:
    """Enqueue and read back over unix://, with the database chosen in the query string."""
    backend = make_backend(URL=f"unix://{unix_socket_redis}?db=2")

    result = backend.enqueue(tasks.noop_task, (1,), {"via": "unix"})

    assert backend.problems == []
    assert backend.check() == []
    assert backend.get_result(result.id) == result
    # The record really is in database 2 of that server.
    with redis.Redis(unix_socket_path=str(unix_socket_redis), db=2) as direct:
        assert direct.exists(backend.keys.task(result.id)) == 1
    with redis.Redis(unix_socket_path=str(unix_socket_redis), db=0) as direct:
        assert direct.exists(backend.keys.task(result.id)) == 0


def test_missing_unix_socket_is_unavailable(make_backend: BackendFactory, tmp_path: Path) -> None:
    """Raise RedisUnavailable naming the socket path when it does not exist."""
    path = tmp_path / "absent.sock"
    backend = make_backend(URL=f"unix://{path}", CONNECT_TIMEOUT=0.5, SOCKET_TIMEOUT=0.5)

    with pytest.raises(RedisUnavailable, match=str(path)):
        backend.enqueue(tasks.noop_task, (), {})
    [error] = backend.check()
    assert error.id == "conveyor.E002"
    assert str(path) in error.msg


def test_rediss_url_builds_a_tls_pool_without_connecting(make_backend: BackendFactory) -> None:
    """Parse a rediss:// URL into a TLS connection pool with the SSL options, lazily."""
    backend = make_backend(
        URL="rediss://user:pw@cache.example.internal:6380/1",
        SSL_CERT_REQS="optional",
        SSL_CHECK_HOSTNAME=False,
    )

    pool = backend.store.client.connection_pool

    assert backend.problems == []
    assert backend.settings.uses_tls
    assert pool.connection_class is redis.SSLConnection
    kwargs = pool.connection_kwargs
    assert (kwargs["host"], kwargs["port"], kwargs["db"]) == ("cache.example.internal", 6380, 1)
    assert kwargs["ssl_check_hostname"] is False
    assert str(kwargs["ssl_cert_reqs"]).endswith("optional")


def test_ssl_option_with_host_settings_builds_a_tls_pool(make_backend: BackendFactory) -> None:
    """Use TLS for HOST/PORT settings when SSL is True."""
    backend = make_backend(URL=None, HOST="cache.example.internal", PORT=6380, SSL=True)

    assert backend.store.client.connection_pool.connection_class is redis.SSLConnection
    assert backend.settings.describe_target().startswith("rediss://cache.example.internal:6380/0")


def test_tls_to_a_plain_server_is_unavailable(make_backend: BackendFactory, redis_url: str) -> None:
    """Raise RedisUnavailable, within the timeouts, when the server does not speak TLS."""
    backend = make_backend(
        URL=redis_url.replace("redis://", "rediss://", 1),
        SSL_CERT_REQS="none",
        CONNECT_TIMEOUT=0.5,
        SOCKET_TIMEOUT=0.5,
    )

    start = time.monotonic()
    with pytest.raises(RedisUnavailable):
        backend.enqueue(tasks.noop_task, (), {})
    assert time.monotonic() - start < 3.0


@pytest.fixture(scope="module")
def tls_redis() -> Iterator[tuple[int, Path]]:
    """Start a TLS-only redis-server with a throwaway self-signed certificate; yield (port, CA file)."""
    binary = find_server_binary()
    openssl = shutil.which("openssl")
    if not binary or not openssl:
        pytest.skip("needs a server binary and the openssl command")
    workdir = Path(tempfile.mkdtemp(prefix="conveyor-tls-"))
    cert, key = workdir / "cert.pem", workdir / "key.pem"
    subprocess.run(
        [
            *(
                openssl,
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-days",
                "1",
                "-subj",
                "/CN=localhost",
            ),
            *("-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)),
        ],
        check=True,
        capture_output=True,
    )
    port = free_port()
    args = [binary, "--port", "0", "--tls-port", str(port), "--bind", "127.0.0.1"]
    args += ["--tls-cert-file", str(cert), "--tls-key-file", str(key), "--tls-ca-cert-file", str(cert)]
    args += ["--tls-auth-clients", "no", "--save", SAVE_POINTS, "--appendonly", "no", "--dir", str(workdir)]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while True:
            if proc.poll() is not None:
                pytest.skip(f"{binary} was built without TLS")
            try:
                with redis.Redis(host="127.0.0.1", port=port, ssl=True, ssl_ca_certs=str(cert)) as probe:
                    probe.ping()
                break
            except redis.ConnectionError:
                assert time.monotonic() < deadline, "the TLS server never answered"
                time.sleep(0.05)
        yield port, cert
    finally:
        proc.kill()
        proc.wait(timeout=10)


def test_enqueue_over_tls_with_a_rediss_url(
    make_backend: BackendFactory, tls_redis: tuple[int, Path]
) -> None:
    """Enqueue and read back through rediss:// with the server's CA, hostname checked."""
    port, ca = tls_redis
    backend = make_backend(URL=f"rediss://localhost:{port}/0", SSL_CA_CERTS=str(ca))

    result = backend.enqueue(tasks.noop_task, (1,), {})

    assert backend.check() == []
    assert backend.get_result(result.id) == result


def test_enqueue_over_tls_with_ssl_and_host_settings(
    make_backend: BackendFactory, tls_redis: tuple[int, Path]
) -> None:
    """Enqueue through SSL=True with HOST/PORT, on the sync and the async path."""
    port, ca = tls_redis
    backend = make_backend(URL=None, HOST="127.0.0.1", PORT=port, SSL=True, SSL_CA_CERTS=str(ca))

    result = backend.enqueue(tasks.noop_task, (), {})
    async_result = asyncio.run(backend.aenqueue(tasks.noop_task, (), {}))

    assert backend.check() == []
    assert backend.get_result(result.id) == result
    assert asyncio.run(backend.aget_result(async_result.id)) == async_result


def test_tls_certificate_is_verified_by_default(
    make_backend: BackendFactory, tls_redis: tuple[int, Path]
) -> None:
    """Refuse a certificate no trusted CA signed unless SSL_CERT_REQS says otherwise."""
    port, _ = tls_redis
    strict = make_backend(URL=f"rediss://localhost:{port}/0", CONNECT_TIMEOUT=0.5, SOCKET_TIMEOUT=0.5)
    lax = make_backend(URL=f"rediss://localhost:{port}/0", SSL_CERT_REQS="none", SSL_CHECK_HOSTNAME=False)

    with pytest.raises(RedisUnavailable, match=r"(?i)certificate"):
        strict.enqueue(tasks.noop_task, (), {})
    assert [e.id for e in strict.check()] == ["conveyor.E002"]
    assert lax.get_result(lax.enqueue(tasks.noop_task, (), {}).id).status == "READY"
