"""After Redis restarts, the web side's pooled connections are stale; one retry must recover."""

from __future__ import annotations

import asyncio
import time

import pytest
from conveyor.exceptions import RedisUnavailable
from django.tasks import default_task_backend
from django.test import override_settings

from devtools.redis_server import RedisProcess, free_port
from tests import tasks
from tests.conftest import tasks_setting


def test_sync_calls_recover_after_a_redis_restart(own_redis: RedisProcess) -> None:
    """enqueue and get_result work on the first call after a restart (the connection Redis closed
    is retried once)."""
    with override_settings(TASKS=tasks_setting(own_redis.url, "restart")):
        # Given pooled connections from before the restart
        before = tasks.noop_task.enqueue()
        default_task_backend.get_result(before.id)
        own_redis.restart()

        # When the web side calls again, Then nothing raises
        after = tasks.noop_task.enqueue()
        assert default_task_backend.get_result(after.id).id == after.id


def test_async_calls_recover_after_a_redis_restart(own_redis: RedisProcess) -> None:
    """aenqueue and aget_result retry once on the asyncio client too (it needs its own Retry)."""
    with override_settings(TASKS=tasks_setting(own_redis.url, "restart")):

        async def scenario() -> None:
            # Given asyncio connections from before the restart
            before = await tasks.noop_task.aenqueue()
            await default_task_backend.aget_result(before.id)
            own_redis.restart()

            # When the web side calls again, Then nothing raises
            after = await tasks.noop_task.aenqueue()
            assert (await default_task_backend.aget_result(after.id)).id == after.id

        asyncio.run(scenario())


def test_aenqueue_to_a_closed_port_fails_fast() -> None:
    """No server at all: aenqueue raises RedisUnavailable, within a bound of the timeouts."""
    url = f"redis://127.0.0.1:{free_port()}/0"
    with override_settings(TASKS=tasks_setting(url, "closed", CONNECT_TIMEOUT=0.5, SOCKET_TIMEOUT=0.5)):
        started = time.monotonic()
        with pytest.raises(RedisUnavailable):
            asyncio.run(tasks.noop_task.aenqueue())
        assert time.monotonic() - started < 10
