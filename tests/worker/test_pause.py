"""A paused queue: its tasks wait (the worker does not spin on them), show in /metrics, run on resume."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from conveyor.ops import Operator
from conveyor_worker.probes import Probes
from django.tasks import TaskResultStatus

from tests import tasks

from . import worker_tasks
from .conftest import (
    BatchRunner,
    InProcessWorker,
    WorkerFactory,
    lines_of,
    real_backend,
    status_of,
    wait_finished,
    wait_until,
)
from .test_observability import metric

# How long the test watches an idle worker whose paused queue holds ready tasks. A worker that
# spun on them would claim thousands of times; an idle one claims once per blocking wait
# (2 s) and once per wake token.
WATCH = 3.0
IDLE_CLAIMS_MAX = 10


def count_claims(handle: InProcessWorker) -> Callable[[], int]:
    """Count the claim calls a worker builds (every claim, sent at once or ahead, is built by claim_calls)."""
    calls = [0]
    build = handle.store.claim_calls

    def counted(*args: Any, **kwargs: Any) -> Any:
        calls[0] += 1
        return build(*args, **kwargs)

    handle.store.claim_calls = counted  # type: ignore[method-assign]
    return lambda: calls[0]


def probes_for(handle: InProcessWorker, queues: Sequence[str]) -> Probes:
    """Return probes reading the worker's metrics and the queues' counts, as its health port would."""
    return Probes(
        store=handle.store,
        metrics=handle.metrics,
        queues=lambda: list(queues),
        alive=lambda: True,
        ready=lambda: True,
    )


def test_a_paused_queue_runs_nothing_and_costs_no_spinning_until_resumed(
    backend: object, make_worker: WorkerFactory, scratch: Path
) -> None:
    """Given a paused queue with ready tasks, the worker runs another queue's, idles; resume runs them."""
    b = real_backend()
    operator = Operator(b)
    held = [tasks.append_line.using(queue_name="held").enqueue(str(scratch), f"held {i}") for i in range(5)]
    operator.pause("held")

    # Given: a worker on both queues, the paused one full.
    handle = make_worker(concurrency=2)
    claims = count_claims(handle)
    handle.start()
    probes = probes_for(handle, ["held", "other"])
    on_other = tasks.append_line.using(queue_name="other")
    other = [on_other.enqueue(str(scratch), f"other {i}") for i in range(5)]

    # When: it runs the other queue's tasks...
    for r in other:
        assert wait_finished(b, r.id).status == TaskResultStatus.SUCCESSFUL
    # Then: nothing of the paused queue ran, and /metrics and /work tell it is paused.
    assert all(status_of(b, r.id) == "READY" for r in held)
    assert not [line for line in lines_of(scratch) if line.startswith("held")]
    text = probes.metrics_text()
    assert metric(text, "conveyor_queue_paused", queue="held") == 1
    assert metric(text, "conveyor_queue_paused", queue="other") == 0
    assert metric(text, "conveyor_queue_ready", queue="held") == 5
    assert metric(text, "conveyor_queue_work", queue="held") == 0  # paused: wants no slot
    status, body = probes.work_json()
    assert status == 200 and json.loads(body)["queues"]["held"]["work"] == 0

    # And: idle beside the paused queue's ready tasks, and as more arrive (one wake token each),
    # the worker claims a bounded number of times, however fast the machine.
    before = claims()
    more = [tasks.append_line.using(queue_name="held").enqueue(str(scratch), f"late {i}") for i in range(5)]
    time.sleep(WATCH)
    assert claims() - before <= IDLE_CLAIMS_MAX + len(more), claims() - before

    # When: the queue is resumed, its tasks run.
    operator.resume("held")
    for r in held + more:
        assert wait_finished(b, r.id).status == TaskResultStatus.SUCCESSFUL
    assert metric(probes.metrics_text(), "conveyor_queue_paused", queue="held") == 0
    assert handle.stop() == 0


def test_a_batch_run_ends_when_only_paused_queues_have_work(
    backend: object, run_batch: BatchRunner, scratch: Path
) -> None:
    """--batch drains what it may run and exits 0, leaving a paused queue's ready tasks for later."""
    b = real_backend()
    held = tasks.append_line.using(queue_name="held").enqueue(str(scratch), "held")
    Operator(b).pause("held")
    on_other = tasks.append_line.using(queue_name="other")
    other = [on_other.enqueue(str(scratch), f"other {i}") for i in range(3)]

    run_batch(concurrency=2)  # exits 0 within the deadline

    assert all(b.get_result(r.id).status == TaskResultStatus.SUCCESSFUL for r in other)
    assert status_of(b, held.id) == "READY"
    assert "held" not in lines_of(scratch)


def test_pausing_the_only_queue_of_a_busy_worker_lets_its_running_task_finish(
    backend: object, make_worker: WorkerFactory, scratch: Path
) -> None:
    """A pause stops claims, not running tasks: the running one finishes, the next one waits."""
    b = real_backend()
    gate = scratch.with_name("gate")
    first = worker_tasks.wait_for_file.enqueue(str(gate))
    second = tasks.noop_task.enqueue()
    handle = make_worker(concurrency=1).start()
    wait_until(lambda: status_of(b, first.id) == "RUNNING", what="the first task to run")

    Operator(b).pause("default")
    gate.touch()

    assert wait_finished(b, first.id).status == TaskResultStatus.SUCCESSFUL
    wait_until(lambda: handle.worker.busy == 0, what="the slot to free")
    assert status_of(b, second.id) == "READY"
    Operator(b).resume("default")
    assert wait_finished(b, second.id).status == TaskResultStatus.SUCCESSFUL
    assert handle.stop() == 0
