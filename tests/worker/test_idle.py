"""An idle worker waits on Redis; it does not spin."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest
import redis

from devtools.redis_server import RedisProcess
from tests import tasks

from .conftest import WorkerFactory, real_backend, wait_finished


def commands_processed(client: redis.Redis) -> int:
    """Return the server's count of commands processed so far."""
    return int(client.info("stats")["total_commands_processed"])


@pytest.mark.parametrize("queues_known", [False, True], ids=["empty-redis", "one-idle-queue"])
def test_an_idle_worker_sends_few_commands(
    backend: object,
    make_worker: WorkerFactory,
    own_redis: RedisProcess,
    tasks_on: Callable[[str], Any],
    queues_known: bool,
) -> None:
    """Given nothing to do (even no queue yet), a worker blocks: a handful of commands a second."""
    client = redis.Redis.from_url(own_redis.url)
    with tasks_on(own_redis.url):
        if queues_known:
            done = tasks.noop_task.enqueue()
        worker = make_worker(concurrency=2).start()
        if queues_known:
            wait_finished(real_backend(), done.id)
        time.sleep(0.5)  # settle: connections made, scripts loaded

        # When: the worker has been idle for a two-second window.
        before = commands_processed(client)
        time.sleep(2.0)
        sent = commands_processed(client) - before - 1  # less our own INFO

        # Then: it waited on Redis rather than polling it in a loop. (A slower machine can
        # only send fewer commands, so this bound does not depend on its speed.)
        assert sent < 60, f"an idle worker sent {sent} commands in 2 s"
        assert worker.stop() == 0
    client.close()
