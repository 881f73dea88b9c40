"""The worker as a real process: signals, drain, Redis going away, --batch and --max-tasks."""

from __future__ import annotations

import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from django.tasks import TaskResultStatus

from devtools.redis_server import RedisProcess, free_port
from tests import tasks

from . import worker_tasks
from .conftest import (
    SpawnWorker,
    WorkerFactory,
    lines_of,
    real_backend,
    status_of,
    wait_finished,
    wait_for_status,
    zscore,
)

pytestmark = pytest.mark.subprocess


def test_sigterm_lets_the_running_task_finish_and_claims_nothing_new(
    backend: object, spawn_worker: SpawnWorker, scratch: Path
) -> None:
    """Given a task running, SIGTERM: not ready, no new claims, the task finishes, exit 0."""
    b = real_backend()
    running = tasks.slow_append_line.enqueue(str(scratch), "finished", 4)
    w = spawn_worker("--concurrency", "1", "--shutdown-timeout", "30", "--lease", "3")
    w.wait_event("task_started", task_id=running.id)
    w.wait_http("/readyz", 200)

    # When: the first SIGTERM arrives while the task runs.
    w.send(signal.SIGTERM)
    w.wait_event("worker_draining")
    late = tasks.append_line.enqueue(str(scratch), "late")

    # Then: the worker says not ready (but live) while it drains ...
    assert w.wait_http("/readyz", 503) == "not ready\n"
    assert w.http("/livez")[0] == 200
    assert w.proc.poll() is None, "the worker must wait for its running task"
    # ... lets the task finish, exits 0, and never claimed the late task.
    assert w.wait_exit() == 0
    assert wait_finished(b, running.id).status == TaskResultStatus.SUCCESSFUL
    assert status_of(b, late.id) == "READY"
    assert zscore(b, b.keys.ready("default"), late.id) is not None
    assert [e["task_id"] for e in w.events("task_started")] == [running.id]
    assert lines_of(scratch) == ["finished"]
    assert w.events("worker_stopped")[-1]["exit_code"] == 0


def test_a_task_longer_than_the_shutdown_timeout_goes_back_to_its_queue(
    backend: object, spawn_worker: SpawnWorker, make_worker: WorkerFactory, tmp_path: Path
) -> None:
    """A task longer than --shutdown-timeout goes back to its queue on SIGTERM; a later worker runs it."""
    b = real_backend()
    marker = tmp_path / "deliveries"
    result = worker_tasks.slow_first_time.enqueue(str(marker), 60)
    w = spawn_worker("--concurrency", "1", "--shutdown-timeout", "1", "--lease", "30")
    w.wait_event("task_started", task_id=result.id)

    # When: SIGTERM, and the task is still running when the shutdown timeout ends.
    w.send(signal.SIGTERM)

    # Then: the worker exits 0 and the task is READY in its queue again (not left to a 30 s lease).
    assert w.wait_exit() == 0
    released = w.events("task_released")
    assert [(e["task_id"], e["message"]) for e in released] == [
        (result.id, "task returned to its queue unfinished")
    ]
    assert status_of(b, result.id) == "READY"
    assert zscore(b, b.keys.ready("default"), result.id) is not None
    assert zscore(b, b.keys.running("default"), result.id) is None
    later = make_worker(batch=True).start()
    assert later.join() == 0
    finished = b.get_result(result.id)
    assert finished.status == TaskResultStatus.SUCCESSFUL
    assert finished.return_value == "fast"
    assert finished.errors == []  # a release is not a lost worker
    assert lines_of(marker) == ["ran", "ran"]


def test_the_worker_survives_a_redis_restart(
    backend: object,
    spawn_worker: SpawnWorker,
    own_redis: RedisProcess,
    tasks_on: Callable[[str], Any],
    scratch: Path,
) -> None:
    """Redis dies: /readyz 503, /livez 200; Redis returns: the same process runs new tasks."""
    with tasks_on(own_redis.url):
        b = real_backend()
        first = tasks.append_line.enqueue(str(scratch), "before")
        w = spawn_worker("--concurrency", "2", "--lease", "2", url=own_redis.url)
        wait_finished(b, first.id)
        w.wait_http("/readyz", 200)

        # When: Redis goes away (killed: nothing is saved).
        own_redis.stop()

        # Then: not ready, but still live (liveness never depends on Redis).
        w.wait_http("/readyz", 503)
        w.wait_event("redis_unavailable")
        assert w.http("/livez")[0] == 200
        assert w.http("/metrics")[0] == 200
        assert "conveyor_worker_up 0" in w.http("/metrics")[1]

        # When: Redis is back (empty).
        own_redis.start()

        # Then: the same process becomes ready and runs a task enqueued now.
        w.wait_http("/readyz", 200)
        after = tasks.append_line.enqueue(str(scratch), "after")
        assert wait_finished(b, after.id).status == TaskResultStatus.SUCCESSFUL
        assert w.proc.poll() is None
        w.wait_event("redis_recovered")
        assert lines_of(scratch) == ["before", "after"]
        w.send(signal.SIGTERM)
        assert w.wait_exit() == 0


def test_batch_runs_what_is_due_and_exits_zero(
    backend: object, run_cli: Callable[..., Any], scratch: Path
) -> None:
    """--batch drains the queues and exits 0."""
    b = real_backend()
    results = [tasks.append_line.enqueue(str(scratch), f"t{i}") for i in range(5)]

    done = run_cli("--batch", "--concurrency", "2")

    assert done.returncode == 0, done.stdout + done.stderr
    assert sorted(lines_of(scratch)) == [f"t{i}" for i in range(5)]
    assert all(b.get_result(r.id).status == TaskResultStatus.SUCCESSFUL for r in results)


def test_batch_gives_up_when_redis_stays_away_for_a_lease(run_cli: Callable[..., Any]) -> None:
    """A batch run is a job that must end: with no Redis for longer than a lease it exits 1."""
    # Given a Redis URL where nothing listens
    closed = f"redis://127.0.0.1:{free_port()}/0"

    # When a --batch worker with a 2 s lease starts against it
    done = run_cli("--batch", "--lease", "2", CONVEYOR_TEST_REDIS_URL=closed)

    # Then it gives up on its own (the run is bounded by run_cli's timeout) and says why
    assert done.returncode == 1, done.stdout + done.stderr
    assert "giving up the batch" in done.stdout


def test_max_tasks_exits_zero_after_that_many_tasks(
    backend: object, run_cli: Callable[..., Any], scratch: Path
) -> None:
    """--max-tasks 2 runs exactly two tasks and exits 0, leaving the rest READY."""
    b = real_backend()
    results = [tasks.append_line.enqueue(str(scratch), f"t{i}") for i in range(5)]

    done = run_cli("--max-tasks", "2", "--concurrency", "4")

    assert done.returncode == 0, done.stdout + done.stderr
    assert sorted(lines_of(scratch)) == ["t0", "t1"]  # the two oldest, in any order (four slots)
    assert [status_of(b, r.id) for r in results] == ["SUCCESSFUL"] * 2 + ["READY"] * 3


def test_max_tasks_waits_for_its_last_task_whatever_the_shutdown_timeout(
    backend: object, run_cli: Callable[..., Any], scratch: Path
) -> None:
    """--max-tasks is not a shutdown: the last task runs to the end even past --shutdown-timeout."""
    b = real_backend()
    result = tasks.slow_append_line.enqueue(str(scratch), "done", 2)

    done = run_cli("--max-tasks", "1", "--shutdown-timeout", "0.2")

    assert done.returncode == 0, done.stdout + done.stderr
    assert b.get_result(result.id).status == TaskResultStatus.SUCCESSFUL
    assert lines_of(scratch) == ["done"]


def test_a_non_batch_worker_keeps_waiting_for_work(
    backend: object, spawn_worker: SpawnWorker, scratch: Path
) -> None:
    """Without --batch, an idle worker stays up and runs work enqueued later."""
    b = real_backend()
    w = spawn_worker("--concurrency", "1")
    w.wait_http("/readyz", 200)
    result = tasks.append_line.enqueue(str(scratch), "later")
    wait_for_status(b, result.id, "SUCCESSFUL")
    assert w.proc.poll() is None
    w.send(signal.SIGINT)
    assert w.wait_exit() == 0


def test_a_worker_started_before_redis_waits_for_it(
    backend: object,
    spawn_worker: SpawnWorker,
    own_redis: RedisProcess,
    tasks_on: Callable[[str], Any],
    scratch: Path,
) -> None:
    """Started while Redis is down, the worker is live but not ready, then works once Redis is up."""
    own_redis.stop()
    with tasks_on(own_redis.url):
        w = spawn_worker("--concurrency", "1", url=own_redis.url)
        w.wait_event("redis_unavailable")
        assert w.wait_http("/readyz", 503) == "not ready\n"
        assert w.http("/livez")[0] == 200

        own_redis.start()
        w.wait_http("/readyz", 200)
        result = tasks.append_line.enqueue(str(scratch), "ran")
        assert wait_finished(real_backend(), result.id).status == TaskResultStatus.SUCCESSFUL
        w.send(signal.SIGTERM)
        assert w.wait_exit() == 0
    # and no task thread died over it (they once crashed and were replaced in a loop)
    assert not [line for line in w.lines if "crashed" in line]
