"""HASH_TAG_PER_QUEUE on a Redis Cluster of three primaries: queues spread, every feature works, no CROSSSLOT.

The cluster (tests/conftest.py) refuses any command or script whose keys span slots, and a
node answers MOVED for a slot it does not own, so each test here would fail on a key built
in the wrong slot. The queues are picked so that each one's slot is on a different primary.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import conveyor
import pytest
import redis
from conveyor import RedisBackend
from conveyor.acl import setuser_command
from conveyor.exceptions import RedisUnavailable
from conveyor.keys import Keys, token_of
from conveyor.ops import Operator
from conveyor_worker.scheduler import Scheduler, plans_of
from django.tasks import TaskResultStatus, task_backends
from django.test import override_settings
from redis.crc import key_slot

from devtools.redis_cluster import LocalCluster
from tests import tasks
from tests.conftest import cluster_setting, queues_on_every_primary

LONG_LEASE_MS = 60_000


@pytest.fixture
def queues(local_cluster: LocalCluster, prefix: str) -> list[str]:
    """Return three queue names whose slots are on the three different primaries."""
    return queues_on_every_primary(local_cluster, prefix)


@pytest.fixture
def make_cluster_backend(local_cluster: LocalCluster, prefix: str) -> Iterator[Any]:
    """Build backends with CLUSTER and HASH_TAG_PER_QUEUE on the three-primary cluster."""
    built: list[RedisBackend] = []

    def make(queues: list[str], **options: Any) -> RedisBackend:
        merged = {
            "URL": local_cluster.url,
            "KEY_PREFIX": prefix,
            "ALLOWED_TASK_MODULES": ["tests"],
            "CLUSTER": True,
            "HASH_TAG_PER_QUEUE": True,
            **options,
        }
        built.append(RedisBackend("default", {"QUEUES": [*queues, "default"], "OPTIONS": merged}))
        return built[-1]

    yield make
    for backend in built:
        backend.store.close()


@pytest.fixture
def backend(local_cluster: LocalCluster, prefix: str, queues: list[str]) -> Iterator[RedisBackend]:
    """Make the cluster backend Django's default one (enqueue_many and wait_result look it up)."""
    setting = cluster_setting(local_cluster.url, prefix, [*queues, "default"])
    with override_settings(TASKS=setting):
        default = task_backends["default"]
        assert isinstance(default, RedisBackend)
        yield default
        default.store.close()


def node_keys(cluster: LocalCluster, prefix: str) -> list[set[str]]:
    """Return, per node, the names of this test's keys it holds (SCAN on each node directly)."""
    found = []
    for node in cluster.nodes:
        client = redis.Redis(host="127.0.0.1", port=node.port)
        try:
            found.append({k.decode() for k in client.scan_iter(match="{" + prefix + "*", count=1000)})
        finally:
            client.close()
    return found


def test_each_queue_keeps_its_keys_and_tasks_on_its_own_primary(
    backend: RedisBackend, queues: list[str], local_cluster: LocalCluster, prefix: str
) -> None:
    """Every key of a queue, its tasks' hashes included, is on the primary that owns the queue's slot."""
    later = datetime.now(UTC) + timedelta(hours=1)
    ids: dict[str, list[str]] = {}
    for q in queues:
        ids[q] = [backend.enqueue(tasks.noop_task.using(queue_name=q), (), {}).id]
        ids[q].append(backend.enqueue(tasks.noop_task.using(queue_name=q, run_after=later), (), {}).id)
        ids[q].append(backend.enqueue(tasks.unique_task.using(queue_name=q), (q,), {}).id)
        bulk = conveyor.enqueue_many(tasks.echo.using(queue_name=q), [((i,), {}) for i in range(5)])
        ids[q] += [r.id for r in bulk]

    held = node_keys(local_cluster, prefix)
    keys = Keys(prefix, per_queue=True)
    for node, q in enumerate(queues):
        tag = keys.of(q).tag
        assert local_cluster.node_of_slot(key_slot(tag.encode())) == node
        assert {keys.task(i) for i in ids[q]} <= held[node]
        assert {keys.of(q).ready(q), keys.of(q).scheduled(q), keys.of(q).seq} <= held[node]
        assert all(token_of(i) == tag[len(prefix) + 2 : -1] for i in ids[q])
        others = {k for k in held[node] if not k.startswith((tag, keys.tag))}
        assert others == set(), f"node {node} holds keys of other queues' slots"
    # The backend's own keys (the set of queues) are in its own tag's slot, on whichever node owns it.
    root = local_cluster.node_of_slot(key_slot(keys.tag.encode()))
    assert keys.queues in held[root]
    assert backend.store.known_queues() == set(queues)


def test_the_whole_lifecycle_runs_across_three_primaries(backend: RedisBackend, queues: list[str]) -> None:
    """Claim, renew, finish, release, retry, postpone, reclaim, promote, trim: per slot, no CROSSSLOT."""
    store = backend.store
    a, b, c = queues
    done = backend.enqueue(tasks.calculate_meaning_of_life.using(queue_name=a), (), {})
    lost = backend.enqueue(tasks.noop_task.using(queue_name=b), (), {})
    third = backend.enqueue(tasks.noop_task.using(queue_name=c), (), {})
    later = backend.enqueue(
        tasks.noop_task.using(queue_name=c, run_after=datetime.now(UTC) + timedelta(hours=1)), (), {}
    )

    claimed = store.claim(queues, "worker-a", LONG_LEASE_MS, 10)
    assert sorted((x.task_id, x.queue) for x in claimed) == sorted(
        [(done.id, a), (lost.id, b), (third.id, c)]
    )
    by_id = {x.task_id: x for x in claimed}
    assert store.renew([(x.task_id, x.queue, x.token) for x in claimed], LONG_LEASE_MS) == [1, 1, 1]
    assert store.finish(done.id, a, by_id[done.id].token, "SUCCESSFUL", 60, {"result": "42"})
    assert store.release(third.id, c, by_id[third.id].token)
    # The lease of the task in b runs out: reclaim puts it back, in its own slot.
    store.call(lambda cl: cl.zadd(backend.keys.of(b).running(b), {lost.id: 1}, xx=True))
    reclaim = dict(limit=10, max_deliveries=5, failed_ttl=60, lease_ms=0, outage_ms=60_000)
    assert store.reclaim(queues, **reclaim).requeued == 1
    again = {x.task_id: x for x in store.claim(queues, "worker-b", LONG_LEASE_MS, 10)}
    assert set(again) == {lost.id, third.id}
    assert store.retry(lost.id, b, again[lost.id].token, 0, {}) is not None
    store.run([store.postpone_call(third.id, c, again[third.id].token, 0)])
    scheduled = backend.keys.of(c).scheduled(c)
    store.call(lambda cl: cl.zadd(scheduled, {later.id: store.server_time_ms() - 1_000}, xx=True))
    assert store.promote(queues, limit=10).promoted == 3
    assert {s.queue: s.ready for s in store.queue_stats(queues)} == {a: 0, b: 1, c: 2}
    assert store.trim_indexes(queues, result_ttl=60, failed_ttl=60, limit=10) == 0
    assert store.wait_for_work(queues, 0.1) is True  # a wake token in some slot

    assert backend.get_result(done.id).status == TaskResultStatus.SUCCESSFUL
    assert backend.get_result(done.id).return_value == 42


def test_a_claim_takes_work_from_whichever_slot_has_it(backend: RedisBackend, queues: list[str]) -> None:
    """One slot claims per round trip; the others are counted now and then, so none is left behind."""
    store = backend.store
    a, c = queues[0], queues[2]
    for _ in range(12):
        backend.enqueue(tasks.noop_task.using(queue_name=c), (), {})

    claimed, waiting, sizes = [], 0, []
    for turn in range(40):
        calls = store.claim_calls(queues, "w", LONG_LEASE_MS, 1, f"w:{turn}")
        assert sum(1 for call in calls if call.args[2] == 1) == 1  # one slot claims
        sizes.append(len(calls))
        found, waiting = store.parse_claimed(store.run(calls), calls, queues)
        claimed += found
        if len(claimed) == 6:  # work turns up in another slot meanwhile
            backend.enqueue(tasks.noop_task.using(queue_name=a), (), {})
        if not found and not waiting:
            break

    assert len(claimed) == 13 and {x.queue for x in claimed} == {a, c}
    assert waiting == 0
    # Counting the other slots is not every round trip: while c had plenty, its claims went alone.
    assert 1 in sizes and 3 in sizes


def test_a_wait_on_several_slots_wakes_for_any_of_them(backend: RedisBackend, queues: list[str]) -> None:
    """One BLPOP cannot span slots: each slot has its own, and an enqueue in any of them wakes the worker."""
    store = backend.store
    for q in queues:
        store.call(lambda cl, q=q: cl.delete(backend.keys.of(q).wake(q)))
    assert store.wait_for_work(queues, 0.2) is False
    backend.enqueue(tasks.noop_task.using(queue_name=queues[2]), (), {})
    assert store.wait_for_work(queues, 5.0) is True


def test_results_are_found_from_the_id_alone(
    backend: RedisBackend, make_cluster_backend: Any, queues: list[str]
) -> None:
    """A fresh backend (another web process) reads, waits for and awaits results on every primary."""
    results = [backend.enqueue(tasks.echo.using(queue_name=q), (q,), {}) for q in queues]
    store = backend.store
    for q in queues:
        [x] = store.claim([q], "w", LONG_LEASE_MS, 1)
        assert store.finish(x.task_id, q, x.token, "SUCCESSFUL", 60, {"result": f'["{q}"]'})

    other = make_cluster_backend(queues)
    assert [other.get_result(r.id).return_value for r in results] == [[q] for q in queues]
    assert conveyor.wait_result(results[0], timeout=5).status == TaskResultStatus.SUCCESSFUL

    async def awaited() -> list[Any]:
        return [(await conveyor.await_result(r, timeout=5)).return_value for r in results]

    assert asyncio.run(awaited()) == [[q] for q in queues]


def test_async_enqueue_and_bulk_enqueue_reach_every_primary(backend: RedisBackend, queues: list[str]) -> None:
    """aenqueue and aenqueue_many use the asyncio cluster client; each task lands in its queue's slot."""

    async def go() -> list[str]:
        ids = [(await backend.aenqueue(tasks.noop_task.using(queue_name=q), (), {})).id for q in queues]
        many = await conveyor.aenqueue_many(tasks.noop_task.using(queue_name=queues[1]), [((), {})] * 3)
        return ids + [r.id for r in many]

    ids = asyncio.run(go())
    assert {s.queue: s.ready for s in backend.store.queue_stats(queues)} == {
        queues[0]: 1,
        queues[1]: 4,
        queues[2]: 1,
    }
    assert all(backend.get_result(i).status == TaskResultStatus.READY for i in ids)


def test_unique_tasks_hold_their_lock_in_their_queue_slot(backend: RedisBackend, queues: list[str]) -> None:
    """A second enqueue of a unique task returns the first, on every primary."""
    for q in queues:
        first = backend.enqueue(tasks.unique_task.using(queue_name=q), ("same",), {})
        second = backend.enqueue(tasks.unique_task.using(queue_name=q), ("same",), {})
        assert second.id == first.id


def test_operator_commands_work_on_every_primary(backend: RedisBackend, queues: list[str]) -> None:
    """Status, list, show, pause, resume, cancel, retry, delete and the purges, across three primaries."""
    store, ops = backend.store, Operator(backend)
    a, b, c = queues
    ready = [backend.enqueue(tasks.noop_task.using(queue_name=q), (), {}) for q in queues]
    failing = backend.enqueue(tasks.noop_task.using(queue_name=b), (), {})
    store.call(lambda cl: cl.delete(backend.keys.of(b).ready(b)))  # hand it to a "worker" by hand:
    store.call(lambda cl: cl.zadd(backend.keys.of(b).ready(b), {failing.id: 0, ready[1].id: 1}))
    [x] = store.claim([b], "w", LONG_LEASE_MS, 1)
    assert x.task_id == failing.id
    assert store.finish(failing.id, b, x.token, "FAILED", 60, {"errors": "[]"})

    ops.pause(a)
    assert store.claim([a], "w", LONG_LEASE_MS, 1) == []
    assert {s.queue: s.paused for s in ops.status().queues} == {a: True, b: False, c: False}
    ops.resume(a)
    assert {t.id for t in ops.list(limit=50).items} == {r.id for r in ready} | {failing.id}
    assert ops.show(failing.id).summary.status == "FAILED"
    assert ops.list(queue=b, status="FAILED").items[0].id == failing.id
    assert ops.retry([failing.id])[failing.id] == "retried"
    assert ops.cancel([ready[0].id])[ready[0].id] == "cancelled"
    assert ops.delete([ready[2].id]) == {ready[2].id: True}
    assert ops.purge_results(older_than=0) == 1  # the cancelled task's FAILED result
    assert ops.purge_ready(b) == 2
    assert {(s.queue, s.ready, s.failed) for s in ops.status().queues} == {(a, 0, 0), (b, 0, 0), (c, 0, 0)}


def test_periodic_entries_tick_in_their_queue_slots(make_cluster_backend: Any, queues: list[str]) -> None:
    """Entries for queues on different primaries fire once each; the schedules listing finds them all."""
    entries = [
        {"name": f"every-{q}", "task": "tests.tasks.noop_task", "every": 60, "queue": q} for q in queues
    ]
    backend = make_cluster_backend(queues, SCHEDULE=entries)
    first = Scheduler(backend.store, plans_of(backend), backend=backend.alias, worker_id="w1")
    second = Scheduler(backend.store, plans_of(backend), backend=backend.alias, worker_id="w2")
    assert first.run_due(0.0) == 0  # the first survey only notes each entry's next tick
    for q in queues:  # every entry falls due
        key = backend.keys.of(q).periodic(f"every-{q}")
        backend.store.call(lambda cl, key=key: cl.hset(key, "next", backend.store.server_time_ms() - 1))
    assert first.run_due(0.0) + second.run_due(0.0) == 3
    assert {s.queue: s.ready for s in backend.store.queue_stats(queues)} == dict.fromkeys(queues, 1)
    rows = Operator(backend).schedules()
    assert {r.name for r in rows} == {f"every-{q}" for q in queues}
    assert all(r.declared and r.last_task_id for r in rows)


def test_the_acl_line_with_cluster_commands_is_all_a_cluster_backend_needs(
    local_cluster: LocalCluster, queues: list[str], prefix: str
) -> None:
    """As a user of setuser_command(cluster=True) on every node, nothing is refused."""
    user = "u" + prefix
    admins = [redis.Redis(host="127.0.0.1", port=n.port) for n in local_cluster.nodes]
    url = f"redis://{user}:pw@127.0.0.1:{local_cluster.nodes[0].port}/0"
    options = {"URL": url, "KEY_PREFIX": prefix, "ALLOWED_TASK_MODULES": ["tests"]}
    options |= {"CLUSTER": True, "HASH_TAG_PER_QUEUE": True}
    try:
        for admin in admins:
            admin.execute_command(*setuser_command(prefix, user=user, password="pw").split())
        without = RedisBackend("default", {"QUEUES": queues, "OPTIONS": options})
        with pytest.raises(RedisUnavailable, match="Redis Cluster"):  # the slot map is refused
            without.enqueue(tasks.noop_task.using(queue_name=queues[0]), (), {})
        without.store.close()

        line = setuser_command(prefix, user=user, password="pw", cluster=True)
        for admin in admins:
            admin.execute_command(*line.split())
            admin.acl_log_reset()
        backend = RedisBackend("default", {"QUEUES": queues, "OPTIONS": options})
        ids = [backend.enqueue(tasks.noop_task.using(queue_name=q), (), {}).id for q in queues]
        backend.enqueue_many(tasks.noop_task.using(queue_name=queues[1]), [((), {})] * 3)
        store = backend.store
        for x in store.claim(queues, "w", LONG_LEASE_MS, 10):
            assert store.finish(x.task_id, x.queue, x.token, "SUCCESSFUL", 60, {"result": "null"})
        store.promote(queues, limit=10)
        store.wait_for_work(queues, 0.05)
        store.cancel_signal(queues)
        store.heartbeat("w", "{}", 1_000)
        assert store.durability() is None  # CONFIG GET is not granted: the check is skipped, not failed
        assert Operator(backend).status().queues
        assert all(backend.get_result(i).status == TaskResultStatus.SUCCESSFUL for i in ids)
        backend.store.close()
        refused = {entry["object"] for admin in admins for entry in admin.acl_log()}
        # CONFIG GET is optional (acl.OPTIONAL_COMMANDS); redis-py ignores a refused CLIENT SETINFO.
        assert refused <= {"config|get", "client|setinfo"}
    finally:
        for admin in admins:
            admin.execute_command("ACL", "DELUSER", user)
            admin.close()


def test_waiters_hear_of_tasks_that_finish_after_they_started_waiting(
    backend: RedisBackend, queues: list[str]
) -> None:
    """wait_result blocks on the task's done list in its slot; await_result hears the finished channel."""
    store = backend.store
    results = [backend.enqueue(tasks.echo.using(queue_name=q), (q,), {}) for q in queues]

    def finish_later() -> None:
        time.sleep(0.5)
        for q in queues:
            [x] = store.claim([q], "w", LONG_LEASE_MS, 1)
            assert store.finish(x.task_id, q, x.token, "SUCCESSFUL", 60, {"result": f'["{q}"]'})

    async def awaited() -> list[Any]:
        finisher = threading.Thread(target=finish_later)
        finisher.start()
        try:
            # No timeout of their own: only the finished channel can end these waits (the test's bound
            # is far above the half second they take).
            waits = asyncio.gather(*(conveyor.await_result(r, timeout=None) for r in results[1:]))
            done = await asyncio.wait_for(waits, 60)
        finally:
            await asyncio.to_thread(finisher.join)
        return [d.return_value for d in done]

    assert asyncio.run(awaited()) == [[q] for q in queues[1:]]
    assert conveyor.wait_result(results[0], timeout=5).return_value == [queues[0]]

    later = backend.enqueue(tasks.echo.using(queue_name=queues[2]), ("late",), {})
    finisher = threading.Timer(0.5, lambda: finish_one(backend, queues[2], '["late"]'))
    finisher.start()
    try:
        assert conveyor.wait_result(later, timeout=10).return_value == ["late"]
    finally:
        finisher.join()


def finish_one(backend: RedisBackend, queue: str, result: str) -> None:
    """Claim the one ready task of a queue and record it SUCCESSFUL with a JSON result."""
    [x] = backend.store.claim([queue], "w", LONG_LEASE_MS, 1)
    assert backend.store.finish(x.task_id, queue, x.token, "SUCCESSFUL", 60, {"result": result})


def test_script_calls_are_routed_by_their_keys_without_asking_the_server(
    backend: RedisBackend, queues: list[str], local_cluster: LocalCluster
) -> None:
    """No COMMAND GETKEYS per script call: redis-py 8's cluster pipeline asks a node for EVALSHA's keys."""
    admins = [redis.Redis(host="127.0.0.1", port=n.port) for n in local_cluster.nodes]
    try:
        for admin in admins:
            admin.config_resetstat()
        for q in queues:
            backend.enqueue(tasks.noop_task.using(queue_name=q), (), {})
        backend.enqueue_many(tasks.noop_task.using(queue_name=queues[0]), [((), {})] * 10)
        store = backend.store
        for x in store.claim(queues, "w", LONG_LEASE_MS, 20):
            assert store.finish(x.task_id, x.queue, x.token, "SUCCESSFUL", 60, {"result": "null"})
        stats = [admin.info("commandstats") for admin in admins]
        assert sum(s.get("cmdstat_evalsha", {}).get("calls", 0) for s in stats) >= 20
        assert [s.get("cmdstat_command|getkeys", {}).get("calls", 0) for s in stats] == [0, 0, 0]
    finally:
        for admin in admins:
            admin.close()
