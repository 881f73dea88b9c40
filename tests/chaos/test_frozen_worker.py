"""Scenario 2, the frozen worker: a worker paused past its lease never overwrites the newer outcome."""

from __future__ import annotations

from django.tasks import TaskResultStatus

from tests.chaos import state
from tests.chaos.conftest import Figures, Scale, ScenarioFactory
from tests.chaos.fleet import wait_until

LEASE = "2"
DEADLINE = 60.0


def test_a_frozen_workers_stale_outcome_never_overwrites_the_reclaimed_run(
    make_scenario: ScenarioFactory, scale: Scale, figures: Figures
) -> None:
    """Given A running tasks, when A is SIGSTOPped past its lease, B reruns them; A's late results lose."""
    s = make_scenario()
    n = scale.frozen_tasks
    for i in range(n):
        s.enqueue(f"t{i}", 3.0)
    ids = list(s.keys.values())

    # Given: worker A is inside every task body.
    a = s.fleet.spawn("--lease", LEASE, "--concurrency", str(n), name="a")
    wait_until(lambda: len(s.ledger.by_task()) == n, DEADLINE, f"worker A to start all {n} tasks")
    assert {e.pid for e in s.ledger.executions()} == {a.pid}

    # When: A is frozen (SIGSTOP) and B, started now, reclaims the expired leases and reruns them.
    a.freeze()
    try:
        b = s.fleet.spawn("--lease", LEASE, "--concurrency", str(n), name="b")
        wait_until(lambda: not state.unfinished(s.backend, ids), DEADLINE, "B to finish every task")
        before = {task_id: state.raw(s.backend, task_id) for task_id in ids}
        assert a.running(), "worker A must still exist (frozen) while B finishes"
    finally:
        # And: A wakes up; its task bodies return at once (their sleep ended while frozen).
        a.thaw()
    wait_until(
        lambda: all(e.finished for e in s.ledger.executions() if e.pid == a.pid),
        DEADLINE,
        "A's stale task bodies to return",
    )
    wait_until(lambda: a.metric("conveyor_worker_busy_slots") == 0, DEADLINE, "A to settle its slots")

    # Then: every stored outcome is B's, byte for byte as it was before A woke up.
    after = {task_id: state.raw(s.backend, task_id) for task_id in ids}
    changed = [task_id for task_id in ids if after[task_id] != before[task_id]]
    assert not changed, f"A's stale outcome changed {changed}: {[after[t] for t in changed]}"
    for task_id, result in state.results(s.backend, ids).items():
        assert result.status == TaskResultStatus.SUCCESSFUL
        assert result.return_value["pid"] == b.pid, f"{task_id}: {result.return_value}"
        assert result.worker_ids == [a.worker_id, b.worker_id]
        assert state.error_paths(result) == ["conveyor.exceptions.WorkerLost"]
        runs = s.ledger.by_task()[task_id]
        assert [e.pid for e in runs] == [a.pid, b.pid] and all(e.finished for e in runs)
    assert state.queue_counts(s.backend, "default").empty

    # And: A is healthy afterwards and takes new work like B.
    assert a.running() and a.status("/readyz") == 200
    later = [s.enqueue(f"after{i}").id for i in range(2 * n)]
    wait_until(lambda: not state.unfinished(s.backend, later), DEADLINE, "tasks enqueued afterwards")
    assert all(r.status == TaskResultStatus.SUCCESSFUL for r in state.results(s.backend, later).values())
    figures(f"{n} tasks frozen past a {LEASE} s lease, all rerun by B; B's outcome kept byte for byte")
