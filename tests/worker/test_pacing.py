"""Pacing: how many processors cycle at once (one for short CPU-bound tasks, more when they wait)."""

from __future__ import annotations

import pytest
from conveyor_worker.loop import PARALLEL_ABOVE, PARK_ABOVE, SPILL_BELOW, pace
from django.tasks import TaskResultStatus

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
    wait_until(lambda: worker.worker._idle == 4 or None, what="every processor idle")

    results = [worker_tasks.record_interval.enqueue(1.0) for _ in range(4)]

    intervals = [wait_finished(b, r.id).return_value for r in results]
    assert max(start for start, _ in intervals) < min(end for _, end in intervals), intervals
    assert worker.stop() == 0
