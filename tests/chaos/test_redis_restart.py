"""Scenario 3: Redis (append-only, fsync always) killed and restarted under load loses nothing."""

from __future__ import annotations

import time

from django.tasks import TaskResultStatus

from tests.chaos import state
from tests.chaos.conftest import SEED, Figures, Scale, Scenario, ScenarioFactory
from tests.chaos.fleet import ChaosWorker, wait_until
from tests.chaos.ledger import overlapping

RESUME_WITHIN = 10.0  # seconds from Redis answering again to a task body starting
DEADLINE = 120.0


def _no_overlaps_and_all_successful(s: Scenario, ids: set[str]) -> None:
    """Check the end state: every task SUCCESSFUL, run at least once, never twice at the same time."""
    runs = s.ledger.by_task()
    now = time.monotonic()
    problems = []
    for task_id, result in state.results(s.backend, ids).items():
        executions = runs.get(task_id, [])
        if result.status != TaskResultStatus.SUCCESSFUL:
            problems.append(f"{task_id}: {result.status} errors={state.error_paths(result)}")
        if not any(e.finished for e in executions):
            problems.append(f"{task_id}: never ran to the end (ledger: {executions})")
        for first, second in overlapping(executions, s.fleet.deaths(), now):
            problems.append(
                f"{task_id}: ran twice at once: pid {first.pid} from {first.started:.3f} to "
                f"{first.ended} and pid {second.pid} from {second.started:.3f}"
            )
        lost = state.error_paths(result).count("conveyor.exceptions.WorkerLost")
        if len(executions) > 1 + lost:
            problems.append(f"{task_id}: {len(executions)} executions, {lost} WorkerLost errors")
    assert not problems, f"seed {SEED}:\n" + "\n".join(problems[:40])
    assert state.queue_counts(s.backend, "default").empty, state.queue_counts(s.backend, "default")


def _resumed_after(s: Scenario, moment: float) -> float:
    """Wait for a task body to start after a wall-clock moment; return how long after it started."""
    first = wait_until(
        lambda: s.ledger.started_after(moment), DEADLINE, "a task body to start after Redis returned"
    )
    return min(e.started for e in first) - moment


def test_redis_killed_mid_load_and_restarted_on_its_files_loses_nothing(
    make_scenario: ScenarioFactory, scale: Scale, figures: Figures
) -> None:
    """Given two workers draining tasks, when Redis is SIGKILLed and restarted, all tasks finish."""
    s = make_scenario(appendonly=True)
    n = scale.restart_tasks
    for i in range(n):
        s.enqueue(f"t{i}", round(s.rng.uniform(0.05, 0.3), 3))
    ids = set(s.keys.values())
    workers = [s.fleet.spawn("--concurrency", "4", "--lease", "2", name=f"w{k}-") for k in range(2)]
    kill_at = sorted(s.rng.sample(range(n // 10, n * 3 // 4), scale.redis_kills))

    waits = []
    for threshold in kill_at:
        wait_until(
            lambda t=threshold: s.ledger.count(finished=True) >= t, DEADLINE, f"{threshold} executions"
        )
        # When: Redis dies (SIGKILL: only what the append-only file holds survives) ...
        s.redis.stop()
        time.sleep(s.rng.uniform(0.5, 2.0))
        # ... and comes back on the same port and files.
        s.redis.start(timeout=60)
        back = time.time()
        # Then: the workers take up work again within RESUME_WITHIN seconds.
        waits.append(_resumed_after(s, back))
        assert waits[-1] <= RESUME_WITHIN, (
            f"the first task body started {waits[-1]:.1f}s after Redis returned"
        )

    wait_until(lambda: not state.unfinished(s.backend, ids), DEADLINE + n * 0.1, f"all {n} tasks")
    _no_overlaps_and_all_successful(s, ids)
    assert all(w.running() for w in workers), "a worker exited because Redis went away"
    reruns = sum(len(e) - 1 for e in s.ledger.by_task().values())
    figures(
        f"{n} tasks, Redis SIGKILLed and restarted {len(waits)}x, 0 lost, 0 overlapping runs, "
        f"{reruns} re-runs, first task after Redis returned {min(waits):.1f}-{max(waits):.1f}s"
    )


def _probe_each(workers: list[ChaosWorker], path: str, status: int, timeout: float) -> None:
    for worker in workers:
        worker.wait_http(path, status, timeout)


def test_an_outage_of_two_leases_runs_no_task_twice_at_the_same_time(
    make_scenario: ScenarioFactory, scale: Scale, figures: Figures
) -> None:
    """Given long tasks running, Redis away for two leases: no double run, probes right, work resumes.

    The outage is repeated (scale.outages): whether a reclaim after Redis returns beats the
    owners' renewals is a race, which one outage may not show.
    """
    s = make_scenario(appendonly=True)
    lease = 2.0
    workers = [s.fleet.spawn("--concurrency", "3", "--lease", str(lease), name=f"w{k}-") for k in range(2)]
    _probe_each(workers, "/readyz", 200, DEADLINE)
    waits: list[float] = []
    inside: list[int] = []  # per outage, long tasks whose body ran through it
    for cycle in range(scale.outages):
        outage = s.rng.uniform(4.0, 5.0)
        longs = [f"long{cycle}-{i}" for i in range(scale.outage_tasks)]
        for key in longs:
            s.enqueue(key, round(s.rng.uniform(6.0, 8.0), 3))

        # Given: every long task is claimed (RUNNING under a lease) and bodies are running. (A
        # worker may hold a task it claimed ahead until one of its own slots frees, so "every
        # body started" could come only after the first ones ended.)
        ids = [s.keys[key] for key in longs]
        wait_until(
            lambda i=ids, k=longs: (
                set(state.statuses(s.backend, i).values()) == {b"RUNNING"}
                and any(e.key in k for e in s.ledger.executions())
            ),
            DEADLINE,
            "every long task to be claimed and one to start",
        )
        time.sleep(1.0)

        # When: Redis is down for two leases and more.
        down, down_wall = time.monotonic(), time.time()
        s.redis.stop()
        # Then, during the outage: not ready, but live (liveness never depends on Redis).
        _probe_each(workers, "/readyz", 503, outage)
        for worker in workers:
            assert worker.status("/livez") == 200, f"{worker.worker_id} /livez during the outage"
        assert time.monotonic() - down < outage, "the probes answered only after the outage was over"
        time.sleep(max(0.0, outage - (time.monotonic() - down)))
        for worker in workers:
            assert worker.status("/livez") == 200, f"{worker.worker_id} /livez at the end of the outage"

        # When: Redis returns (same port, same files) and new work arrives.
        s.redis.start(timeout=60)
        back = time.time()
        for i in range(4):
            s.enqueue(f"after{cycle}-{i}", 0.1)

        # Then: consumption resumes within RESUME_WITHIN seconds ...
        waits.append(_resumed_after(s, back))
        assert waits[-1] <= RESUME_WITHIN, (
            f"the first task body started {waits[-1]:.1f}s after Redis returned"
        )
        _probe_each(workers, "/readyz", 200, DEADLINE)
        every = set(s.keys.values())
        wait_until(lambda i=every: not state.unfinished(s.backend, i), DEADLINE, "every task to finish")
        by_key = s.ledger.by_key()
        through = [k for k in longs if by_key[k][0].started < down_wall < (by_key[k][0].ended or 0)]
        assert through, f"no long task was inside its body through outage {cycle}"
        inside.append(len(through))

    # ... and no task ran twice at the same time, nothing was lost.
    _no_overlaps_and_all_successful(s, set(s.keys.values()))
    reruns = sum(len(e) - 1 for e in s.ledger.by_task().values())
    figures(
        f"{scale.outages} outages of 4-5 s (over 2 leases) with {scale.outage_tasks} long tasks claimed "
        f"({inside} inside their bodies): 0 lost, 0 overlapping runs, {reruns} re-runs, first task "
        f"after Redis returned {min(waits):.1f}-{max(waits):.1f}s"
    )
