"""The watchdog: its own thread finds sync attempts past their timeout; it stops them, and cancelled ones."""

from __future__ import annotations

import threading
import time

from conveyor.exceptions import TaskTimeout

from .executor import Attempt, Executor, Halt
from .lifecycle import Heartbeat
from .recorder import Recorder
from .runners import Processors
from .slots import Slots
from .timings import WATCH_SLEEP_MAX, WATCH_SLEEP_MIN


class Watchdog:
    """Detect sync attempts that overran their timeout and stop them; it never waits on Redis or on user code.

    halt() stops a running sync attempt for any reason: its own thread calls it for a
    timeout, the lease keeper's for an operator's cancel. It holds no shared state: the
    attempts are Slots', the threads Processors', the recording the Recorder's (on its own
    thread); its beat (for /livez) is a Heartbeat.
    """

    def __init__(self, slots: Slots, executor: Executor, threads: Processors, recorder: Recorder) -> None:
        self._slots = slots
        self._executor = executor
        self._threads = threads
        self._recorder = recorder
        self._wake = threading.Event()
        self._done = threading.Event()
        self.beat = Heartbeat()

    def start(self) -> None:
        """Start the watchdog's thread."""
        threading.Thread(target=self._watch, name="conveyor-watchdog", daemon=True).start()

    def stop(self) -> None:
        """End the watchdog's thread (the worker has stopped)."""
        self._done.set()
        self._wake.set()

    def watch(self) -> None:
        """Look again now: an attempt with a timeout has started."""
        self._wake.set()

    def _watch(self) -> None:
        while not self._done.is_set():
            now = time.monotonic()
            self.beat.beat()
            next_wake = now + WATCH_SLEEP_MAX
            for attempt in self._slots.attempts():
                deadline = attempt.deadline
                if deadline is None or attempt.is_async or attempt.finalized:
                    continue
                if now >= deadline:
                    self.halt(attempt, TaskTimeout)
                else:
                    next_wake = min(next_wake, deadline)
            self._wake.wait(max(WATCH_SLEEP_MIN, next_wake - time.monotonic()))
            self._wake.clear()

    def halt(self, attempt: Attempt, reason: Halt) -> bool:
        """Stop a sync attempt running on a processor thread; its failure is recorded on the recorder thread.

        False when it has not started (its clock, or its check for a cancel, comes when it
        runs) or its outcome was claimed meanwhile (it finished).
        """
        thread_id = attempt.thread_id
        if thread_id is None:
            return False
        if not attempt.finalize():
            return False
        where = self._executor.where(attempt)
        # The stuck thread is replaced at once so the slot is free; the interrupt ends
        # the task at its next Python instruction (not inside a blocking C call).
        self._threads.retire(thread_id)
        attempt.interrupt(reason)
        self._recorder.halted(attempt, reason, where)
        return True
