"""Pacing (how many processors cycle at once) and claiming ahead (several tasks per round trip)."""

from __future__ import annotations

from typing import Any

import pytest
from conveyor import RedisBackend
from conveyor_worker import pacing, wakeups
from conveyor_worker.pacing import pace
from conveyor_worker.timings import PARALLEL_ABOVE, PARK_ABOVE, SPILL_BELOW
from django.tasks import TaskResult, TaskResultStatus
from django.tasks.signals import task_finished

from tests import tasks

from . import worker_tasks
from .conftest import WorkerFactory, real_backend, wait_finished, wait_for_status, wait_until

BUSY = (PARK_ABOVE + PARALLEL_ABOVE) / 2  # one core saturated by threads that share the GIL


@pytest.mark.parametrize(
    ("idle", "cycling", "waiting", "load", "expected"),
    [
        (7, 1, True, SPILL_BELOW / 2, "spill"),  # the processor waits on I/O: add one
        (7, 1, True, BUSY, "hold"),  # one processor fills the core: another only adds GIL hand-overs
        (7, 1, False, SPILL_BELOW / 2, "hold"),  # nothing waits: nobody to wake
        (6, 0, True, BUSY, "spill"),  # every busy processor is inside a long task
        (7, 1, True, PARALLEL_ABOVE + 0.5, "spill"),  # tasks run outside the GIL on a second core
        (0, 8, True, SPILL_BELOW / 2, "hold"),  # no idle processor left to wake
        (5, 3, True, BUSY, "park"),  # several cycle on one saturated core: park one
        (5, 3, True, PARALLEL_ABOVE + 0.5, "spill"),  # ...unless they use more than one core
        (6, 1, True, (SPILL_BELOW + PARK_ABOVE) / 2, "hold"),  # between the bounds: stay put
    ],
)
def test_pace_decides_from_idle_cycling_waiting_and_load(
    idle: int, cycling: int, waiting: bool, load: float, expected: str
) -> None:
    """The pacing rule, case by case."""
    assert pace(idle=idle, cycling=cycling, waiting=waiting, load=load) == expected


def test_a_task_holding_the_gil_does_not_hold_up_the_queue(
    backend: object, make_worker: WorkerFactory
) -> None:
    """With two slots, a task enqueued while a CPU-bound one runs finishes before that one does."""
    b = real_backend()
    worker = make_worker(concurrency=2).start()
    hog = worker_tasks.spin.enqueue(5.0)
    wait_for_status(b, hog.id, "RUNNING")

    quick = tasks.calculate_meaning_of_life.enqueue()

    assert wait_finished(b, quick.id).return_value == 42
    assert b.get_result(hog.id).status == TaskResultStatus.RUNNING, "the quick task waited for the CPU hog"
    assert worker.stop() == 0


def test_tasks_that_wait_spread_over_idle_processors(backend: object, make_worker: WorkerFactory) -> None:
    """Tasks enqueued into an idle worker with four slots, each sleeping, all run at the same time."""
    b = real_backend()
    worker = make_worker(concurrency=4).start()
    wait_until(lambda: worker.worker.wakeups.idle == 4 or None, what="every processor idle")

    results = [worker_tasks.record_interval.enqueue(1.0) for _ in range(4)]

    intervals = [wait_finished(b, r.id).return_value for r in results]
    assert max(start for start, _ in intervals) < min(end for _, end in intervals), intervals
    assert worker.stop() == 0


@pytest.fixture
def claims_of_two(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make every claim ask for two tasks, whatever the backlog and the idle processors."""
    monkeypatch.setattr(wakeups, "batch_size", lambda **_: 2)


def test_a_task_claimed_ahead_of_a_long_one_is_taken_by_an_idle_processor(
    backend: object, make_worker: WorkerFactory, claims_of_two: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One processor claims a long task and a short one; the short one runs on the other processor."""
    monkeypatch.setattr(pacing, "pace", lambda **_: "hold")  # only the hand-over can wake the other
    b = real_backend()
    worker = make_worker(concurrency=2).start()
    wait_until(lambda: worker.worker.wakeups.idle == 2 or None, what="both processors idle")
    long = worker_tasks.record_interval.using(priority=10).enqueue(5.0)
    short = tasks.calculate_meaning_of_life.enqueue()

    assert wait_finished(b, short.id).return_value == 42
    assert b.get_result(long.id).status == TaskResultStatus.RUNNING, "the short task waited for the long one"
    assert b.get_result(short.id).worker_ids == [worker.worker_id]
    assert worker.stop() == 0


def test_a_success_recorded_later_is_stored_while_the_next_task_runs(
    backend: object, make_worker: WorkerFactory, claims_of_two: None
) -> None:
    """A success deferred to the next round trip is stored (and task_finished sent) while a long task runs."""
    b = real_backend()
    finished: list[str] = []

    def receiver(sender: type, task_result: TaskResult, **kwargs: Any) -> None:
        if sender is RedisBackend:
            finished.append(task_result.id)

    task_finished.connect(receiver, dispatch_uid="pacing-finished")
    try:
        quick = tasks.calculate_meaning_of_life.using(priority=10).enqueue()
        long = worker_tasks.record_interval.enqueue(5.0)
        worker = make_worker(concurrency=1).start()

        wait_for_status(b, long.id, "RUNNING")
        assert wait_finished(b, quick.id).return_value == 42
        wait_until(lambda: quick.id in finished or None, what="task_finished for the quick task")
        assert b.get_result(long.id).status == TaskResultStatus.RUNNING
        assert worker.stop(timeout=30) == 0
    finally:
        task_finished.disconnect(dispatch_uid="pacing-finished")


def test_a_drain_gives_back_tasks_claimed_ahead_as_never_started(
    backend: object, make_worker: WorkerFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """At the shutdown timeout, tasks claimed ahead go back to their queue without this worker's id."""
    monkeypatch.setattr(wakeups, "batch_size", lambda **_: 3)
    b = real_backend()
    running = worker_tasks.record_interval.using(priority=10).enqueue(3.0)
    ahead = [tasks.calculate_meaning_of_life.using(priority=5).enqueue(), tasks.noop_task.enqueue()]
    worker = make_worker(concurrency=1, shutdown_timeout=0.3).start()
    wait_for_status(b, running.id, "RUNNING")

    assert worker.stop() == 0

    stored = {r.id: b.get_result(r.id) for r in [running, *ahead]}
    assert all(r.status == TaskResultStatus.READY for r in stored.values()), stored
    assert stored[running.id].worker_ids == [worker.worker_id]  # it did start here
    assert [stored[r.id].worker_ids for r in ahead] == [[], []]
    ready = b.store.call(lambda c: c.zrange(b.keys.ready("default"), 0, -1))
    assert sorted(i.decode() for i in ready) == sorted(stored)


def test_a_round_trip_sent_before_a_long_last_task_is_read_without_waiting_for_it(
    backend: object, make_worker: WorkerFactory, claims_of_two: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Records and claims sent ahead of a batch's long last task land within moments, not after it."""
    monkeypatch.setattr(pacing, "pace", lambda **_: "hold")  # only hand-overs wake the other processor
    b = real_backend()
    worker = make_worker(concurrency=2).start()
    wait_until(lambda: worker.worker.wakeups.idle == 2 or None, what="both processors idle")

    first = tasks.calculate_meaning_of_life.using(priority=10).enqueue()  # claimed with the long one
    long = worker_tasks.record_interval.using(priority=5).enqueue(5.0)
    later = [tasks.calculate_meaning_of_life.enqueue() for _ in range(2)]  # claimed ahead of the long one

    for result in [first, *later]:
        assert wait_finished(b, result.id).return_value == 42
    assert b.get_result(long.id).status == TaskResultStatus.RUNNING, "the round trip waited for the long task"
    assert worker.stop() == 0
