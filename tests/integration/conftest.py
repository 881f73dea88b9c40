"""Fixtures for tests against a real Redis: backends built from OPTIONS, signal recorders, dead ports."""

from __future__ import annotations

import dataclasses
import secrets
import socket
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from conveyor import RedisBackend
from conveyor.store import Store
from conveyor_worker.loop import Worker
from conveyor_worker.metrics import Metrics
from conveyor_worker.settings import WorkerSettings
from django.tasks.base import TaskResult
from django.tasks.signals import task_enqueued
from django.test import override_settings

from devtools.redis_server import free_port
from tests.worker.conftest import InProcessWorker

BackendFactory = Callable[..., RedisBackend]


@pytest.fixture
def make_backend(redis_url: str, prefix: str) -> Iterator[BackendFactory]:
    """Build RedisBackends on the session's Redis under the test's prefix; close them afterwards."""
    built: list[RedisBackend] = []

    def make(*, alias: str = "default", queues: tuple[str, ...] = (), **options: Any) -> RedisBackend:
        merged = {"URL": redis_url, "KEY_PREFIX": prefix, "ALLOWED_TASK_MODULES": ["tests"], **options}
        built.append(RedisBackend(alias, {"QUEUES": list(queues), "OPTIONS": merged}))
        return built[-1]

    yield make
    for backend in built:
        backend.store.close()


@pytest.fixture
def configure_tasks(redis_url: str, prefix: str) -> Callable[..., override_settings]:
    """Return a factory of override_settings(TASKS=...) for conveyor aliases under the test's prefix."""

    def configure(
        *, aliases: tuple[str, ...] = ("default",), queues: tuple[str, ...] = (), **options: Any
    ) -> override_settings:
        entry = {
            "BACKEND": "conveyor.RedisBackend",
            "QUEUES": list(queues),
            "OPTIONS": {"URL": redis_url, "KEY_PREFIX": prefix, "ALLOWED_TASK_MODULES": ["tests"], **options},
        }
        return override_settings(TASKS={alias: entry for alias in aliases})

    return configure


@pytest.fixture
def enqueued() -> Iterator[list[TaskResult]]:
    """Record every task_enqueued signal sent while the test runs."""
    received: list[TaskResult] = []

    def receiver(sender: object, task_result: TaskResult, **kwargs: object) -> None:
        received.append(task_result)

    task_enqueued.connect(receiver, dispatch_uid="conveyor-tests-recorder")
    yield received
    task_enqueued.disconnect(dispatch_uid="conveyor-tests-recorder")


@pytest.fixture
def stored_keys() -> Callable[[RedisBackend], list[str]]:
    """Return a function listing every key under a backend's prefix, sorted."""

    def list_keys(backend: RedisBackend) -> list[str]:
        pattern = backend.keys.tag + "*"
        found = backend.store.call(lambda client: list(client.scan_iter(match=pattern)))
        return sorted(key.decode() for key in found)

    return list_keys


@pytest.fixture
def closed_port() -> int:
    """Return a loopback port nothing listens on (connections are refused)."""
    return free_port()


@pytest.fixture
def silent_server() -> Iterator[int]:
    """Listen on a loopback port, accept TCP connections (via the backlog) and never answer."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(16)
        yield int(sock.getsockname()[1])


def start_worker(backend: RedisBackend, **overrides: Any) -> InProcessWorker:
    """Run a worker in this process on the backend's settings, as conveyor-worker would; stop() it."""
    values: dict[str, Any] = {
        "worker_id": "w-" + secrets.token_hex(4),
        "concurrency": 1,
        "lease": 10.0,
        "shutdown_timeout": 5.0,
        "health_port": 0,
        **overrides,
    }
    settings = WorkerSettings(**values)
    settings = dataclasses.replace(settings, block_seconds=min(settings.block_seconds, settings.lease / 4))
    store = Store(backend.settings, backend.keys, client_name=f"conveyor-worker:{settings.worker_id}")
    metrics = Metrics(settings.concurrency)
    worker = Worker(settings, backend, store, ("tests",), metrics)
    return InProcessWorker(worker=worker, store=store, metrics=metrics).start()
