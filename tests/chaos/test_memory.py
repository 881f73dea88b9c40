"""Scenario 7: after many tasks have run and their results expired, Redis memory is back at its baseline."""

from __future__ import annotations

import statistics
import time

from tests.chaos import state
from tests.chaos.conftest import Figures, Scale, Scenario, ScenarioFactory
from tests.chaos.fleet import ChaosWorker, wait_until

RESULT_TTL = 2  # seconds a SUCCESSFUL result is kept
FAILED_RESULT_TTL = 3_600  # a failure stays visible (and fails the check below)
TOLERANCE = 512 * 1024  # bytes of used_memory above the baseline still counted as "back"
WARM_UP = 50
FLAGS = ("--concurrency", "4", "--lease", "5", "--log-level", "WARNING")


def _memory(s: Scenario) -> int:
    """Return the median of a few used_memory readings (client buffers come and go)."""
    readings = []
    for _ in range(5):
        readings.append(state.used_memory(s.backend))
        time.sleep(0.1)
    return int(statistics.median(readings))


def _run(s: Scenario, keys: list[str], peak: list[int]) -> None:
    """Enqueue a no-op ledgered task per key; wait until every one ran and its result expired."""
    for i, key in enumerate(keys):
        s.enqueue(key)
        if i % 1000 == 0:
            peak.append(state.used_memory(s.backend))
    deadline = 120 + len(keys) * 0.02

    def ran() -> bool:
        peak.append(state.used_memory(s.backend))
        return s.ledger.count(finished=True) >= len(s.keys)

    wait_until(ran, deadline, f"{len(s.keys)} executions")
    wait_until(lambda: state.task_keys(s.backend) == 0, RESULT_TTL + 120, "every task hash to expire")
    # Results are not the only keys with a TTL (a claim may leave a memo for a lease): the
    # plateau is measured once no key with a TTL is left.
    wait_until(lambda: state.volatile_keys(s.backend) == 0, 120, "every key with a TTL to expire")


def _succeeded(workers: list[ChaosWorker]) -> float:
    return sum(w.metric("conveyor_tasks_succeeded_total") or 0 for w in workers)


def test_memory_returns_to_its_baseline_once_results_expire(
    make_scenario: ScenarioFactory, scale: Scale, figures: Figures
) -> None:
    """Given short result TTLs, when many tasks have run and expired, used_memory is near its baseline."""
    s = make_scenario(RESULT_TTL=RESULT_TTL, FAILED_RESULT_TTL=FAILED_RESULT_TTL)
    workers = [s.fleet.spawn(*FLAGS, name=f"w{k}-") for k in range(2)]
    for worker in workers:
        worker.wait_http("/readyz", 200, 60)

    # Given: a warm-up round has run and expired (scripts loaded, connections made).
    _run(s, [f"warm{i}" for i in range(WARM_UP)], [])
    baseline = _memory(s)

    # When: the load runs and its results expire.
    peak = [baseline]
    n = scale.memory_tasks
    began = time.monotonic()
    _run(s, [f"t{i}" for i in range(n)], peak)
    took = time.monotonic() - began

    # Then: every task ran once and succeeded, nothing is left in Redis, and memory came back.
    runs = s.ledger.by_key()
    assert len(runs) == n + WARM_UP and all(len(e) == 1 for e in runs.values())
    assert state.queue_counts(s.backend, "default").empty, state.queue_counts(s.backend, "default")
    assert _succeeded(workers) == n + WARM_UP
    final = 0

    def back() -> bool:
        nonlocal final
        final = _memory(s)
        return final <= baseline + TOLERANCE

    try:
        wait_until(back, 60, "used_memory to return to its baseline")
    finally:
        left = s.backend.store.call(lambda c: sorted(k.decode(errors="replace") for k in c.scan_iter()))
        figures(
            f"{n} tasks in {took:.0f}s; used_memory baseline {baseline / 2**20:.2f} MiB, peak sampled "
            f"{max(peak) / 2**20:.2f} MiB, after expiry {final / 2**20:.2f} MiB ({final - baseline:+d} "
            f"bytes, tolerance +{TOLERANCE // 1024} KiB); keys left: {len(left)} {left[:8]}"
        )
