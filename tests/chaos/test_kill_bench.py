"""Scenario 1, the kill bench: workers SIGKILLed at random moments under load lose no task."""

from __future__ import annotations

import time

from django.tasks import TaskResultStatus

from tests.chaos import state
from tests.chaos.conftest import SEED, Figures, Scale, ScenarioFactory
from tests.chaos.fleet import ChaosWorker, wait_until

WORKERS = 3
MAX_DELIVERIES = 5
# A lease long enough that a live worker on a loaded 2-core machine never loses one: every
# re-run here must come from a kill.
FLAGS = ("--concurrency", "4", "--lease", "4", "--max-deliveries", str(MAX_DELIVERIES))


def test_sigkilled_workers_lose_no_task_and_every_rerun_follows_a_kill(
    make_scenario: ScenarioFactory, scale: Scale, figures: Figures
) -> None:
    """Given tasks running on 3 workers, when workers are SIGKILLed and restarted, all succeed."""
    s = make_scenario()
    n = scale.kill_tasks
    for i in range(n):
        s.enqueue(f"t{i}", round(s.rng.uniform(0.02, 0.2), 3))
    ids = set(s.keys.values())
    slots: list[ChaosWorker] = [s.fleet.spawn(*FLAGS, name=f"slot{k}-") for k in range(WORKERS)]
    # Kill moments are points of progress (executions finished), so they fall while work is
    # under way however fast this machine is; a short random pause moves each off the tick.
    kill_at = sorted(s.rng.sample(range(max(1, n // 20), n * 4 // 5), scale.kills))
    killed: list[ChaosWorker] = []
    deadline = 120 + n * 0.1

    # When: at each kill moment a worker that is running tasks is SIGKILLed and restarted.
    for threshold in kill_at:
        wait_until(
            lambda t=threshold: s.ledger.count(finished=True) >= t,
            deadline,
            f"{threshold} finished executions (seed {SEED})",
        )
        time.sleep(s.rng.uniform(0.0, 0.2))

        def busy_workers() -> list[ChaosWorker]:
            pids = s.ledger.pids()
            return [w for w in slots if w.running() and w.pid in pids]

        victims = wait_until(busy_workers, deadline, "a worker that has run something")
        victim = s.rng.choice(victims)
        victim.kill()
        killed.append(victim)
        slot = slots.index(victim)
        slots[slot] = s.fleet.spawn(*FLAGS, name=f"slot{slot}-")

    wait_until(lambda: not state.unfinished(s.backend, ids), deadline, f"all {n} tasks to finish")

    # Then: nothing lost, every task ran, and each extra run is the run of a killed worker.
    assert len(killed) >= scale.kills
    killed_pids = {w.pid for w in killed}
    results = state.results(s.backend, ids)
    runs = s.ledger.by_task()
    problems: list[str] = []
    reruns = 0
    for task_id, result in results.items():
        if result.status != TaskResultStatus.SUCCESSFUL:
            problems.append(f"{task_id}: {result.status} errors={state.error_paths(result)}")
            continue
        executions = runs.get(task_id, [])
        final_pid = result.return_value["pid"]
        finals = [e for e in executions if e.pid == final_pid and e.finished]
        if not finals:
            problems.append(f"{task_id}: no finished execution by pid {final_pid} in the ledger")
            continue
        earlier = [e for e in executions if e is not finals[-1]]
        lost = state.error_paths(result).count("conveyor.exceptions.WorkerLost")
        reruns += len(earlier)
        not_killed = [e.pid for e in earlier if e.pid not in killed_pids]
        if not_killed:
            problems.append(f"{task_id}: ran again after pids {not_killed}, which were never killed")
        if len(earlier) > lost:
            problems.append(f"{task_id}: {len(executions)} executions but {lost} WorkerLost errors")
        if lost != len(result.errors):
            problems.append(f"{task_id}: errors other than WorkerLost: {state.error_paths(result)}")
        deliveries = int(state.raw(s.backend, task_id).get(b"deliveries", b"0"))
        if not (result.attempts == len(result.worker_ids) and 1 <= result.attempts <= MAX_DELIVERIES):
            problems.append(f"{task_id}: attempts {result.attempts}, worker_ids {result.worker_ids}")
        if not 1 <= deliveries <= MAX_DELIVERIES:
            problems.append(f"{task_id}: {deliveries} deliveries")
    assert not problems, f"seed {SEED}, {len(problems)} problems:\n" + "\n".join(problems[:40])
    assert set(runs) == ids, "the ledger holds executions of tasks that were never enqueued"
    assert state.queue_counts(s.backend, "default").empty, state.queue_counts(s.backend, "default")
    worker_lost = sum(state.error_paths(r).count("conveyor.exceptions.WorkerLost") for r in results.values())
    figures(
        f"{n} tasks, {len(killed)} SIGKILLs, 0 lost, {reruns} re-runs (all after a kill), "
        f"{worker_lost} WorkerLost"
    )
