"""The slots: the attempts this worker runs, its --max-tasks budget and the task that runs alone."""

from __future__ import annotations

import threading
from collections.abc import Callable

from .executor import Attempt
from .metrics import Metrics
from .timings import LONG_TASK, SLOT_POLL


class Slots:
    """Attempts in the worker's slots, from prepared to recorded, and who may run beside whom.

    Owner of the running attempts, the count of tasks claimed (for --max-tasks), the
    attempt waiting to run alone and whether it runs: all under one condition, which is
    also notified at every change of slot (a drain and a task waiting to run alone wait on it).
    """

    def __init__(
        self, max_tasks: int, metrics: Metrics, on_busy_change: Callable[[int], None] | None = None
    ) -> None:
        self._max_tasks = max_tasks
        self._metrics = metrics
        self._on_busy_change = on_busy_change
        # Reentrant, since a signal handler on the main thread (request_stop) may run while that
        # thread holds it; taken with 'with self._lock', which costs no Python call, unlike a Condition.
        self._lock = threading.RLock()
        self._cond = threading.Condition(self._lock)
        self._running: dict[str, Attempt] = {}
        self._claimed = 0
        self._alone: Attempt | None = None  # waiting to run, or running, with nothing beside it
        self._alone_running = False  # True while it runs: other attempts wait

    # -- running attempts ----------------------------------------------------------

    def enter(self, attempt: Attempt) -> None:
        """Take a slot for a prepared attempt."""
        with self._lock:
            self._running[attempt.task_id] = attempt
            busy = len(self._running)
        self._busy_changed(busy)

    def leave(self, attempt: Attempt) -> None:
        """Free an attempt's slot (its outcome is recorded, or it went back)."""
        with self._lock:
            self._running.pop(attempt.task_id, None)
            busy = len(self._running)
            self._cond.notify_all()
        self._busy_changed(busy)

    def _busy_changed(self, busy: int) -> None:
        self._metrics.set_busy(busy)
        if self._on_busy_change is not None:
            self._on_busy_change(busy)

    @property
    def busy(self) -> int:
        """Return how many slots run an attempt."""
        with self._lock:
            return len(self._running)

    def attempts(self) -> list[Attempt]:
        """Return the attempts in the slots now."""
        with self._lock:
            return list(self._running.values())

    def holds(self, task_id: str) -> bool:
        """Tell whether a task has a slot (it got as far as being prepared)."""
        with self._lock:
            return task_id in self._running

    def get(self, task_id: str) -> Attempt | None:
        """Return the attempt of a task in the slots, if any."""
        with self._lock:
            return self._running.get(task_id)

    def long_running(self, now: float) -> int:
        """Count attempts inside their task for LONG_TASK or more (finalized ones only await their record)."""
        with self._lock:
            running = list(self._running.values())
        return sum(1 for a in running if (a.running_for(now) or 0.0) >= LONG_TASK)

    def nudge(self) -> None:
        """Wake whoever waits on a change of slot (the worker started draining)."""
        with self._lock:
            self._cond.notify_all()

    def wait(self, timeout: float) -> None:
        """Wait for a change of slot, at most timeout seconds."""
        with self._lock:
            self._cond.wait(timeout)

    # -- the --max-tasks budget ------------------------------------------------------

    def reserve(self, wanted: int) -> int:
        """Take up to wanted claims from the --max-tasks budget; return how many were granted."""
        with self._lock:
            if self._max_tasks:
                wanted = min(wanted, self._max_tasks - self._claimed)
            wanted = max(0, wanted)
            self._claimed += wanted
            return wanted

    def unreserve(self, unused: int) -> None:
        """Give back claims that claimed nothing."""
        if unused:
            with self._lock:
                self._claimed -= unused

    def spent(self) -> bool:
        """Tell whether --max-tasks tasks were claimed."""
        with self._lock:
            return bool(self._max_tasks) and self._claimed >= self._max_tasks

    # -- running alone -----------------------------------------------------------------

    @property
    def alone(self) -> Attempt | None:
        """Return the attempt waiting to run (or running) alone, if any; while there is one nobody claims."""
        with self._lock:
            return self._alone

    def isolate(self, attempt: Attempt) -> bool:
        """Make attempt the one to run alone; False when another already is (give this one back)."""
        with self._lock:
            if self._alone is not None:
                return False
            self._alone = attempt
            return True

    def run_alone_if_empty(self, attempt: Attempt) -> bool:
        """Let the isolated attempt run if no other holds a slot; else wait a moment and say False."""
        with self._lock:
            if self._alone is attempt and not self._running:
                self._alone_running = True
                return True
            self._cond.wait(SLOT_POLL)
            return False

    def end_alone(self, attempt: Attempt) -> None:
        """The isolated attempt is done (or gave up): others may run and claim again."""
        with self._lock:
            if self._alone is attempt:
                self._alone, self._alone_running = None, False
                self._cond.notify_all()

    def wait_while_alone(self) -> None:
        """Wait while a task runs alone (this attempt holds its slot, so it started after or waits)."""
        with self._lock:
            while self._alone_running:
                self._cond.wait(SLOT_POLL)
