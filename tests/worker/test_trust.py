"""The worker's share of the "Trust" issue: outages, poison pills, rolling deploys, blocked renewals."""

from __future__ import annotations

import itertools
import json
import signal
import sys
import threading
import time
import types
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from conveyor import RedisBackend
from django.tasks import TaskResultStatus, task
from django.tasks.signals import task_finished
from django.test import override_settings

from devtools.redis_server import RedisProcess, find_server_binary
from tests import tasks
from tests.conftest import tasks_setting

from . import worker_tasks
from .conftest import (
    DEADLINE,
    BatchRunner,
    SpawnWorker,
    WorkerFactory,
    good_record,
    plant,
    real_backend,
    status_of,
    wait_finished,
    wait_for_status,
    wait_until,
)


def runs_of(path: Path) -> dict[str, list[tuple[float, float, int]]]:
    """Read a log_run ledger: for each key, its runs as (start, end, pid); end is inf if unfinished."""
    starts: dict[tuple[str, int], float] = {}
    runs: dict[str, list[tuple[float, float, int]]] = {}
    lines = path.read_text().splitlines() if path.exists() else []
    for line in lines:
        kind, key, pid, moment = line.split()
        if kind == "start":
            starts[(key, int(pid))] = float(moment)
        else:
            runs.setdefault(key, []).append((starts.pop((key, int(pid))), float(moment), int(pid)))
    for (key, pid), start in starts.items():
        runs.setdefault(key, []).append((start, float("inf"), pid))
    return runs


def overlapping(runs: list[tuple[float, float, int]]) -> bool:
    """Tell whether two runs of one task were in progress at the same moment."""
    ordered = sorted(runs)
    return any(later[0] < earlier[1] for earlier, later in itertools.pairwise(ordered))


@pytest.fixture
def aof_redis() -> Iterator[RedisProcess]:
    """Start a private Redis with the append-only file on, so a restart keeps every task."""
    binary = find_server_binary()
    assert binary
    server = RedisProcess(binary, appendonly=True)
    server.start()
    yield server
    server.stop()


# -- 2. an outage of Redis longer than a lease ------------------------------------------


def test_an_outage_longer_than_a_lease_never_runs_a_task_twice_at_once(
    make_worker: WorkerFactory, aof_redis: RedisProcess, tasks_on: Callable[[str], Any], tmp_path: Path
) -> None:
    """Lease 3 s, a 12 s task, Redis down for 7 s: the task runs once, on its first worker.

    A second worker starts the moment Redis is back, so its first reclaim races the first
    worker's next renewal (up to a third of a lease later): before the fix it won and ran
    the task a second time while the first worker was still running it.
    """
    ledger = tmp_path / "runs"
    with tasks_on(aof_redis.url):
        b = real_backend()
        result = worker_tasks.log_run.enqueue(str(ledger), "long", 12.0)
        a = make_worker(lease=3.0).start()
        wait_for_status(b, result.id, "RUNNING")

        # When: Redis is away for more than two leases while the task runs.
        aof_redis.stop()
        wait_until(lambda: not a.worker.ready, what="the worker to report not ready")
        time.sleep(7.0)
        assert a.worker.alive()  # liveness never depends on Redis
        aof_redis.start()
        other = make_worker(lease=3.0).start()

        # Then: the task finishes once, on the worker that had it, and was never run beside itself.
        finished = wait_finished(b, result.id)
        assert finished.status == TaskResultStatus.SUCCESSFUL, finished.errors
        assert finished.errors == []
        assert finished.worker_ids == [a.worker_id]
        runs = runs_of(ledger)["long"]
        assert len(runs) == 1 and not overlapping(runs)
        # A task enqueued now runs within moments: consumption resumed.
        after = tasks.calculate_meaning_of_life.enqueue()
        assert wait_finished(b, after.id, timeout=10).return_value == 42
        assert a.stop() == 0 and other.stop() == 0


# -- 4. a poison pill fails alone ---------------------------------------------------------


@pytest.mark.subprocess
def test_a_task_that_kills_its_worker_fails_alone_and_the_tasks_beside_it_succeed(
    backend: object, spawn_worker: SpawnWorker, tmp_path: Path
) -> None:
    """--concurrency 4 --max-deliveries 3: only the poison pill ends FAILED; its neighbours finish."""
    b = real_backend()
    ledger = tmp_path / "runs"
    innocent = [worker_tasks.log_run.enqueue(str(ledger), f"t{i}", 1.5) for i in range(3)]
    pill = worker_tasks.kill_own_worker_after.enqueue(0.5)
    everything = [*innocent, pill]

    # Given: workers are restarted whenever they die (as a Deployment would).
    exits = []
    for _ in range(12):
        if all(status_of(b, r.id) in ("SUCCESSFUL", "FAILED") for r in everything):
            break
        w = spawn_worker("--batch", "--lease", "1", "--max-deliveries", "3", "--concurrency", "4")
        exits.append(w.wait_exit(DEADLINE * 2))
    else:
        pytest.fail(f"the tasks never all finished; worker exits: {exits}")

    # Then: the pill was given up on after three deliveries, each of which killed a worker...
    poisoned = b.get_result(pill.id)
    assert poisoned.status == TaskResultStatus.FAILED
    assert [e.exception_class_path for e in poisoned.errors] == ["conveyor.exceptions.WorkerLost"] * 3
    assert exits.count(-signal.SIGKILL) == 3
    # ...and every task that ran beside it finished, charged at most the first kill.
    for result in innocent:
        done = b.get_result(result.id)
        assert done.status == TaskResultStatus.SUCCESSFUL, done.errors
        assert len(done.errors) <= 1
    runs = runs_of(ledger)
    assert sorted(runs) == ["t0", "t1", "t2"]
    # each ran to its end exactly once (a run cut off by the kill has no end)
    assert all(sum(end != float("inf") for _, end, _ in r) == 1 for r in runs.values())


# -- 5. a rolling deploy: tasks newer than the worker ---------------------------------


@pytest.fixture
def late_module() -> Iterator[types.ModuleType]:
    """Make a task module that exists in this process only while a test puts it in sys.modules."""
    module = types.ModuleType("tests.rolling_new")

    def job(value: int) -> int:
        return value * 2

    job.__module__, job.__qualname__ = module.__name__, "job"
    module.job = task()(job)  # type: ignore[attr-defined]
    yield module
    sys.modules.pop(module.__name__, None)


def test_a_task_the_worker_cannot_import_yet_goes_back_unrun_and_runs_once_it_can(
    backend: object, make_worker: WorkerFactory, run_batch: BatchRunner, late_module: types.ModuleType
) -> None:
    """Given new web pods enqueue a task the old worker does not have, it is postponed, not FAILED."""
    b = real_backend()
    sys.modules[late_module.__name__] = late_module
    result = late_module.job.enqueue(21)  # type: ignore[attr-defined]
    del sys.modules[late_module.__name__]  # the old worker's code: no such module

    # When: the old worker claims it.
    old = make_worker().start()
    wait_until(lambda: b.store.call(lambda c: c.zscore(b.keys.scheduled("default"), result.id)))
    assert old.stop() == 0

    # Then: it is READY again, due after a backoff, with no attempt spent.
    waiting = b.store.get(result.id)
    assert waiting[b"status"] == b"READY"
    assert waiting[b"worker_ids"] == b"[]"
    assert waiting[b"deliveries"] == b"0"
    assert b"unknown_since" in waiting
    # When: a worker that has the code comes along once it is due.
    sys.modules[late_module.__name__] = late_module
    b.store.call(lambda c: c.zadd(b.keys.scheduled("default"), {result.id: 0}, xx=True))
    run_batch()
    done = b.get_result(result.id)
    assert done.status == TaskResultStatus.SUCCESSFUL
    assert done.return_value == 42
    assert done.attempts == 1


def test_a_task_that_stays_unimportable_fails_after_the_patience_runs_out(
    backend: object, run_batch: BatchRunner
) -> None:
    """Fifteen minutes after it was first put back, a task path that still does not import is FAILED."""
    b = real_backend()
    long_ago = int((time.time() - 16 * 60) * 1_000_000)
    stale = plant(b, good_record("tests.never_deployed.run", unknown_since=str(long_ago)))
    fresh = plant(b, good_record("tests.never_deployed.run"))

    run_batch()

    raw = b.store.get(stale)
    assert raw[b"status"] == b"FAILED"
    errors = json.loads(raw[b"errors"])
    assert errors[-1]["exception_class_path"] == "conveyor.exceptions.RejectedTask"
    assert "still not importable after 16 minutes" in errors[-1]["traceback"]
    assert b.store.get(fresh)[b"status"] == b"READY"  # postponed, not failed


def test_a_path_outside_the_allow_list_still_fails_at_once(backend: object, run_batch: BatchRunner) -> None:
    """Only paths inside the allowed modules wait for a deploy; anything else is refused outright."""
    b = real_backend()
    outside = plant(b, good_record("elsewhere.tasks.run"))

    run_batch()

    assert b.store.get(outside)[b"status"] == b"FAILED"


# -- 10. renewal never waits on recording or on user code ---------------------------------


def test_a_timeout_whose_recording_is_slow_does_not_hold_up_lease_renewal(
    backend: object, make_worker: WorkerFactory, tmp_path: Path
) -> None:
    """A task_finished receiver that blocks 3 s after a timeout must not stop the 1 s leases renewing."""
    b: RedisBackend = real_backend()
    ledger = tmp_path / "runs"
    slow = threading.Event()

    def slow_receiver(sender: object, task_result: Any, **kwargs: object) -> None:
        if task_result.task.name == "spins_past_timeout":
            slow.set()
            time.sleep(3.0)

    task_finished.connect(slow_receiver)
    try:
        # Given: one slot runs a 4 s task under a 1 s lease; another worker reclaims expired leases.
        long = worker_tasks.log_run.enqueue(str(ledger), "long", 4.0)
        worker = make_worker(concurrency=2, lease=1.0).start()
        wait_for_status(b, long.id, "RUNNING")
        sweeper = make_worker(concurrency=1, lease=1.0).start()
        # When: a sync task times out beside it and recording its failure blocks in a receiver.
        timed_out = worker_tasks.spins_past_timeout.enqueue(str(tmp_path / "spun"))
        wait_until(slow.is_set, what="the timeout to be recorded")
        done = wait_finished(b, long.id)
    finally:
        task_finished.disconnect(slow_receiver)
    assert worker.stop() == 0 and sweeper.stop() == 0

    # Then: the long task kept its lease and ran once.
    assert done.status == TaskResultStatus.SUCCESSFUL
    assert done.errors == []
    assert len(runs_of(ledger)["long"]) == 1
    assert wait_finished(b, timed_out.id).errors[-1].exception_class_path == "conveyor.exceptions.TaskTimeout"


# -- 11. a processor thread that crashes strands nothing it claimed -------------------------


def test_a_processor_that_crashes_gives_back_what_it_claimed(
    backend: object, make_worker: WorkerFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A bug that kills a processor thread mid-batch costs no task a delivery or a lease wait."""
    b = real_backend()
    results = [tasks.calculate_meaning_of_life.enqueue() for _ in range(6)]
    handle = make_worker(concurrency=1, lease=60.0)
    prepare = handle.worker.executor.prepare
    crashed: list[str] = []

    def crash_once(claimed: Any) -> Any:
        if not crashed and claimed.task_id == results[2].id:
            crashed.append(claimed.task_id)
            raise RuntimeError("a bug in the worker")
        return prepare(claimed)

    monkeypatch.setattr(handle.worker.executor, "prepare", crash_once)
    handle.start()

    # Then: every task succeeds well within the 60 s lease, none charged a lost worker.
    done = [wait_finished(b, r.id, timeout=20) for r in results]
    assert handle.stop() == 0
    assert crashed
    assert [d.status for d in done] == [TaskResultStatus.SUCCESSFUL] * 6
    assert all(d.errors == [] and d.attempts == 1 for d in done)


# -- 8. two projects on one prefix --------------------------------------------------------


def test_a_worker_refuses_a_prefix_that_another_project_owns(
    backend: object, make_worker: WorkerFactory
) -> None:
    """Given another project claimed the key prefix, the worker exits 2 before it claims anything."""
    b = real_backend()
    b.store.call(lambda c: c.set(b.keys.project, "someone-else"))
    result = tasks.noop_task.enqueue()

    handle = make_worker(batch=True).start()

    assert handle.join() == 2
    assert status_of(b, result.id) == "READY"


def test_the_first_worker_names_its_project_and_the_next_ones_agree(
    backend: object, run_batch: BatchRunner
) -> None:
    """The marker is written once, by whoever comes first, and the same project passes."""
    b = real_backend()
    run_batch()
    run_batch()
    assert b.store.project_owner() == b.project_name() == "tests"


@pytest.mark.subprocess
def test_a_worker_that_never_lost_redis_logs_no_recovery(backend: object, spawn_worker: SpawnWorker) -> None:
    """redis_recovered is for an outage that ended, not for every start."""
    b = real_backend()
    result = tasks.calculate_meaning_of_life.enqueue()
    w = spawn_worker("--concurrency", "1")
    wait_finished(b, result.id)
    w.send(signal.SIGTERM)
    assert w.wait_exit() == 0
    assert w.events("redis_recovered") == []
    assert w.events("redis_unavailable") == []


# -- 6. records nested too deeply ---------------------------------------------------------


def test_a_record_nested_100000_deep_is_failed_and_the_worker_keeps_going(
    backend: object, run_batch: BatchRunner
) -> None:
    """A planted 100,000-deep args field fails its task with the reason; a good task still runs."""
    b = real_backend()
    deep = plant(b, good_record(args="[" * 100_000 + "]" * 100_000), priority=10)
    good = tasks.calculate_meaning_of_life.enqueue()

    handle = run_batch()

    raw = b.store.get(deep)
    assert raw[b"status"] == b"FAILED"
    errors = json.loads(raw[b"errors"])
    assert errors[-1]["exception_class_path"] == "conveyor.exceptions.RejectedTask"
    assert "nested deeper than" in errors[-1]["traceback"]
    assert b.get_result(good.id).return_value == 42
    assert handle.exit_code == 0


def test_a_return_value_nested_past_max_nesting_fails_its_task(
    redis_url: str, prefix: str, run_batch: BatchRunner
) -> None:
    """MAX_NESTING applies to return values too: a deeper one fails the task with TypeError."""
    with override_settings(TASKS=tasks_setting(redis_url, prefix, MAX_NESTING=3)):
        b = real_backend()
        result = tasks.echo.enqueue([[[1]]])  # fine as an argument; the echo wraps it deeper

        run_batch()

        failed = b.get_result(result.id)
    assert failed.status == TaskResultStatus.FAILED
    assert failed.errors[-1].exception_class_path == "builtins.TypeError"
    assert "nested deeper than MAX_NESTING=3" in failed.errors[-1].traceback
