"""Scenario 5: a task that kills its worker is failed alone; the tasks running beside it succeed."""

from __future__ import annotations

import signal
import time

from django.tasks import TaskResultStatus

from tests.chaos import chaos_tasks, state
from tests.chaos.conftest import Figures, Scale, ScenarioFactory
from tests.chaos.fleet import ChaosWorker, wait_until

MAX_DELIVERIES = 3
FLAGS = ("--concurrency", "4", "--max-deliveries", str(MAX_DELIVERIES), "--lease", "2")
DEADLINE = 180.0
MAX_STARTS = 25  # the supervisor gives up after this many worker starts


def test_a_poison_pill_fails_alone_and_its_neighbours_succeed(
    make_scenario: ScenarioFactory, scale: Scale, figures: Figures
) -> None:
    """Given a pill that SIGKILLs its worker beside three ~1 s tasks, only the pill ends FAILED."""
    s = make_scenario()
    companions = [f"ordinary{i}" for i in range(scale.poison_companions)]
    pill = chaos_tasks.poison_pill.enqueue(s.ledger_path, "pill", companions, 3.0)
    ordinary = {s.enqueue(key, 1.0).id for key in companions}
    ids = {pill.id, *ordinary}

    # When: a supervisor restarts the worker each time it dies (as a Deployment would).
    starts: list[ChaosWorker] = []
    deadline = time.monotonic() + DEADLINE
    while state.unfinished(s.backend, ids):
        assert time.monotonic() < deadline, f"tasks still unfinished after {DEADLINE:g}s"
        assert len(starts) < MAX_STARTS, f"{len(starts)} worker starts and the tasks are not finished"
        worker = s.fleet.spawn(*FLAGS, name="sup")
        starts.append(worker)
        wait_until(
            lambda w=worker: not w.running() or not state.unfinished(s.backend, ids),
            DEADLINE,
            "the worker to die or every task to finish",
        )
        if worker.running():
            break
        worker.wait_exit(10)
        # A worker that ended other than by SIGKILL is a failure of the worker, not of the pill.
        assert worker.proc.returncode == -signal.SIGKILL, worker.log_tail()

    # Then: the pill is FAILED with one WorkerLost per delivery; its neighbours succeeded.
    killed = [w for w in starts if w.proc.returncode == -signal.SIGKILL]
    poisoned = s.backend.get_result(pill.id)
    assert poisoned.status == TaskResultStatus.FAILED
    assert poisoned.errors and set(state.error_paths(poisoned)) == {"conveyor.exceptions.WorkerLost"}
    assert len(killed) == len(s.ledger.by_key()["pill"]) == len(poisoned.errors) <= MAX_DELIVERIES
    beside = {e.key for e in s.ledger.executions() if e.pid == killed[0].pid} - {"pill"}
    assert beside, "the first delivery of the pill ran alone: the scenario did not happen"
    for task_id, result in state.results(s.backend, ordinary).items():
        runs = s.ledger.by_task()[task_id]
        assert result.status == TaskResultStatus.SUCCESSFUL, (
            f"an ordinary task beside the pill ended {result.status} after {len(runs)} runs, "
            f"errors {state.error_paths(result)}"
        )
        # Each run but the last was cut off by one of the pill's kills.
        assert {e.pid for e in runs[:-1]} <= {w.pid for w in killed}
    assert state.queue_counts(s.backend, "default").empty, state.queue_counts(s.backend, "default")
    cut = sum(len(s.ledger.by_task()[t]) - 1 for t in ordinary)
    figures(
        f"{len(starts)} worker starts, pill FAILED after {len(killed)} kills "
        f"({len(poisoned.errors)} WorkerLost); {len(ordinary)} neighbours SUCCESSFUL "
        f"({cut} of their runs cut off by the pill)"
    )
