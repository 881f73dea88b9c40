"""The health port under abuse: half-sent requests, too many callers, and a port already taken."""

from __future__ import annotations

import contextlib
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator

import pytest
from conveyor_worker.metrics import Metrics
from conveyor_worker.probes import MAX_HANDLERS, SLOT_WAIT, Probes

from .conftest import SpawnWorker, real_backend, wait_until

HALF_SENT = 300
LOOSE_THREADS = 4  # handler threads that gave their slot back and are about to end


def probe_threads() -> int:
    """Count the probe server's threads (its accept loop and request handlers) in this process."""
    return sum(
        1 for t in threading.enumerate() if t.name == "conveyor-probes" or "process_request_thread" in t.name
    )


def livez(port: int, timeout: float = 2.0) -> tuple[int, str]:
    """GET /livez; return (status, body)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/livez", timeout=timeout) as response:
        return response.status, response.read().decode()


def closed_by_peer(sock: socket.socket) -> bool:
    """Return True when the server has closed (or reset) this connection."""
    sock.setblocking(False)
    try:
        return sock.recv(1) == b""
    except BlockingIOError:
        return False
    except OSError:
        return True
    finally:
        sock.setblocking(True)


@pytest.fixture
def serve(backend: object) -> Iterator[Callable[..., int]]:
    """Start in-process probes on a free loopback port; return the port."""
    started: list[Probes] = []

    def start(alive: Callable[[], bool] = lambda: True, **limits: float) -> int:
        probes = Probes(
            store=real_backend().store,
            metrics=Metrics(1),
            queues=lambda: ["default"],
            alive=alive,
            ready=lambda: True,
            **limits,  # type: ignore[arg-type]
        )
        started.append(probes)
        return probes.start("127.0.0.1", 0)

    yield start
    for probes in started:
        probes.stop()


def test_half_sent_requests_hold_a_bounded_number_of_threads_and_livez_still_answers(
    serve: Callable[..., int],
) -> None:
    """300 connections that never finish their request use at most MAX_HANDLERS threads, briefly."""
    before = probe_threads()
    port = serve(request_timeout=1.0)
    serving = probe_threads()
    held: list[socket.socket] = []
    peak = serving
    try:
        # Given 300 clients that send half a request and then say nothing (a slow-loris)
        for _ in range(HALF_SENT):
            sock = socket.create_connection(("127.0.0.1", port), timeout=5)
            sock.sendall(b"GET /livez HTTP/1.1\r\nHost: worker\r\n")
            held.append(sock)
            peak = max(peak, probe_threads())
        # Then the server never ran more than MAX_HANDLERS handler threads
        assert peak - serving <= MAX_HANDLERS + LOOSE_THREADS, (peak, serving)
        # And /livez still answers at once: the half-sent connection that waited longest gave way
        started = time.monotonic()
        assert livez(port) == (200, "ok\n")
        assert time.monotonic() - started < 1.5
        assert probe_threads() - serving <= MAX_HANDLERS + LOOSE_THREADS
        # And all but at most MAX_HANDLERS of the half-sent connections were cut already
        assert sum(not closed_by_peer(s) for s in held) <= MAX_HANDLERS
        # And the rest are closed by the per-request socket timeout, their threads gone
        wait_until(lambda: all(closed_by_peer(s) for s in held), timeout=10, what="the timeouts")
        wait_until(lambda: probe_threads() <= serving, timeout=10, what="the handler threads to end")
        assert livez(port) == (200, "ok\n")
    finally:
        for sock in held:
            sock.close()
    assert serving == before + 1  # the server's own accept thread


def test_when_every_slot_is_busy_answering_new_connections_are_closed_at_once(
    serve: Callable[..., int],
) -> None:
    """Requests already being answered are never cut; the caller beyond the cap is turned away."""
    gate = threading.Event()
    inside = threading.Semaphore(0)

    def slow_alive() -> bool:
        inside.release()
        return gate.wait(30)

    port = serve(alive=slow_alive)
    answers: list[tuple[int, str]] = []
    callers = [
        threading.Thread(target=lambda: answers.append(livez(port, timeout=30)), daemon=True)
        for _ in range(MAX_HANDLERS)
    ]
    try:
        # Given MAX_HANDLERS requests whose answers take a while (all slots busy answering)
        for caller in callers:
            caller.start()
        for _ in range(MAX_HANDLERS):
            assert inside.acquire(timeout=10), "a handler did not start"
        # When one more client calls
        started = time.monotonic()
        with pytest.raises((urllib.error.URLError, ConnectionError, OSError)):
            livez(port, timeout=10)
        # Then it is closed soon, not queued behind them
        assert time.monotonic() - started < SLOT_WAIT + 2.0
    finally:
        gate.set()
    for caller in callers:
        caller.join(10)
    # And the requests being answered were not cut
    assert answers == [(200, "ok\n")] * MAX_HANDLERS
    assert livez(port) == (200, "ok\n")


@pytest.mark.subprocess
def test_a_second_worker_on_a_taken_health_port_exits_2_with_one_line(
    backend: object, spawn_worker: SpawnWorker, run_cli: Callable[..., subprocess.CompletedProcess[str]]
) -> None:
    """Two workers on one host: the second says which setting to change instead of a traceback."""
    # Given a worker serving its probes
    first = spawn_worker()
    first.wait_http("/livez", 200)
    # When a second one starts on the same host and port
    second = run_cli("--health-port", str(first.port))
    # Then it exits with status 2 and one line naming the flag and the variable
    assert second.returncode == 2, second.stderr
    [line] = second.stderr.strip().splitlines()
    assert "Traceback" not in second.stderr
    assert str(first.port) in line
    assert "--health-port" in line and "CONVEYOR_HEALTH_PORT" in line
    assert "already in use" in line
    # And the first worker is unharmed
    assert first.http("/livez") == (200, "ok\n")
    with contextlib.suppress(ProcessLookupError):
        first.kill()
