"""The holes the "Trust" issue found in the scripts and the web side, each closed and pinned here."""

from __future__ import annotations

import sys
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from conveyor import RedisBackend
from conveyor.exceptions import ConveyorError, TaskTimeout
from conveyor.store import Store
from conveyor.transport import Transport
from django.tasks import TaskResultStatus
from django.tasks.exceptions import InvalidTask, TaskResultDoesNotExist
from redis.exceptions import ConnectionError as RedisConnectionError

from tests import tasks

from .conftest import BackendFactory

LEASE_MS = 60_000


def steady_reclaim(store: Store, queues: list[str], **overrides: Any) -> tuple[int, int, int]:
    """Reclaim right after another reclaim ran (no outage): return (requeued, failed, held ms)."""
    state = store.keys.reclaim_state
    now = store.server_time_ms()
    store.call(lambda c: c.delete(state) + c.hset(state, "tick", now))
    args: dict[str, Any] = dict(
        limit=100, max_deliveries=5, failed_ttl=60, lease_ms=LEASE_MS, outage_ms=10_000
    )
    args.update(overrides)
    done = store.reclaim(queues, **args)
    return done.requeued, done.failed, done.held_ms


def hget(backend: RedisBackend, task_id: str, name: str) -> str | None:
    raw = backend.store.call(lambda c: c.hget(backend.keys.task(task_id), name))
    return None if raw is None else raw.decode()


# -- 1. queue names never alias each other's keys ------------------------------------


def test_a_queue_named_like_anothers_schedule_does_not_claim_its_delayed_tasks(backend: RedisBackend) -> None:
    """Given a task delayed by an hour in "billing", a claim on "billing:scheduled" finds nothing."""
    later = datetime.now(UTC) + timedelta(hours=1)
    delayed = tasks.noop_task.using(queue_name="billing", run_after=later).enqueue()

    assert backend.store.claim(["billing:scheduled"], "w", LEASE_MS, 10) == []
    assert backend.store.claim(["billing"], "w", LEASE_MS, 10) == []
    assert backend.get_result(delayed.id).status == TaskResultStatus.READY


def test_a_queue_named_like_anothers_running_set_leaves_its_tasks_in_flight(backend: RedisBackend) -> None:
    """Given a task running in "jobs", a claim on "jobs:running" cannot pop it out of its lease."""
    result = tasks.noop_task.using(queue_name="jobs").enqueue()
    [claimed] = backend.store.claim(["jobs"], "w", LEASE_MS, 1)

    assert backend.store.claim(["jobs:running"], "w2", LEASE_MS, 10) == []
    running = backend.store.call(lambda c: c.zscore(backend.keys.running("jobs"), result.id))
    assert running is not None
    assert backend.store.renew([(result.id, "jobs", claimed.token)], LEASE_MS) == [True]


def test_a_queue_named_like_anothers_wake_list_does_not_break_its_enqueue(backend: RedisBackend) -> None:
    """Enqueue to "mail:wake" and then to "mail": both are stored and both can be claimed."""
    first = tasks.noop_task.using(queue_name="mail:wake").enqueue()
    second = tasks.noop_task.using(queue_name="mail").enqueue()

    claimed = backend.store.claim(["mail", "mail:wake"], "w", LEASE_MS, 10)
    assert sorted(c.task_id for c in claimed) == sorted([first.id, second.id])


@pytest.mark.parametrize("queue", ["a:b:c", "{braces}", "a}b{", "ünïcode ✓", "q" * 1024])
def test_queue_names_with_any_characters_work_end_to_end(backend: RedisBackend, queue: str) -> None:
    """Store, claim and finish a task in queues whose names hold ':', braces, unicode or 1,024 chars."""
    result = tasks.calculate_meaning_of_life.using(queue_name=queue).enqueue()
    [claimed] = backend.store.claim([queue], "w", LEASE_MS, 1)

    assert backend.store.finish(result.id, queue, claimed.token, "SUCCESSFUL", 60, {"result": "42"})
    assert backend.get_result(result.id).return_value == 42
    assert queue in backend.store.known_queues()


@pytest.mark.parametrize(
    ("queue", "reason"),
    [
        ("", "non-empty"),
        ("a,b", "comma"),
        ("tab\there", "control character"),
        (" padded", "white space"),
        ("q" * 1025, "at most 1024"),
    ],
)
def test_unusable_queue_names_are_refused_at_enqueue(backend: RedisBackend, queue: str, reason: str) -> None:
    """Refuse names the worker could not select (commas, blanks) or that would bloat every log line."""
    with pytest.raises(InvalidTask, match=reason):
        tasks.noop_task.using(queue_name=queue).enqueue()


def test_an_enqueue_meeting_a_key_of_the_wrong_type_writes_nothing(backend: RedisBackend) -> None:
    """A script error must not leave half a transition: every key's type is checked before a write."""
    keys = backend.keys
    backend.store.call(lambda c: c.set(keys.wake("default"), "not a list"))
    before = set(backend.store.call(lambda c: list(c.scan_iter(match=keys.tag + "*"))))

    with pytest.raises(ConveyorError, match="WRONGTYPE"):
        tasks.noop_task.enqueue()

    after = set(backend.store.call(lambda c: list(c.scan_iter(match=keys.tag + "*"))))
    assert after == before


# -- 3. fencing by delivery, not by worker id ------------------------------------------


def test_a_stale_delivery_of_the_same_worker_id_cannot_finish(backend: RedisBackend) -> None:
    """Given worker w lost a task and claimed it again, the first delivery's finish is refused."""
    store = backend.store
    result = tasks.noop_task.enqueue()
    [stale] = store.claim(["default"], "w", 0, 1)  # a lease that has already run out
    assert steady_reclaim(store, ["default"])[0] == 1
    [fresh] = store.claim(["default"], "w", LEASE_MS, 1)
    assert stale.token != fresh.token

    assert store.finish(result.id, "default", stale.token, "SUCCESSFUL", 60, {"result": "1"}) is False
    assert store.renew([(result.id, "default", stale.token)], LEASE_MS) == [False]
    assert store.retry(result.id, "default", stale.token, 0, {}) is None
    assert store.release(result.id, "default", stale.token) is False
    assert hget(backend, result.id, "status") == "RUNNING"
    assert store.finish(result.id, "default", fresh.token, "SUCCESSFUL", 60, {"result": "2"}) is True
    assert backend.get_result(result.id).return_value == 2


# -- 11. replays: a call sent again after its reply was lost ---------------------------


def test_a_replayed_finish_is_reported_as_stored(backend: RedisBackend) -> None:
    """The same finish sent twice (a retry after a lost reply) succeeds twice and changes nothing more."""
    store = backend.store
    result = tasks.noop_task.enqueue()
    [claimed] = store.claim(["default"], "w", LEASE_MS, 1)

    assert store.finish(result.id, "default", claimed.token, "SUCCESSFUL", 60, {"result": "1"})
    assert store.finish(result.id, "default", claimed.token, "SUCCESSFUL", 60, {"result": "9"})
    assert backend.get_result(result.id).return_value == 1


def test_a_replayed_claim_returns_what_it_claimed_and_claims_nothing_more(backend: RedisBackend) -> None:
    """The same claim call sent twice hands back the same tasks; the next ready task stays ready."""
    store = backend.store
    first, second = tasks.noop_task.enqueue(), tasks.noop_task.enqueue()
    calls = store.claim_calls(["default"], "w", LEASE_MS, 1, "w:7")

    once = store.run(calls)
    again = store.run(calls)

    assert [c.task_id for c in store.parse_claimed(once, calls, ["default"])[0]] == [first.id]
    assert (
        store.parse_claimed(again, calls, ["default"])[0] == store.parse_claimed(once, calls, ["default"])[0]
    )
    assert hget(backend, second.id, "status") == "READY"


def test_a_claim_whose_reply_is_lost_is_not_orphaned_by_the_retry(
    backend: RedisBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The transport sends a call again when the connection drops after Redis ran it: no task is orphaned."""
    store = backend.store
    first, second = tasks.noop_task.enqueue(), tasks.noop_task.enqueue()
    real_read = Transport._read
    dropped: list[bool] = []

    def drop_first_reply(conn: Any, count: int) -> list[Any]:
        if not dropped:
            dropped.append(True)
            conn.read_response()  # Redis ran the claim; its reply is then lost with the connection
            raise RedisConnectionError("connection reset")
        return real_read(conn, count)

    monkeypatch.setattr(Transport, "_read", staticmethod(drop_first_reply))
    claimed = store.claim(["default"], "w", LEASE_MS, 1, "w:1")

    assert dropped
    assert [c.task_id for c in claimed] == [first.id]
    assert hget(backend, second.id, "status") == "READY"  # not claimed by the retry and lost


# -- started_at is the first attempt's --------------------------------------------------


def test_started_at_stays_the_first_attempts_while_last_attempted_at_moves(backend: RedisBackend) -> None:
    """Django keeps started_at for the first attempt and last_attempted_at for the latest."""
    store = backend.store
    result = tasks.noop_task.enqueue()
    [first] = store.claim(["default"], "w", LEASE_MS, 1)
    store.retry(result.id, "default", first.token, 0, {})
    time.sleep(0.01)
    store.promote(["default"], limit=10)
    [second] = store.claim(["default"], "w", LEASE_MS, 1)

    again = backend.get_result(result.id)
    assert second.fields[b"started_at"] == first.fields[b"started_at"]
    assert again.last_attempted_at is not None and again.started_at is not None
    assert again.last_attempted_at > again.started_at


# -- 2. an outage longer than a lease: live owners renew before anyone reclaims -----------


def test_after_an_outage_reclaim_holds_off_for_a_lease(backend: RedisBackend) -> None:
    """Given no reclaim by anyone for longer than the outage gap, expired leases are not taken at once."""
    store, keys = backend.store, backend.keys
    live, dead = tasks.noop_task.enqueue(), tasks.noop_task.enqueue()
    [mine] = store.claim(["default"], "live", 0, 1)
    store.claim(["default"], "dead", 0, 1)
    # Given: the last reclaim anyone made was 40 s ago (Redis was down), so both leases ran out.
    store.call(lambda c: c.hset(keys.reclaim_state, "tick", store.server_time_ms() - 40_000))
    args = dict(limit=100, max_deliveries=5, failed_ttl=60, lease_ms=500, outage_ms=10_000)

    # When: a worker reclaims as Redis comes back, and the live owner renews during the hold.
    first = store.reclaim(["default"], **args)
    assert (first.requeued, first.failed) == (0, 0) and first.held_ms > 0
    assert store.renew([(live.id, "default", mine.token)], LEASE_MS) == [True]
    deadline = time.monotonic() + 10
    while (done := store.reclaim(["default"], **args)).held_ms and time.monotonic() < deadline:
        time.sleep(0.05)

    # Then: only the dead owner's task came back.
    assert done.requeued == 1
    assert hget(backend, live.id, "status") == "RUNNING"
    assert hget(backend, dead.id, "status") == "READY"


def test_reclaim_in_steady_state_does_not_hold(backend: RedisBackend) -> None:
    """Reclaims a moment apart take expired leases back at once."""
    store = backend.store
    tasks.noop_task.enqueue()
    store.claim(["default"], "w", 0, 1)

    assert steady_reclaim(store, ["default"]) == (1, 0, 0)


# -- 5. a rolling deploy: tasks newer than the worker go back, unrun -------------------


def test_postpone_undoes_the_claim_and_schedules_the_task(backend: RedisBackend) -> None:
    """No attempt, no delivery, no worker id stays behind; the task is due after the delay."""
    store, keys = backend.store, backend.keys
    result = tasks.noop_task.enqueue()
    [claimed] = store.claim(["default"], "old-worker", LEASE_MS, 1)
    before = store.server_time_ms()

    (due,) = store.run([store.postpone_call(result.id, "default", claimed.token, 5_000)])

    assert int(due) >= before + 5_000
    assert backend.store.call(lambda c: c.zscore(keys.scheduled("default"), result.id)) == int(due)
    fresh = backend.get_result(result.id)
    assert (fresh.status, fresh.worker_ids, fresh.started_at) == (TaskResultStatus.READY, [], None)
    assert hget(backend, result.id, "deliveries") == "0"
    assert hget(backend, result.id, "unknown_since") is not None


# -- 7. the web side imports nothing outside the allow-list ------------------------------


def test_get_result_of_a_planted_path_outside_the_allow_list_imports_nothing(backend: RedisBackend) -> None:
    """A record naming `this.x` raises TaskResultDoesNotExist and the module `this` is never imported."""
    from tests.worker.conftest import good_record, plant

    sys.modules.pop("this", None)
    task_id = plant(backend, good_record("this.x"))

    with pytest.raises(TaskResultDoesNotExist, match="not under an allowed module"):
        backend.get_result(task_id)
    assert "this" not in sys.modules


def test_get_result_of_a_record_that_fails_to_resolve_is_a_clear_error(backend: RedisBackend) -> None:
    """Any exception while resolving a stored record becomes TaskResultDoesNotExist, not a 500."""
    from tests.worker.conftest import good_record, plant

    broken = plant(backend, good_record("tests.worker.broken_module.run"))
    odd_time = plant(backend, good_record(started_at="99999999999999999999"))

    for task_id in (broken, odd_time):
        with pytest.raises(TaskResultDoesNotExist):
            backend.get_result(task_id)


# -- 8. two projects on one prefix ------------------------------------------------------


def test_check_reports_a_prefix_owned_by_another_project(make_backend: BackendFactory) -> None:
    """check() names the other project (conveyor.E004) instead of letting them fail each other's tasks."""
    ours = make_backend(PROJECT="shop")
    theirs = make_backend(PROJECT="blog")
    assert ours.store.claim_project("shop") == "shop"

    assert ours.check() == []
    [error] = theirs.check()
    assert error.id == "conveyor.E004"
    assert "'shop'" in error.msg and "'blog'" in error.msg


def test_task_timeout_is_a_timeout_error() -> None:
    """TaskTimeout subclasses TimeoutError, the shape proposed for Django's own timeouts."""
    assert issubclass(TaskTimeout, TimeoutError)
