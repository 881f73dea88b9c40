"""The worker registry: a live worker is listed as it is, leaves on a clean stop, drops out when killed."""

from __future__ import annotations

import importlib.metadata
import logging
import os
import socket
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from conveyor.ops import Operator, WorkerInfo
from conveyor_worker.settings import QueueSelection

from devtools.redis_server import RedisProcess

from . import worker_tasks
from .conftest import SpawnWorker, WorkerFactory, real_backend, wait_finished, wait_until

BEAT = 0.2  # seconds between heartbeats in these tests (5 s by default)


def listed(worker_id: str) -> WorkerInfo | None:
    """Return the live worker with this id as operators see it, if listed."""
    return next((w for w in Operator(real_backend()).workers() if w.id == worker_id), None)


def heartbeat_key_exists(worker_id: str) -> bool:
    b = real_backend()
    return bool(b.store.call(lambda c: c.exists(b.keys.worker(worker_id))))


def test_a_running_worker_is_listed_with_what_it_is_and_leaves_on_a_clean_stop(
    backend: object, make_worker: WorkerFactory, scratch: Path
) -> None:
    """Host, pid, queues as given, slots, busy, start time, version and state; gone at once after a drain."""
    b = real_backend()
    queues = QueueSelection(names=("alpha", "beta"), all_queues=False)
    handle = make_worker(concurrency=3, queues=queues, heartbeat_every=BEAT).start()

    info = wait_until(lambda: (w := listed(handle.worker_id)) and w.state == "ready" and w, what="listed")
    assert info.host == (os.environ.get("POD_NAME") or socket.gethostname())
    assert info.pid == os.getpid()
    assert info.queues == ("alpha", "beta")
    assert (info.slots, info.busy) == (3, 0)
    assert info.version == importlib.metadata.version("django-conveyor")
    assert info.started_at.utcoffset() == timedelta(0)
    assert abs(datetime.now(UTC) - info.started_at) < timedelta(minutes=5)

    # A busy slot shows at the next beat.
    gate = scratch.with_name("gate")
    running = worker_tasks.wait_for_file.using(queue_name="alpha").enqueue(str(gate))
    wait_until(lambda: (w := listed(handle.worker_id)) and w.busy == 1, what="busy 1 in the heartbeat")
    gate.touch()
    wait_finished(b, running.id)

    assert handle.stop() == 0
    assert listed(handle.worker_id) is None
    assert not heartbeat_key_exists(handle.worker_id)


def test_every_queue_spelling_is_listed_as_given(backend: object, make_worker: WorkerFactory) -> None:
    """--queues '*,-slow' is listed as ['*', '-slow']."""
    queues = QueueSelection(all_queues=True, excluded=frozenset({"slow"}))
    handle = make_worker(queues=queues, heartbeat_every=BEAT).start()
    info = wait_until(lambda: listed(handle.worker_id), what="listed")
    assert info.queues == ("*", "-slow")
    assert handle.stop() == 0


@pytest.mark.subprocess
def test_a_killed_worker_drops_out_of_the_list_by_itself(backend: object, spawn_worker: SpawnWorker) -> None:
    """Given a worker beating every 0.3 s, when it is SIGKILLed, its heartbeat runs out by itself."""
    # The period is internal (5 s); the child shortens it before its settings are read.
    entry = (
        "-c",
        "import runpy, conveyor_worker.timings as t; t.HEARTBEAT_EVERY = 0.3; "
        "runpy.run_module('conveyor_worker', run_name='__main__', alter_sys=True)",
    )
    worker = spawn_worker("--concurrency", "2", "--queues", "default", entry=entry, POD_NAME="pod-7")
    info = wait_until(lambda: (w := listed(worker.worker_id)) and w.state == "ready" and w, what="listed")
    assert (info.host, info.pid, info.slots, info.queues) == ("pod-7", worker.pid, 2, ("default",))

    worker.kill()

    wait_until(lambda: listed(worker.worker_id) is None, what="the heartbeat to run out")
    wait_until(lambda: not heartbeat_key_exists(worker.worker_id), what="the heartbeat key to expire")


def test_heartbeats_failing_while_redis_is_away_warn_once_and_resume(
    backend: object,
    make_worker: WorkerFactory,
    own_redis: RedisProcess,
    tasks_on: Callable[[str], Any],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Given Redis gone, heartbeats fail with one warning only; when Redis is back, the worker is listed."""
    with tasks_on(own_redis.url), caplog.at_level(logging.WARNING, logger="conveyor_worker"):
        handle = make_worker(heartbeat_every=BEAT).start()
        wait_until(lambda: listed(handle.worker_id), what="listed")
        beats = [0]
        tell = handle.store.heartbeat

        def counted(*args: Any, **kwargs: Any) -> Any:
            beats[0] += 1
            return tell(*args, **kwargs)

        handle.store.heartbeat = counted  # type: ignore[method-assign]

        own_redis.stop()
        wait_until(lambda: beats[0] >= 5, what="five heartbeats while Redis is away")
        failed = [r for r in caplog.records if getattr(r, "event", None) == "heartbeat_failed"]
        assert len(failed) == 1

        own_redis.start()
        wait_until(lambda: listed(handle.worker_id), what="listed again")
        assert handle.stop() == 0
