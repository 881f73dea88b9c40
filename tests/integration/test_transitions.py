"""The Lua state changes (claim, finish, renew, release, retry, reclaim, promote) through Store methods."""

from __future__ import annotations

import itertools
import json
import threading
import time
from datetime import UTC, datetime, timedelta

from conveyor import RedisBackend, codec
from conveyor.exceptions import WorkerLost
from conveyor.store import Store
from django.tasks import TaskResultStatus

from tests import tasks

from .conftest import BackendFactory

LONG_LEASE_MS = 60_000


def wait_for_server_ms(store: Store, target_ms: int) -> None:
    """Return once the Redis server's clock has reached target_ms."""
    while store.server_time_ms() < target_ms:
        time.sleep(0.01)


def make_due(backend: RedisBackend, task_ids: list[str], queue: str = "default") -> None:
    """Move scheduled tasks' due time to the past, as if their run_after had come (no sleeping)."""
    past = backend.store.server_time_ms() - 1_000
    key = backend.keys.scheduled(queue)
    changed = backend.store.call(lambda c: c.zadd(key, dict.fromkeys(task_ids, past), xx=True, ch=True))
    assert changed == len(task_ids)


def reclaim(
    store: Store, queues: list[str], *, limit: int, max_deliveries: int, failed_ttl: int
) -> tuple[int, int]:
    """Reclaim as a worker does in steady state (another reclaim just ran: no outage hold)."""
    state = store.keys.reclaim_state
    now = store.server_time_ms()
    store.call(lambda c: c.delete(state) + c.hset(state, "tick", now))
    done = store.reclaim(
        queues,
        limit=limit,
        max_deliveries=max_deliveries,
        failed_ttl=failed_ttl,
        lease_ms=LONG_LEASE_MS,
        outage_ms=3_600_000,
    )
    assert done.held_ms == 0
    return done.requeued, done.failed


def field(backend: RedisBackend, task_id: str, name: str) -> str | None:
    """Return one raw field of a task hash as text."""
    raw = backend.store.call(lambda c: c.hget(backend.keys.task(task_id), name))
    return None if raw is None else raw.decode()


def zscore(backend: RedisBackend, key: str, member: str) -> float | None:
    """Return a member's score in a sorted set."""
    return backend.store.call(lambda c: c.zscore(key, member))


def ttl(backend: RedisBackend, task_id: str) -> int:
    """Return the TTL of a task hash in seconds (-1: none)."""
    return int(backend.store.call(lambda c: c.ttl(backend.keys.task(task_id))))


# -- claim ----------------------------------------------------------------------


def test_claim_marks_running_and_appends_the_worker(backend: RedisBackend) -> None:
    """Move a claimed task to the running set under a lease, mark it RUNNING, record the worker."""
    store, keys = backend.store, backend.keys
    result = tasks.noop_task.enqueue()
    before = store.server_time_ms()

    [claimed] = store.claim(["default"], "worker-a", LONG_LEASE_MS, 10)

    assert (claimed.task_id, claimed.queue) == (result.id, "default")
    assert claimed.fields[b"status"] == b"RUNNING"
    deadline = zscore(backend, keys.running("default"), result.id)
    assert deadline is not None
    assert before + LONG_LEASE_MS <= deadline <= store.server_time_ms() + LONG_LEASE_MS
    assert zscore(backend, keys.ready("default"), result.id) is None
    assert zscore(backend, keys.ready_since("default"), result.id) is None
    fetched = backend.get_result(result.id)
    assert fetched.status == TaskResultStatus.RUNNING
    assert fetched.worker_ids == ["worker-a"]
    assert fetched.attempts == 1
    assert fetched.started_at is not None
    assert fetched.started_at == fetched.last_attempted_at
    assert field(backend, result.id, "deliveries") == "1"


def test_claim_takes_the_best_task_across_queues(backend: RedisBackend) -> None:
    """Claim by priority across every queue asked for, and say which queue each task came from."""
    low = tasks.noop_task.using(queue_name="a", priority=1).enqueue()
    high = tasks.noop_task.using(queue_name="b", priority=50).enqueue()
    mid = tasks.noop_task.using(queue_name="a", priority=10).enqueue()

    claimed = backend.store.claim(["a", "b"], "worker-a", LONG_LEASE_MS, 3)

    assert [(c.task_id, c.queue) for c in claimed] == [(high.id, "b"), (mid.id, "a"), (low.id, "a")]


def test_claim_respects_count_and_leaves_the_rest(backend: RedisBackend) -> None:
    """Claim at most count tasks and leave the others ready."""
    ids = [tasks.noop_task.enqueue().id for _ in range(5)]

    claimed = backend.store.claim(["default"], "worker-a", LONG_LEASE_MS, 2)

    assert [c.task_id for c in claimed] == ids[:2]
    assert [s.ready for s in backend.store.queue_stats(["default"])] == [3]


def test_claim_drops_ids_whose_record_expired(backend: RedisBackend) -> None:
    """Skip, and forget, a ready id whose hash is gone instead of handing out an empty task."""
    gone = tasks.noop_task.enqueue()
    kept = tasks.noop_task.enqueue()
    backend.store.call(lambda c: c.delete(backend.keys.task(gone.id)))

    claimed = backend.store.claim(["default"], "worker-a", LONG_LEASE_MS, 10)

    assert [c.task_id for c in claimed] == [kept.id]
    assert backend.store.queue_stats(["default"])[0].ready == 0


def test_claim_drops_ids_whose_task_is_no_longer_ready(backend: RedisBackend) -> None:
    """Skip, and forget, a ready id whose task is not READY, leaving its record untouched."""
    store, keys = backend.store, backend.keys
    done = tasks.noop_task.enqueue()
    kept = tasks.noop_task.enqueue()
    store.call(lambda c: c.hset(keys.task(done.id), "status", "SUCCESSFUL"))

    claimed = store.claim(["default"], "worker-a", LONG_LEASE_MS, 10)

    assert [c.task_id for c in claimed] == [kept.id]
    assert zscore(backend, keys.ready_since("default"), done.id) is None
    assert zscore(backend, keys.running("default"), done.id) is None
    assert (field(backend, done.id, "status"), field(backend, done.id, "deliveries")) == ("SUCCESSFUL", None)
    assert store.queue_stats(["default"])[0].ready == 0


def test_claim_pops_a_bounded_number_of_stale_ids(backend: RedisBackend) -> None:
    """Pop at most 2N+8 ids per call, so a long run of stale ids cannot hold Redis up."""
    store, keys = backend.store, backend.keys
    stale = [tasks.noop_task.enqueue().id for _ in range(12)]
    live = tasks.noop_task.enqueue()
    store.call(lambda c: c.delete(*(keys.task(i) for i in stale)))

    assert store.claim(["default"], "worker-a", LONG_LEASE_MS, 1) == []
    assert store.queue_stats(["default"])[0].ready == 3
    assert [c.task_id for c in store.claim(["default"], "worker-a", LONG_LEASE_MS, 1)] == [live.id]


def test_claim_returns_the_record_as_stored_and_counts_each_delivery(backend: RedisBackend) -> None:
    """Return exactly the hash the claim wrote, appending the worker and counting the delivery."""
    store, keys = backend.store, backend.keys
    result = tasks.noop_task.enqueue()

    [first] = store.claim(["default"], "worker-a", 0, 1)
    assert first.fields == store.call(lambda c: c.hgetall(keys.task(result.id)))
    assert (first.fields[b"worker_ids"], first.fields[b"deliveries"]) == (b'["worker-a"]', b"1")

    # Given worker-a vanished and its lease was reclaimed (the record now has errors and an attempt)
    assert reclaim(store, ["default"], limit=100, max_deliveries=5, failed_ttl=60) == (1, 0)
    # When worker-b claims it
    [second] = store.claim(["default"], "worker-b", LONG_LEASE_MS, 1)
    # Then the fields returned are the stored hash, with worker-b appended and two deliveries
    stored = store.call(lambda c: c.hgetall(keys.task(result.id)))
    assert second.fields == stored
    assert stored[b"worker_ids"] == b'["worker-a","worker-b"]'
    assert (stored[b"deliveries"], stored[b"owner"], stored[b"status"]) == (b"2", b"worker-b#2", b"RUNNING")
    # started_at stays the first attempt's; last_attempted_at is the latest one's
    assert stored[b"started_at"] == first.fields[b"started_at"]
    assert stored[b"last_attempted_at"] >= first.fields[b"started_at"]
    assert b"errors" in stored


def test_claim_keeps_priority_then_enqueue_order_across_several_queues(backend: RedisBackend) -> None:
    """Claim in exact priority order across queues, and in enqueue order within a priority."""
    plan = [("a", 0), ("b", 5), ("c", 0), ("a", 5), ("b", 0), ("c", -5), ("a", 0), ("c", 5), ("b", -5)]
    sent = [(tasks.noop_task.using(queue_name=q, priority=p).enqueue().id, q, p) for q, p in plan]

    claimed = []
    for count in (4, 1, 10):  # several tasks per call, and one
        claimed += backend.store.claim(["a", "b", "c"], "worker-a", LONG_LEASE_MS, count)

    by_priority = sorted(sent, key=lambda s: -s[2])  # a stable sort keeps enqueue order
    assert [(c.task_id, c.queue) for c in claimed] == [(task_id, q) for task_id, q, _ in by_priority]


def test_claim_reports_how_many_tasks_are_still_ready(backend: RedisBackend) -> None:
    """Count what the claim left ready in every queue it claimed from, empty ones included."""
    store = backend.store
    for queue in ("a", "a", "a", "c", "c"):
        tasks.noop_task.using(queue_name=queue).enqueue()

    calls = itertools.count()

    def claim(queues: list[str], count: int) -> tuple[int, int]:
        sent = store.claim_calls(queues, "worker-a", LONG_LEASE_MS, count, f"w:{next(calls)}")
        claimed, waiting = store.parse_claimed(store.run(sent), sent, queues)
        return len(claimed), waiting

    assert claim(["a", "b", "c"], 2) == (2, 3)
    assert claim(["c"], 1) == (1, 1)
    assert claim(["b"], 1) == (0, 0)
    assert claim(["a", "b", "c"], 5) == (2, 0)


def test_claim_nothing_when_empty(backend: RedisBackend) -> None:
    """Return no tasks from empty queues, no queues, or a count of 0."""
    store = backend.store
    assert store.claim(["default"], "worker-a", LONG_LEASE_MS, 5) == []
    tasks.noop_task.enqueue()
    assert store.claim([], "worker-a", LONG_LEASE_MS, 5) == []
    assert store.claim(["default"], "worker-a", LONG_LEASE_MS, 0) == []


# -- finish and result TTLs -----------------------------------------------------


def test_finish_records_success_and_starts_the_result_ttl(backend: RedisBackend) -> None:
    """Record SUCCESSFUL with the return value, leave the running set, expire within RESULT_TTL."""
    store = backend.store
    result = tasks.calculate_meaning_of_life.enqueue()
    [claimed] = store.claim(["default"], "worker-a", LONG_LEASE_MS, 1)
    finished_at = str(store.server_time_ms() * 1000)

    ok = store.finish(
        result.id,
        "default",
        claimed.token,
        "SUCCESSFUL",
        backend.settings.result_ttl,
        {"result": "42", "finished_at": finished_at},
    )

    assert ok is True
    assert zscore(backend, backend.keys.running("default"), result.id) is None
    assert 0 < ttl(backend, result.id) <= backend.settings.result_ttl
    assert field(backend, result.id, "owner") is None
    fetched = backend.get_result(result.id)
    assert fetched.status == TaskResultStatus.SUCCESSFUL
    assert fetched.return_value == 42
    assert fetched.finished_at is not None


def test_failed_result_expires_within_failed_result_ttl(make_backend: BackendFactory) -> None:
    """Expire a FAILED record within FAILED_RESULT_TTL, which may differ from RESULT_TTL."""
    backend = make_backend(RESULT_TTL=60, FAILED_RESULT_TTL=600)
    store = backend.store
    result = backend.enqueue(tasks.failing_task_value_error, (), {})
    [claimed] = store.claim(["default"], "worker-a", LONG_LEASE_MS, 1)
    errors = json.dumps([{"exception_class_path": "builtins.ValueError", "traceback": "ValueError: x\n"}])

    assert store.finish(result.id, "default", claimed.token, "FAILED", 600, {"errors": errors})

    assert 60 < ttl(backend, result.id) <= 600
    fetched = backend.get_result(result.id)
    assert fetched.status == TaskResultStatus.FAILED
    assert fetched.errors[0].exception_class is ValueError


def test_finish_with_a_wrong_worker_id_changes_nothing(backend: RedisBackend) -> None:
    """Refuse to finish a task leased by another worker, and leave it as it was."""
    store = backend.store
    result = tasks.noop_task.enqueue()
    store.claim(["default"], "worker-a", LONG_LEASE_MS, 1)

    ok = store.finish(result.id, "default", "worker-b#1", "SUCCESSFUL", 60, {"result": "null"})

    assert ok is False
    assert field(backend, result.id, "status") == "RUNNING"
    assert field(backend, result.id, "owner") == "worker-a#1"
    assert zscore(backend, backend.keys.running("default"), result.id) is not None
    assert ttl(backend, result.id) == -1


def test_finish_of_an_unclaimed_task_is_refused(backend: RedisBackend) -> None:
    """Refuse to finish a task nobody claimed."""
    result = tasks.noop_task.enqueue()

    assert backend.store.finish(result.id, "default", "worker-a#1", "SUCCESSFUL", 60, {}) is False
    assert field(backend, result.id, "status") == "READY"


# -- renew ----------------------------------------------------------------------


def test_renew_pushes_the_lease_deadline(backend: RedisBackend) -> None:
    """Move the lease deadline forward for the worker that holds it."""
    store = backend.store
    result = tasks.noop_task.enqueue()
    [claimed] = store.claim(["default"], "worker-a", 1_000, 1)
    first = zscore(backend, backend.keys.running("default"), result.id)

    assert store.renew([(result.id, "default", claimed.token)], LONG_LEASE_MS) == [True]

    renewed = zscore(backend, backend.keys.running("default"), result.id)
    assert first is not None
    assert renewed is not None
    assert renewed >= first + LONG_LEASE_MS - 1_000


def test_renew_after_someone_else_reclaimed_returns_false(backend: RedisBackend) -> None:
    """Tell a stalled worker it lost its lease once the task was reclaimed and claimed by another."""
    store = backend.store
    kept = tasks.noop_task.enqueue()
    lost = tasks.noop_task.enqueue()
    # Given worker-a holds one task under a long lease and one under an already expired lease
    [mine] = store.claim(["default"], "worker-a", LONG_LEASE_MS, 1)
    [stale] = store.claim(["default"], "worker-a", 0, 1)
    # When a sweeper reclaims the expired one and worker-b claims it
    assert reclaim(store, ["default"], limit=100, max_deliveries=5, failed_ttl=60) == (1, 0)
    [taken] = store.claim(["default"], "worker-b", LONG_LEASE_MS, 1)
    assert taken.task_id == lost.id

    # Then worker-a keeps the lease it still has and loses the other
    leases = [(kept.id, "default", mine.token), (lost.id, "default", stale.token)]
    assert store.renew(leases, LONG_LEASE_MS) == [True, False]
    assert store.renew([(lost.id, "default", taken.token)], LONG_LEASE_MS) == [True]
    assert store.finish(lost.id, "default", stale.token, "SUCCESSFUL", 60, {}) is False
    assert store.release(lost.id, "default", stale.token) is False
    assert store.retry(lost.id, "default", stale.token, 0, {}) is None
    assert backend.get_result(lost.id).worker_ids == ["worker-a", "worker-b"]


def test_renew_of_nothing(backend: RedisBackend) -> None:
    """Renew no leases without a round trip."""
    assert backend.store.renew([], LONG_LEASE_MS) == []


# -- reclaim --------------------------------------------------------------------


def test_reclaim_requeues_then_fails_after_max_deliveries(backend: RedisBackend) -> None:
    """Requeue a task whose worker vanished with a WorkerLost error, and fail it after max_deliveries."""
    store, keys = backend.store, backend.keys
    result = tasks.noop_task.enqueue()
    score = zscore(backend, keys.ready("default"), result.id)

    # Given worker-a claimed it under a lease that has already run out
    store.claim(["default"], "worker-a", 0, 1)
    # When the lease is reclaimed
    assert reclaim(store, ["default"], limit=100, max_deliveries=2, failed_ttl=300) == (1, 0)
    # Then it is ready again at its old place, with one WorkerLost error
    assert zscore(backend, keys.ready("default"), result.id) == score
    assert zscore(backend, keys.running("default"), result.id) is None
    again = backend.get_result(result.id)
    assert again.status == TaskResultStatus.READY
    assert [e.exception_class for e in again.errors] == [WorkerLost]
    assert "worker-a" in again.errors[0].traceback
    assert field(backend, result.id, "owner") is None

    # Given worker-b claimed it and also vanished (the second delivery)
    store.claim(["default"], "worker-b", 0, 1)
    # When it is reclaimed again it has been delivered max_deliveries times
    assert reclaim(store, ["default"], limit=100, max_deliveries=2, failed_ttl=300) == (0, 1)
    # Then it is FAILED for good, out of every queue set, and its record expires
    failed = backend.get_result(result.id)
    assert failed.status == TaskResultStatus.FAILED
    assert failed.is_finished
    assert failed.finished_at is not None
    assert failed.worker_ids == ["worker-a", "worker-b"]
    assert [e.exception_class for e in failed.errors] == [WorkerLost, WorkerLost]
    assert "giving up after 2 deliveries" in failed.errors[-1].traceback
    assert 0 < ttl(backend, result.id) <= 300
    assert [(s.ready, s.running) for s in store.queue_stats(["default"])] == [(0, 0)]


def test_reclaim_leaves_live_leases_alone(backend: RedisBackend) -> None:
    """Touch no task whose lease is still running."""
    store = backend.store
    result = tasks.noop_task.enqueue()
    store.claim(["default"], "worker-a", LONG_LEASE_MS, 1)

    assert reclaim(store, ["default"], limit=100, max_deliveries=1, failed_ttl=60) == (0, 0)
    assert field(backend, result.id, "status") == "RUNNING"


def test_reclaim_respects_its_limit(backend: RedisBackend) -> None:
    """Requeue at most limit tasks per queue per call (the script stays bounded)."""
    store = backend.store
    for _ in range(5):
        tasks.noop_task.enqueue()
    store.claim(["default"], "worker-a", 0, 5)

    assert reclaim(store, ["default"], limit=2, max_deliveries=5, failed_ttl=60) == (2, 0)
    assert reclaim(store, ["default"], limit=10, max_deliveries=5, failed_ttl=60) == (3, 0)


# -- release and retry ----------------------------------------------------------


def test_release_puts_the_task_back_with_its_original_score(backend: RedisBackend) -> None:
    """Give an interrupted task back at its old place, not counting the delivery."""
    store, keys = backend.store, backend.keys
    first = tasks.noop_task.enqueue()
    second = tasks.noop_task.enqueue()
    score = zscore(backend, keys.ready("default"), first.id)
    [claimed] = store.claim(["default"], "worker-a", LONG_LEASE_MS, 1)

    assert store.release(first.id, "default", claimed.token) is True

    assert zscore(backend, keys.ready("default"), first.id) == score
    assert zscore(backend, keys.running("default"), first.id) is None
    assert [c.task_id for c in store.claim(["default"], "worker-b", LONG_LEASE_MS, 2)] == [
        first.id,
        second.id,
    ]
    assert field(backend, first.id, "deliveries") == "1"


def test_release_of_a_task_that_never_started_undoes_the_claim(backend: RedisBackend) -> None:
    """started=False: the worker leaves worker_ids, so the claim spends no attempt."""
    store = backend.store
    result = tasks.noop_task.enqueue()
    [a] = store.claim(["default"], "worker-a", LONG_LEASE_MS, 1)
    assert store.release(result.id, "default", a.token, started=False) is True
    fresh = backend.get_result(result.id)
    assert (fresh.status, fresh.worker_ids, fresh.started_at) == (TaskResultStatus.READY, [], None)

    [b] = store.claim(["default"], "worker-b", LONG_LEASE_MS, 1)
    store.release(result.id, "default", b.token)  # started: worker-b stays
    [c] = store.claim(["default"], "worker-c", LONG_LEASE_MS, 1)
    assert store.release(result.id, "default", c.token, started=False) is True

    again = backend.get_result(result.id)
    assert again.worker_ids == ["worker-b"]
    assert again.attempts == 1
    assert again.started_at is not None
    assert field(backend, result.id, "deliveries") == "0"


def test_release_by_another_worker_is_refused(backend: RedisBackend) -> None:
    """Refuse to release a task leased by someone else."""
    store = backend.store
    result = tasks.noop_task.enqueue()
    store.claim(["default"], "worker-a", LONG_LEASE_MS, 1)

    assert store.release(result.id, "default", "worker-b#1") is False
    assert field(backend, result.id, "status") == "RUNNING"


def test_retry_schedules_the_next_attempt(backend: RedisBackend) -> None:
    """Put a failed attempt back as READY in the schedule, due after its backoff, then promote it."""
    store, keys = backend.store, backend.keys
    result = tasks.noop_task.enqueue()
    [claimed] = store.claim(["default"], "worker-a", LONG_LEASE_MS, 1)
    errors = json.dumps([{"exception_class_path": "builtins.RuntimeError", "traceback": "boom\n"}])
    before = store.server_time_ms()

    due = store.retry(result.id, "default", claimed.token, 100, {"errors": errors})

    assert due is not None
    assert due >= before + 100
    assert zscore(backend, keys.scheduled("default"), result.id) == due
    assert zscore(backend, keys.running("default"), result.id) is None
    fetched = backend.get_result(result.id)
    assert fetched.status == TaskResultStatus.READY
    assert [e.exception_class for e in fetched.errors] == [RuntimeError]
    wait_for_server_ms(store, due)
    assert store.promote(["default"], limit=10).promoted == 1
    assert [c.task_id for c in store.claim(["default"], "worker-b", LONG_LEASE_MS, 1)] == [result.id]
    assert backend.get_result(result.id).worker_ids == ["worker-a", "worker-b"]


# -- promote --------------------------------------------------------------------


def test_promote_reports_the_next_due_time(backend: RedisBackend) -> None:
    """Promote nothing early and report when the earliest scheduled task falls due."""
    run_after = datetime.now(UTC) + timedelta(hours=1)
    tasks.noop_task.using(run_after=run_after).enqueue()
    tasks.noop_task.using(run_after=run_after + timedelta(hours=1)).enqueue()

    promotion = backend.store.promote(["default"], limit=10)

    assert promotion.promoted == 0
    assert promotion.next_due_ms == codec.to_micros(run_after) // 1000
    assert promotion.server_now_ms < promotion.next_due_ms
    assert backend.store.promote(["empty"], limit=10).next_due_ms is None


def test_promote_moves_due_tasks_exactly_once_under_concurrency(
    backend: RedisBackend, make_backend: BackendFactory
) -> None:
    """Promote each due task exactly once when ten workers race to promote at the same moment."""
    store, keys = backend.store, backend.keys
    # Given 50 scheduled tasks with mixed priorities that have fallen due, and one not yet due
    run_after = datetime.now(UTC) + timedelta(hours=1)
    scheduled = [tasks.noop_task.using(priority=i % 7, run_after=run_after).enqueue().id for i in range(50)]
    later = tasks.noop_task.using(run_after=run_after + timedelta(hours=1)).enqueue()
    make_due(backend, scheduled)
    sweepers = [make_backend().store for _ in range(10)]
    start = threading.Barrier(len(sweepers))
    promoted: list[int] = []
    lock = threading.Lock()

    def sweep(sweeper: Store) -> None:
        start.wait()
        count = sweeper.promote(["default"], limit=1_000).promoted
        with lock:
            promoted.append(count)

    # When ten threads promote at once
    threads = [threading.Thread(target=sweep, args=(s,)) for s in sweepers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    # Then exactly 50 promotions happened in all, each task is ready once, the late one waits
    assert sum(promoted) == 50
    assert len(promoted) == 10
    ready = store.call(lambda c: c.zrange(keys.ready("default"), 0, -1, withscores=True))
    assert sorted(m.decode() for m, _ in ready) == sorted(scheduled)
    assert len({score for _, score in ready}) == 50
    assert store.call(lambda c: c.zrange(keys.scheduled("default"), 0, -1)) == [later.id.encode()]
    assert store.call(lambda c: int(c.get(keys.seq))) == 50
