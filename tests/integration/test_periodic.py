"""Periodic tasks on real Redis: one enqueue per tick however many race; catch-up, pending, stale."""

from __future__ import annotations

import threading
from typing import Any

import pytest
from conveyor import RedisBackend
from conveyor.store import TICK_ENQUEUED, TICK_LOST
from conveyor_worker.scheduler import Scheduler, plans_of
from django.core.management import call_command
from django.tasks import TaskResultStatus

from tests import tasks
from tests.integration.conftest import BackendFactory

ENTRY = {
    "name": "every-minute",
    "task": "tests.tasks.noop_task",
    "every": 60,
    "args": [1],
    "kwargs": {"k": "v"},
}


def scheduler(backend: RedisBackend, worker_id: str = "w1") -> Scheduler:
    return Scheduler(backend.store, plans_of(backend), backend=backend.alias, worker_id=worker_id)


def entry_hash(backend: RedisBackend, name: str) -> dict[bytes, bytes]:
    return backend.store.call(lambda c: c.hgetall(backend.keys.periodic(name)))  # type: ignore[no-any-return]


def set_next(backend: RedisBackend, name: str, next_ms: int) -> None:
    backend.store.call(lambda c: c.hset(backend.keys.periodic(name), "next", next_ms))


def ready_ids(backend: RedisBackend, queue: str = "default") -> list[str]:
    return [m.decode() for m in backend.store.call(lambda c: c.zrange(backend.keys.ready(queue), 0, -1))]


def test_the_first_look_only_notes_the_next_tick(make_backend: BackendFactory) -> None:
    backend = make_backend(SCHEDULE=[ENTRY])
    assert scheduler(backend).run_due(0.0) == 0
    now = backend.store.server_time_ms()
    stored = entry_hash(backend, "every-minute")
    assert now + 58_000 < int(stored[b"next"]) <= now + 60_000
    assert ready_ids(backend) == []


def test_a_due_tick_enqueues_a_task_like_enqueue_does(make_backend: BackendFactory) -> None:
    backend = make_backend(SCHEDULE=[ENTRY])
    s = scheduler(backend)
    s.run_due(0.0)
    due = backend.store.server_time_ms() - 1
    set_next(backend, "every-minute", due)
    # When: the tick is due and the scheduler looks.
    assert s.run_due(1.0) == 1
    (task_id,) = ready_ids(backend)
    stored = entry_hash(backend, "every-minute")
    assert stored[b"last_id"].decode() == task_id
    assert int(stored[b"next"]) == due + 60_000  # the phase is kept
    # Then: the record reads back like any task and has the fields enqueue writes.
    result = backend.get_result(task_id)
    assert result.status == TaskResultStatus.READY
    assert (result.args, result.kwargs, result.task.module_path) == ([1], {"k": "v"}, "tests.tasks.noop_task")
    plain = tasks.noop_task.using(backend=backend.alias)
    other = backend.enqueue(plain, [1], {"k": "v"})
    mine, theirs = backend.store.get(task_id), backend.store.get(other.id)
    assert set(mine) == set(theirs)
    for name in set(mine) - {b"enqueued_at", b"score"}:
        assert mine[name] == theirs[name], name
    assert abs(int(mine[b"enqueued_at"]) // 1000 - due) < 5_000


def test_racing_schedulers_enqueue_each_tick_once(make_backend: BackendFactory) -> None:
    backend = make_backend(SCHEDULE=[ENTRY])
    racers = [scheduler(make_backend(SCHEDULE=[ENTRY]), f"w{i}") for i in range(8)]
    racers[0].run_due(0.0)
    fired: list[int] = []
    for tick in range(20):
        set_next(backend, "every-minute", backend.store.server_time_ms() - 1)
        # Given: eight workers that all read the tick as due; when: they fire at once.
        barrier = threading.Barrier(len(racers))

        def race(s: Scheduler, moment: float = float(tick + 1), barrier: threading.Barrier = barrier) -> None:
            barrier.wait()
            fired.append(s.run_due(moment))

        threads = [threading.Thread(target=race, args=(s,)) for s in racers]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    # Then: one task per tick.
    assert sum(fired) == 20
    assert len(ready_ids(backend)) == 20


def test_a_repeated_tick_call_changes_nothing(make_backend: BackendFactory) -> None:
    backend = make_backend(SCHEDULE=[ENTRY])
    scheduler(backend).run_due(0.0)
    due = backend.store.server_time_ms() - 1
    set_next(backend, "every-minute", due)
    fp = entry_hash(backend, "every-minute")[b"fp"].decode()
    call: dict[str, Any] = dict(
        seen_ms=due, next_ms=due + 60_000, fingerprint=fp, mode="fire", skip_if_pending=False,
        queue="default", priority=0, fields={"v": "1", "task": "tests.tasks.noop_task", "queue": "default",
        "priority": "0", "backend": "default", "args": "[]", "kwargs": "{}", "status": "READY",
        "enqueued_at": "0"},
    )  # fmt: skip
    assert backend.store.tick("every-minute", task_id="a" * 32, **call) == TICK_ENQUEUED
    # Given: the reply was lost and the call is sent again (or another worker read the same tick).
    assert backend.store.tick("every-minute", task_id="b" * 32, **call) == TICK_LOST
    assert ready_ids(backend) == ["a" * 32]


def test_a_tick_not_due_by_the_server_clock_does_not_fire(make_backend: BackendFactory) -> None:
    backend = make_backend(SCHEDULE=[ENTRY])
    s = scheduler(backend)
    s.run_due(0.0)
    assert s.run_due(100.0) == 0
    assert ready_ids(backend) == []


@pytest.mark.parametrize(
    ("catch_up", "late_ms", "expected"), [("once", 600_000, 1), ("skip", 600_000, 0), ("skip", 5_000, 1)]
)
def test_missed_ticks_follow_the_catch_up_policy(
    make_backend: BackendFactory, catch_up: str, late_ms: int, expected: int
) -> None:
    backend = make_backend(SCHEDULE=[{**ENTRY, "catch_up": catch_up}])
    s = scheduler(backend)
    s.run_due(0.0)
    now = backend.store.server_time_ms()
    set_next(backend, "every-minute", now - late_ms)
    # When: no worker ran for late_ms (ten ticks missed, or one tick a little late).
    assert s.run_due(1.0) == expected
    assert len(ready_ids(backend)) == expected
    stored = entry_hash(backend, "every-minute")
    nxt = int(stored[b"next"])
    # Then: the entry jumps to its next future tick, in phase with the old ones.
    assert now < nxt <= now + 60_000 + 1_000 and (nxt - (now - late_ms)) % 60_000 == 0
    assert int(stored.get(b"skipped", b"0")) == 1 - expected


def test_skip_if_pending_waits_for_the_last_task(make_backend: BackendFactory) -> None:
    backend = make_backend(SCHEDULE=[{**ENTRY, "skip_if_pending": True}])
    s = scheduler(backend)
    s.run_due(0.0)
    set_next(backend, "every-minute", backend.store.server_time_ms() - 1)
    assert s.run_due(1.0) == 1
    (first,) = ready_ids(backend)
    # Given: the last task is still READY; when the next tick comes, it is skipped.
    set_next(backend, "every-minute", backend.store.server_time_ms() - 1)
    assert s.run_due(2.0) == 0
    assert int(entry_hash(backend, "every-minute")[b"skipped"]) == 1
    # Given: it finished; then the next tick enqueues again.
    backend.store.call(lambda c: c.hset(backend.keys.task(first), "status", "SUCCESSFUL"))
    set_next(backend, "every-minute", backend.store.server_time_ms() - 1)
    assert s.run_due(3.0) == 1


def test_a_changed_timing_restarts_the_entry_from_now(make_backend: BackendFactory) -> None:
    backend = make_backend(SCHEDULE=[ENTRY])
    scheduler(backend).run_due(0.0)
    set_next(backend, "every-minute", backend.store.server_time_ms() - 1)
    # When: the next deploy declares the same name every 2 hours.
    changed = make_backend(SCHEDULE=[{**ENTRY, "every": 7200}])
    assert scheduler(changed).run_due(0.0) == 0
    now = backend.store.server_time_ms()
    assert now + 7_000_000 < int(entry_hash(backend, "every-minute")[b"next"]) <= now + 7_200_000
    assert ready_ids(backend) == []


def test_entries_no_longer_declared_stop_and_are_dropped(make_backend: BackendFactory) -> None:
    old = make_backend(SCHEDULE=[ENTRY, {**ENTRY, "name": "gone"}])
    scheduler(old).run_due(0.0)
    set_next(old, "gone", old.store.server_time_ms() - 1)
    # When: the new deploy no longer declares "gone": its workers never fire it...
    new = make_backend(SCHEDULE=[ENTRY])
    assert scheduler(new).run_due(0.0) == 0
    assert ready_ids(new) == []
    # ...and once no worker has declared it for the stale period, a survey drops it.
    new.store.call(lambda c: c.zadd(new.keys.periodics, {"gone": 1}))
    new.store.survey_schedule([("every-minute", "default")], stale_ms=60_000, limit=100)
    assert entry_hash(new, "gone") == {}
    assert entry_hash(new, "every-minute") != {}


def test_check_reports_each_entry_whose_task_cannot_be_enqueued(make_backend: BackendFactory) -> None:
    backend = make_backend(
        queues=("default",),
        SCHEDULE=[
            ENTRY,
            {**ENTRY, "name": "missing", "task": "tests.tasks.no_such_task"},
            {**ENTRY, "name": "not-a-task", "task": "tests.tasks.os"},
            {**ENTRY, "name": "bad-queue", "queue": "elsewhere"},
            {**ENTRY, "name": "outside", "task": "django.utils.timezone.now"},
            {**ENTRY, "name": "too-high", "priority": 500},
        ],
    )
    errors = backend.check()
    assert [e.id for e in errors] == ["conveyor.E005"] * 5
    assert [e.msg.split(":")[0].rsplit(" ", 1)[1] for e in errors] == [
        "missing", "not-a-task", "bad-queue", "outside", "too-high",
    ]  # fmt: skip
    bad = make_backend(SCHEDULE=[{**ENTRY, "cron": "nope"}])
    assert [e.id for e in bad.check()] == ["conveyor.E001"]


def test_the_schedules_command_lists_next_run_and_last_task(
    make_backend: BackendFactory, configure_tasks: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    import json

    with configure_tasks(SCHEDULE=[ENTRY, {**ENTRY, "name": "nightly", "every": None, "cron": "0 3 * * *",
                                           "timezone": "Europe/Paris"}]):  # fmt: skip
        from django.tasks import task_backends

        backend = task_backends["default"]
        assert isinstance(backend, RedisBackend)
        s = scheduler(backend)
        s.run_due(0.0)
        set_next(backend, "every-minute", backend.store.server_time_ms() - 1)
        s.run_due(1.0)
        (task_id,) = ready_ids(backend)
        backend.store.call(lambda c: c.zadd(backend.keys.periodics, {"retired": 1}))
        call_command("conveyor", "schedules")
        text = capsys.readouterr().out
        call_command("conveyor", "schedules", "--json")
        rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
        backend.store.close()
    assert "every-minute" in text and task_id in text and "cron 0 3 * * * (Europe/Paris)" in text
    assert "retired" in text and "not declared" in text
    assert rows["every-minute"]["last_task_id"] == task_id and rows["every-minute"]["next_run"]
    assert rows["nightly"]["last_task_id"] is None and rows["nightly"]["declared"]
    assert rows["retired"]["declared"] is False
