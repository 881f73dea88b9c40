"""Waiting for a result: wait_result / await_result wake on the finish itself, never poll, and time out."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import conveyor
import pytest
from conveyor import RedisBackend, codec
from conveyor.exceptions import ConveyorError, ResultTimeout
from conveyor.ops import Operator
from conveyor.store import Claimed, Store
from django.tasks import TaskResultStatus, task_backends
from django.tasks.exceptions import TaskResultDoesNotExist
from django.test import override_settings

from devtools.redis_server import RedisProcess, find_server_binary
from tests import tasks
from tests.conftest import tasks_setting

from .conftest import BackendFactory
from .test_transitions import reclaim

WORKER = "wait-test-worker"
LEASE_MS = 60_000


def enqueue(backend: RedisBackend) -> str:
    """Enqueue one no-op task; return its id."""
    return backend.enqueue(tasks.echo, [], {}).id


def claim(backend: RedisBackend, count: int = 1000) -> list[Claimed]:
    """Claim ready tasks as the test's worker."""
    return backend.store.claim(["default"], WORKER, LEASE_MS, count)


def finish(backend: RedisBackend, claimed: Claimed, status: str = "SUCCESSFUL") -> None:
    """Record a claimed task's outcome as a worker does (a success returns its own id)."""
    now = datetime.now(UTC)
    if status == "SUCCESSFUL":
        fields = codec.success_fields(now, json.dumps(claimed.task_id))
        ttl = backend.settings.result_ttl
    else:
        error = codec.ErrorRecord(exception_class_path="builtins.ValueError", traceback="ValueError: boom\n")
        fields = codec.failure_fields(now, [error])
        ttl = backend.settings.failed_result_ttl
    assert backend.store.finish(claimed.task_id, claimed.queue, claimed.token, status, ttl, fields)


def later(seconds: float, action: Callable[[], Any]) -> threading.Thread:
    """Run action on a thread after a delay; return the started thread."""

    def run() -> None:
        time.sleep(seconds)
        action()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def raw(backend: RedisBackend, fn: Callable[[Any], Any]) -> Any:
    """Run fn with the backend's sync client."""
    return backend.store.call(fn)


# -- sync --------------------------------------------------------------------------


def test_a_finished_task_is_returned_at_once_and_never_marked(make_backend: BackendFactory) -> None:
    backend = make_backend()
    task_id = enqueue(backend)
    (claimed,) = claim(backend)
    finish(backend, claimed)

    started = time.monotonic()
    result = backend.wait_result(task_id, timeout=5)

    assert time.monotonic() - started < 0.5
    assert result.status == TaskResultStatus.SUCCESSFUL and result.return_value == task_id
    assert raw(backend, lambda c: c.hget(backend.keys.task(task_id), "waited")) is None


def test_wait_wakes_on_the_finish_not_on_a_poll(make_backend: BackendFactory) -> None:
    backend = make_backend()
    task_id = enqueue(backend)
    (claimed,) = claim(backend)
    looks: list[str] = []
    look = backend.store.look
    backend.store.look = lambda t: (looks.append(t), look(t))[1]  # type: ignore[method-assign]

    finished_at: list[float] = []
    later(0.5, lambda: (finish(backend, claimed), finished_at.append(time.monotonic())))
    result = backend.wait_result(task_id, timeout=10)
    woke = time.monotonic()

    assert result.status == TaskResultStatus.SUCCESSFUL and result.return_value == task_id
    assert woke - finished_at[0] < 0.2  # woken by the finish itself
    assert len(looks) == 2  # one look before blocking, one after the wake: no polling
    done = backend.keys.done(task_id)
    assert raw(backend, lambda c: c.lrange(done, 0, -1)) == [b"1"]
    assert 0 < raw(backend, lambda c: c.pttl(done)) <= 60_000


def test_a_task_nobody_waits_for_writes_no_done_list_and_publishes_nothing(
    make_backend: BackendFactory,
) -> None:
    backend = make_backend()
    pubsub = backend.store.client.pubsub()
    pubsub.subscribe(backend.keys.done_channel)
    assert pubsub.get_message(timeout=1)["type"] == "subscribe"  # type: ignore[index]
    ids = [enqueue(backend) for _ in range(3)]
    claimed = claim(backend)
    finish(backend, claimed[0])
    finish(backend, claimed[1], "FAILED")
    Operator(backend).cancel([ids[2]])  # already RUNNING: only marked
    reclaim_ids = enqueue(backend)
    (poisoned,) = claim(backend)
    raw(backend, lambda c: c.zadd(backend.keys.running("default"), {poisoned.task_id: 1}))
    assert reclaim(backend.store, ["default"], limit=10, max_deliveries=1, failed_ttl=60) == (0, 1)
    cancelled = enqueue(backend)
    assert Operator(backend).cancel([cancelled]) == {cancelled: "cancelled"}

    assert pubsub.get_message(timeout=0.5) is None
    for task_id in [*ids, reclaim_ids, cancelled]:
        assert not raw(backend, lambda c, t=task_id: c.exists(backend.keys.done(t)))
    pubsub.close()


def test_a_timeout_names_the_task_and_its_status(make_backend: BackendFactory) -> None:
    backend = make_backend()
    task_id = enqueue(backend)

    started = time.monotonic()
    with pytest.raises(ResultTimeout) as raised:
        backend.wait_result(task_id, timeout=0.5)

    assert 0.5 <= time.monotonic() - started < 1.5
    assert isinstance(raised.value, TimeoutError) and isinstance(raised.value, ConveyorError)
    assert raised.value.task_id == task_id and raised.value.status == "READY"
    assert task_id in str(raised.value) and "READY" in str(raised.value)
    with pytest.raises(ResultTimeout, match="RUNNING"):
        claim(backend)
        backend.wait_result(task_id, timeout=0)


def test_an_unknown_or_malformed_id_raises_like_get_result(make_backend: BackendFactory) -> None:
    backend = make_backend()
    with pytest.raises(TaskResultDoesNotExist):
        backend.wait_result("x" * 32, timeout=1)
    with pytest.raises(TaskResultDoesNotExist):
        backend.wait_result("not an id!", timeout=1)
    with pytest.raises(ValueError, match="timeout"):
        backend.wait_result("x" * 32, timeout=-1)
    with pytest.raises(TaskResultDoesNotExist):
        asyncio.run(backend.await_result("x" * 32, timeout=1))


def test_a_finish_between_the_look_and_the_block_still_wakes_the_waiter(
    make_backend: BackendFactory,
) -> None:
    """The race the look-then-block order closes: the finish lands after the waiter looked."""
    backend = make_backend()
    task_id = enqueue(backend)
    (claimed,) = claim(backend)
    look = backend.store.look
    raced: list[bool] = []

    def look_then_finish(t: str) -> Any:
        reply = look(t)
        if not raced:  # Given the waiter has looked (RUNNING) and not blocked yet
            raced.append(True)
            finish(backend, claimed)  # When the task finishes right then
        return reply

    backend.store.look = look_then_finish  # type: ignore[method-assign]
    started = time.monotonic()
    result = backend.wait_result(task_id, timeout=30)

    # Then the block returns at once on the token the finish left, not at the timeout
    assert result.status == TaskResultStatus.SUCCESSFUL
    assert time.monotonic() - started < 1


def test_every_waiter_of_one_task_wakes(make_backend: BackendFactory) -> None:
    backend = make_backend()
    task_id = enqueue(backend)
    (claimed,) = claim(backend)
    results: list[Any] = []
    waiters = [
        threading.Thread(target=lambda: results.append(backend.wait_result(task_id, timeout=10)))
        for _ in range(8)
    ]
    for w in waiters:
        w.start()
    time.sleep(0.5)
    finished = time.monotonic()
    finish(backend, claimed, "FAILED")
    for w in waiters:
        w.join()

    assert time.monotonic() - finished < 1
    assert [r.status for r in results] == [TaskResultStatus.FAILED] * 8


def test_reclaim_and_cancel_wake_waiters(make_backend: BackendFactory) -> None:
    backend = make_backend()
    poisoned_id = enqueue(backend)
    (poisoned,) = claim(backend)
    cancelled_id = enqueue(backend)

    def fail_both() -> None:
        raw(backend, lambda c: c.zadd(backend.keys.running("default"), {poisoned.task_id: 1}))
        assert reclaim(backend.store, ["default"], limit=10, max_deliveries=1, failed_ttl=60) == (0, 1)
        assert Operator(backend).cancel([cancelled_id]) == {cancelled_id: "cancelled"}

    results: dict[str, Any] = {}
    waiters = [
        threading.Thread(target=lambda t=t: results.update({t: backend.wait_result(t, timeout=10)}))
        for t in (poisoned_id, cancelled_id)
    ]
    for w in waiters:
        w.start()
    time.sleep(0.5)
    finished = time.monotonic()
    fail_both()
    for w in waiters:
        w.join()

    assert time.monotonic() - finished < 1
    assert results[poisoned_id].errors[-1].exception_class_path == "conveyor.exceptions.WorkerLost"
    assert results[cancelled_id].errors[-1].exception_class_path == "conveyor.exceptions.TaskCancelled"


def test_a_retried_task_is_waited_for_again_not_woken_by_its_old_failure(
    make_backend: BackendFactory,
) -> None:
    backend = make_backend()
    task_id = enqueue(backend)
    (claimed,) = claim(backend)
    later(0.2, lambda: finish(backend, claimed, "FAILED"))
    assert backend.wait_result(task_id, timeout=10).status == TaskResultStatus.FAILED

    # Given the failure's token in the done list, When an operator retries the task
    assert raw(backend, lambda c: c.exists(backend.keys.done(task_id)))
    Operator(backend).retry([task_id])

    # Then the token is gone: a new waiter blocks until the task finishes again
    assert not raw(backend, lambda c: c.exists(backend.keys.done(task_id)))
    looks: list[str] = []
    look = backend.store.look
    backend.store.look = lambda t: (looks.append(t), look(t))[1]  # type: ignore[method-assign]
    (again,) = claim(backend)
    later(0.5, lambda: finish(backend, again))
    assert backend.wait_result(task_id, timeout=10).status == TaskResultStatus.SUCCESSFUL
    assert len(looks) == 2


def test_module_functions_work_through_djangos_default_backend(configure_tasks: Any) -> None:
    with configure_tasks():
        backend = task_backends["default"]
        assert isinstance(backend, RedisBackend)
        result = tasks.echo.enqueue(1)
        (claimed,) = claim(backend)
        later(0.3, lambda: finish(backend, claimed))
        assert conveyor.wait_result(result, timeout=10).return_value == result.id

        async def scenario() -> None:
            second = await tasks.echo.aenqueue(2)
            (claimed,) = await asyncio.to_thread(claim, backend)
            later(0.3, lambda: finish(backend, claimed))
            assert (await conveyor.await_result(second, timeout=10)).return_value == second.id

        asyncio.run(scenario())
        backend.store.close()


# -- asyncio -----------------------------------------------------------------------


def async_pool_size(store: Store) -> int:
    """Return the connections the running loop's pool holds (in use and idle)."""
    pool = store._async_client().connection_pool
    return len(pool._in_use_connections) + len(pool._available_connections)


def test_500_concurrent_awaits_share_a_bounded_number_of_connections(make_backend: BackendFactory) -> None:
    backend = make_backend(MAX_CONNECTIONS=10)
    ids = [enqueue(backend) for _ in range(400)]

    async def scenario() -> None:
        # Given 500 awaits at once: 400 tasks, 100 of them awaited twice
        awaited = ids + ids[:100]
        waits = [asyncio.ensure_future(backend.await_result(t, timeout=30)) for t in awaited]
        most = 0

        async def sample() -> None:
            nonlocal most
            while True:
                most = max(most, async_pool_size(backend.store))
                await asyncio.sleep(0.005)

        sampler = asyncio.ensure_future(sample())
        await asyncio.sleep(0.5)
        assert not any(w.done() for w in waits)

        # When a worker finishes every task
        def work() -> None:
            while claimed := claim(backend, 50):
                for c in claimed:
                    finish(backend, c)

        started = time.monotonic()
        await asyncio.to_thread(work)
        results = await asyncio.gather(*waits)
        sampler.cancel()

        # Then every await returns its own result, and the pool never held more than two
        assert [r.return_value for r in results] == awaited
        assert time.monotonic() - started < 10
        assert most <= 2, most

    asyncio.run(scenario())


def test_await_times_out_and_a_finish_right_after_the_look_wakes(make_backend: BackendFactory) -> None:
    backend = make_backend()
    slow, raced = enqueue(backend), enqueue(backend)
    (c_slow, c_raced) = claim(backend)
    store = backend.store
    alook = store.alook

    async def look_then_finish(ids: list[str]) -> Any:
        looks = await alook(ids)
        if raced in ids and not getattr(store, "raced", False):
            store.raced = True  # type: ignore[attr-defined]
            await asyncio.to_thread(finish, backend, c_raced)  # finishes after it looked RUNNING
        return looks

    store.alook = look_then_finish  # type: ignore[method-assign]

    async def scenario() -> None:
        started = asyncio.get_running_loop().time()
        with pytest.raises(ResultTimeout, match="RUNNING"):
            await backend.await_result(slow, timeout=0.5)
        assert 0.5 <= asyncio.get_running_loop().time() - started < 2
        started = asyncio.get_running_loop().time()
        assert (await backend.await_result(raced, timeout=30)).return_value == raced
        assert asyncio.get_running_loop().time() - started < 1

    asyncio.run(scenario())
    assert c_slow.task_id == slow


# -- Redis restarts ------------------------------------------------------------------


@pytest.fixture
def durable_redis() -> Any:
    """Start a private append-only server (it keeps its data across a restart)."""
    binary = find_server_binary()
    assert binary
    server = RedisProcess(binary, appendonly=True)
    server.start()
    yield server
    server.stop()


def outage(server: RedisProcess, seconds: float) -> None:
    """Kill the server, keep it down a while, start it again with its data."""
    server.stop()
    time.sleep(seconds)
    server.start()


def test_sync_and_async_waiters_survive_a_redis_restart(durable_redis: RedisProcess) -> None:
    with override_settings(TASKS=tasks_setting(durable_redis.url, "restart", SOCKET_TIMEOUT=1.0)):
        backend = task_backends["default"]
        assert isinstance(backend, RedisBackend)
        sync_id, async_id = tasks.echo.enqueue().id, tasks.echo.enqueue().id
        claimed = {c.task_id: c for c in claim(backend)}
        results: dict[str, Any] = {}

        async def await_one() -> None:
            results[async_id] = await backend.await_result(async_id, timeout=30)

        waiters = [
            threading.Thread(
                target=lambda: results.update({sync_id: backend.wait_result(sync_id, timeout=30)})
            ),
            threading.Thread(target=lambda: asyncio.run(await_one())),
        ]
        for w in waiters:
            w.start()
        time.sleep(0.5)

        # Given both waiters blocked, When Redis is down for 1.5 s and comes back
        outage(durable_redis, 1.5)
        time.sleep(0.5)
        finished = time.monotonic()
        for c in claimed.values():
            finish(backend, c)
        for w in waiters:
            w.join(timeout=20)

        # Then both return the result soon after the finish
        assert {t: r.return_value for t, r in results.items()} == {sync_id: sync_id, async_id: async_id}
        assert time.monotonic() - finished < 3
        backend.store.close()


def test_waiters_time_out_while_redis_stays_down(durable_redis: RedisProcess) -> None:
    options = {"SOCKET_TIMEOUT": 0.5, "CONNECT_TIMEOUT": 0.5}
    with override_settings(TASKS=tasks_setting(durable_redis.url, "down", **options)):
        backend = task_backends["default"]
        assert isinstance(backend, RedisBackend)
        task_id = tasks.echo.enqueue().id
        durable_redis.stop()
        try:
            started = time.monotonic()
            with pytest.raises(ResultTimeout, match="Redis unavailable"):
                backend.wait_result(task_id, timeout=2)
            assert time.monotonic() - started < 5
            started = time.monotonic()
            with pytest.raises(ResultTimeout, match="Redis unavailable"):
                asyncio.run(backend.await_result(task_id, timeout=2))
            assert time.monotonic() - started < 5
        finally:
            durable_redis.start()
            backend.store.close()


def test_a_task_deleted_while_waited_for_raises_does_not_exist(make_backend: BackendFactory) -> None:
    """Deleting (one task, or a queue's READY tasks) wakes its waiters, even those without a timeout."""
    backend = make_backend()
    deleted, dropped = enqueue(backend), enqueue(backend)
    outcomes: dict[str, BaseException] = {}

    def wait_sync() -> None:
        try:
            backend.wait_result(deleted, timeout=None)
        except TaskResultDoesNotExist as exc:
            outcomes[deleted] = exc

    async def wait_async() -> None:
        try:
            await backend.await_result(dropped, timeout=None)
        except TaskResultDoesNotExist as exc:
            outcomes[dropped] = exc

    waiters = [threading.Thread(target=wait_sync), threading.Thread(target=lambda: asyncio.run(wait_async()))]
    for w in waiters:
        w.start()
    time.sleep(0.5)
    started = time.monotonic()
    assert backend.store.run([backend.store.delete_call(deleted, "default")]) == [b"deleted"]
    assert backend.store.drop_ready("default", 100) == 1
    for w in waiters:
        w.join(timeout=10)

    assert set(outcomes) == {deleted, dropped}
    assert time.monotonic() - started < 1


def test_a_zero_timeout_looks_once(make_backend: BackendFactory) -> None:
    backend = make_backend()
    done = enqueue(backend)
    (claimed,) = claim(backend)
    finish(backend, claimed)
    ready = enqueue(backend)

    assert backend.wait_result(done, timeout=0).status == TaskResultStatus.SUCCESSFUL
    with pytest.raises(ResultTimeout, match="READY"):
        backend.wait_result(ready, timeout=0)

    async def scenario() -> None:
        assert (await backend.await_result(done, timeout=0)).status == TaskResultStatus.SUCCESSFUL
        with pytest.raises(ResultTimeout, match="READY"):
            await backend.await_result(ready, timeout=0)

    asyncio.run(scenario())
