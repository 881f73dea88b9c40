"""The hot path's cost in Python function calls per task, so a restructure cannot make it heavier."""

from __future__ import annotations

import sys
import threading
from types import FrameType
from typing import Any

from tests import tasks

from .conftest import BatchRunner, real_backend

TASKS = 1000
# Python function calls per no-op task on a processor thread (one slot: one task per round
# trip), measured on the worker before it was split into parts (commit 1974b3e).
BASELINE_CALLS_PER_TASK = 189.6
GROWTH_ALLOWED = 1.10
# Calls prometheus_client's counters and histograms add per task (two inc(), two observe() and their
# checks: 193.4 -> 215.9), taken on when the worker moved to the library, its cost measured at about
# 1% of the drain (docs/metrics.md); on top of the 10% any other change may take.
METRICS_LIBRARY_CALLS = 22.5


class CallCounter:
    """Count Python function calls made on the worker's processor threads."""

    def __init__(self) -> None:
        self.calls = 0

    def _count(self, frame: FrameType, event: str, arg: Any) -> None:
        if event == "call":
            self.calls += 1  # one processor thread runs at a time with a single slot

    def _pick(self, frame: FrameType, event: str, arg: Any) -> None:
        """Profile only processor threads; every other thread stops profiling at its first call."""
        if threading.current_thread().name.startswith("conveyor-task"):
            sys.setprofile(self._count)
            self._count(frame, event, arg)
        else:
            sys.setprofile(None)

    def __enter__(self) -> CallCounter:
        threading.setprofile(self._pick)
        return self

    def __exit__(self, *exc: object) -> None:
        threading.setprofile(None)  # type: ignore[arg-type]


def test_python_calls_per_task_on_the_hot_path_do_not_grow(backend: object, run_batch: BatchRunner) -> None:
    """1,000 no-op tasks on one slot cost no more Python calls per task than before the split, +10%."""
    b = real_backend()
    results = [tasks.noop_task.enqueue() for _ in range(TASKS)]

    with CallCounter() as counter:
        run_batch(concurrency=1, timeout=120)

    assert all(b.get_result(r.id).status == "SUCCESSFUL" for r in results[:: TASKS // 20])
    per_task = counter.calls / TASKS
    print(f"\nprocessor-thread Python calls per task: {per_task:.1f} (baseline {BASELINE_CALLS_PER_TASK})")
    limit = BASELINE_CALLS_PER_TASK * GROWTH_ALLOWED + METRICS_LIBRARY_CALLS
    assert per_task <= limit, (per_task, BASELINE_CALLS_PER_TASK)
