"""At-least-once: leases are renewed while a task runs, and a dead worker's tasks come back."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest
from django.tasks import TaskResultStatus

from tests import tasks

from . import worker_tasks
from .conftest import (
    DEADLINE,
    SpawnWorker,
    WorkerFactory,
    lines_of,
    real_backend,
    status_of,
    wait_finished,
    wait_for_status,
    wait_until,
)


def test_a_task_longer_than_its_lease_is_renewed_not_handed_to_a_second_worker(
    backend: object, make_worker: WorkerFactory, scratch: Path
) -> None:
    """Given two workers with 2 s leases, a 6 s task runs once: its lease is renewed, never reclaimed."""
    b = real_backend()
    result = tasks.slow_append_line.enqueue(str(scratch), "ran", 6)

    # Given: one worker holds the task; a second one reclaims expired leases every 0.5 s.
    first = make_worker(lease=2.0).start()
    wait_for_status(b, result.id, "RUNNING")
    second = make_worker(lease=2.0).start()

    # When: the task runs three times as long as a lease.
    finished = wait_finished(b, result.id)
    assert first.stop() == 0 and second.stop() == 0

    # Then: one delivery, one run, no WorkerLost.
    assert finished.status == TaskResultStatus.SUCCESSFUL
    assert finished.attempts == 1
    assert finished.worker_ids == [first.worker_id]
    assert finished.errors == []
    assert lines_of(scratch) == ["ran"]


@pytest.mark.subprocess
def test_a_sigkilled_workers_task_is_reclaimed_by_another_after_its_lease(
    backend: object, spawn_worker: SpawnWorker, tmp_path: Path
) -> None:
    """Given worker A running a task, when A is SIGKILLed, B runs it once A's lease has expired."""
    b = real_backend()
    marker = tmp_path / "deliveries"
    result = worker_tasks.slow_first_time.enqueue(str(marker), 60)

    # Given: A has claimed the task and is in the middle of it.
    a = spawn_worker("--lease", "2", "--concurrency", "1")
    a.wait_event("task_started", task_id=result.id)
    # When: A dies without a word.
    a.kill()
    assert status_of(b, result.id) == "RUNNING"
    worker_b = spawn_worker("--lease", "2", "--concurrency", "1")

    # Then: B picks it up after the lease expired, and it succeeds.
    finished = wait_finished(b, result.id)
    worker_b.send(signal.SIGTERM)
    assert worker_b.wait_exit() == 0
    assert finished.status == TaskResultStatus.SUCCESSFUL
    assert finished.return_value == "fast"
    assert finished.worker_ids == [a.worker_id, worker_b.worker_id]
    assert finished.attempts == len(finished.worker_ids) == 2
    assert [e.exception_class_path for e in finished.errors] == ["conveyor.exceptions.WorkerLost"]
    assert f"lease expired on worker {a.worker_id}" in finished.errors[0].traceback
    assert lines_of(marker) == ["ran", "ran"]


@pytest.mark.subprocess
def test_a_second_signal_exits_at_once_and_the_task_comes_back_through_its_lease(
    backend: object, spawn_worker: SpawnWorker, make_worker: WorkerFactory, tmp_path: Path
) -> None:
    """Given a draining worker, a second SIGTERM exits non-zero now; its task is recovered later."""
    b = real_backend()
    marker = tmp_path / "deliveries"
    result = worker_tasks.slow_first_time.enqueue(str(marker), 60)
    a = spawn_worker("--lease", "2", "--concurrency", "1", "--shutdown-timeout", "60")
    a.wait_event("task_started", task_id=result.id)

    # Given: the first SIGTERM started a drain that would wait up to 60 s for the task.
    a.send(signal.SIGTERM)
    a.wait_event("worker_draining")
    # When: a second signal arrives.
    a.send(signal.SIGTERM)

    # Then: the process exits now with 128 + SIGTERM, leaving the task to its lease.
    assert a.wait_exit(timeout=10) == 128 + signal.SIGTERM
    assert status_of(b, result.id) == "RUNNING"
    later = make_worker(lease=2.0).start()
    finished = wait_finished(b, result.id)
    assert later.stop() == 0
    assert finished.status == TaskResultStatus.SUCCESSFUL
    assert finished.worker_ids == [a.worker_id, later.worker_id]
    assert [e.exception_class_path for e in finished.errors] == ["conveyor.exceptions.WorkerLost"]


@pytest.mark.subprocess
def test_a_task_that_kills_its_worker_is_failed_after_max_deliveries(
    backend: object, spawn_worker: SpawnWorker
) -> None:
    """A poison pill is delivered --max-deliveries times, then FAILED with one WorkerLost each."""
    b = real_backend()
    pill = tasks.kill_own_worker.enqueue()
    after = tasks.calculate_meaning_of_life.using(priority=-10).enqueue()

    # Given: workers are restarted whenever they die (as a Deployment would).
    exits = []
    for _ in range(20):
        if status_of(b, pill.id) == "FAILED":
            break
        w = spawn_worker("--batch", "--lease", "1", "--max-deliveries", "3", "--concurrency", "1")
        exits.append(w.wait_exit())
        # Give the lease of a killed worker the time to expire before the next start.
        if exits[-1] != 0:
            expired_at = b.store.server_time_ms() + 1_100
            wait_until(lambda t=expired_at: b.store.server_time_ms() > t, what="the lease to expire")
    else:
        pytest.fail(f"the poison pill was never given up on; worker exits: {exits}")

    # Then: three deliveries killed three workers, and the task is FAILED, not looping forever.
    assert exits.count(-signal.SIGKILL) == 3
    raw = b.store.get(pill.id)
    assert raw[b"status"] == b"FAILED"
    assert raw[b"deliveries"] == b"3"
    errors = json.loads(raw[b"errors"])
    assert [e["exception_class_path"] for e in errors] == ["conveyor.exceptions.WorkerLost"] * 3
    assert "giving up after 3 deliveries" in errors[-1]["traceback"]
    result = b.get_result(pill.id)
    assert result.status == TaskResultStatus.FAILED
    assert result.attempts == len(result.worker_ids) == 3
    # The queue moved on: the next task ran (in one of the restarted workers, or after).
    w = spawn_worker("--batch", "--lease", "1")
    assert w.wait_exit(DEADLINE) == 0
    assert b.get_result(after.id).return_value == 42


@pytest.mark.subprocess
def test_a_paused_workers_late_outcome_is_discarded_once_its_lease_was_taken(
    backend: object, spawn_worker: SpawnWorker, make_worker: WorkerFactory, tmp_path: Path
) -> None:
    """Given worker A frozen past its lease, B runs the task; A's outcome, when it wakes, is refused."""
    b = real_backend()
    marker = tmp_path / "deliveries"
    result = worker_tasks.slow_first_time.enqueue(str(marker), 3)
    a = spawn_worker("--lease", "1", "--concurrency", "1")
    a.wait_event("task_started", task_id=result.id)

    # Given: A is frozen (SIGSTOP: a long GC pause, a throttled container) past its lease.
    a.send(signal.SIGSTOP)
    try:
        later = make_worker(lease=5.0).start()
        finished = wait_finished(b, result.id)  # B reclaimed and ran it
        assert later.stop() == 0
    finally:
        # When: A wakes up and its slow first delivery finishes.
        a.send(signal.SIGCONT)
    a.wait_event("lease_lost", task_id=result.id)

    # Then: the stored outcome is B's; A's late success was discarded, not written over it.
    stored = b.get_result(result.id)
    assert stored.status == TaskResultStatus.SUCCESSFUL
    assert stored.return_value == "fast" == finished.return_value
    assert stored.worker_ids == [a.worker_id, later.worker_id]
    assert stored.finished_at == finished.finished_at
    assert not [e for e in a.events("task_finished") if e["task_id"] == result.id]
    a.send(signal.SIGTERM)
    assert a.wait_exit() == 0
