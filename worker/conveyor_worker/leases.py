"""The lease keeper: its own thread renews every lease this worker holds and stops cancelled tasks."""

from __future__ import annotations

import logging
import threading
import time

from conveyor.exceptions import ConveyorError, TaskCancelled
from conveyor.store import CANCEL_REQUESTED, Store

from .executor import Attempt
from .lifecycle import Heartbeat
from .pipeline import ClaimPipeline
from .recorder import Recorder
from .slots import Slots
from .timings import CANCEL_POLL, WATCH_SLEEP_MAX, WATCH_SLEEP_MIN, Timings
from .watchdog import Watchdog

logger = logging.getLogger("conveyor_worker")


class LeaseKeeper:
    """Renew the leases of running attempts, of tasks claimed ahead and of the task waiting to run alone.

    A renewal also answers whether an operator cancelled a task: one running is stopped
    (a sync one by Watchdog.halt, a coroutine by cancelling it), one claimed ahead is
    marked so it fails unstarted. While it holds leases it reads the cancel counter every
    CANCEL_POLL and renews at once when it moved, so a cancel lands within about a second.
    It holds no shared state: its beat (for /livez) is a Heartbeat, the leases it renews
    are read from Slots and ClaimPipeline under their locks; the counter it saw last and
    whether to look again are its thread's own.
    """

    def __init__(
        self,
        store: Store,
        timings: Timings,
        slots: Slots,
        pipeline: ClaimPipeline,
        recorder: Recorder,
        watchdog: Watchdog,
        worker_id: str,
    ) -> None:
        self._store = store
        self._timings = timings
        self._slots = slots
        self._pipeline = pipeline
        self._recorder = recorder
        self._watchdog = watchdog
        self._worker_id = worker_id
        self._done = threading.Event()
        self._cancels_seen: int | None = None  # the cancel counter at the last look
        self._look_again = False  # renew at the next look even if the counter stays put
        self.beat = Heartbeat()

    def start(self) -> None:
        """Start the keeper's thread."""
        threading.Thread(target=self._keep, name="conveyor-leases", daemon=True).start()

    def stop(self) -> None:
        """End the keeper's thread (the worker has stopped)."""
        self._done.set()

    def _keep(self) -> None:
        t = self._timings
        now = time.monotonic()
        renew_at, look_at = now + t.renew_every, now + CANCEL_POLL
        while not self._done.is_set():
            now = time.monotonic()
            self.beat.beat()
            if now >= look_at:
                look_at = now + CANCEL_POLL
                moved = self._cancels_moved()
                if moved or self._look_again:
                    renew_at = now
                    # A task claimed at that very moment (read, not yet in a slot) is renewed
                    # only next time: look once more after a move.
                    self._look_again = moved
            if now >= renew_at:
                # After a failure, try again soon: when Redis comes back, this worker's leases
                # are renewed within moments, before anyone may reclaim them.
                renew_at = now + (t.renew_every if self.renew() else t.renew_retry)
            wake_at = min(renew_at, look_at)
            self._done.wait(min(WATCH_SLEEP_MAX, max(WATCH_SLEEP_MIN, wake_at - time.monotonic())))

    def _cancels_moved(self) -> bool:
        """Tell whether an operator cancelled a running task anywhere since the last look (one GET).

        Only while this worker holds leases: a cancel of a task held nowhere needs no worker.
        """
        if not (self._slots.busy or self._pipeline.has_ahead() or self._slots.alone is not None):
            return False
        try:
            queues: set[str] = set()
            if self._store.keys.per_queue:  # a counter per slot: those of the queues held here
                queues = {a.queue for a in self._slots.attempts()}
                queues.update(queue for _, queue, _ in self._pipeline.ahead_leases())
            count = self._store.cancel_signal(sorted(queues))
        except ConveyorError:  # the renewals report Redis trouble
            return False
        moved = count != self._cancels_seen
        self._cancels_seen = count
        return moved

    def renew(self) -> bool:
        """Renew every lease this worker holds in one round trip; False when Redis did not answer."""
        running = self._slots.attempts()
        held_here = [a for a in running if not a.lease_lost]
        alone = self._slots.alone
        if alone is not None and all(a is not alone for a in running):
            held_here.append(alone)  # waiting for the others to finish
        leases = [(a.task_id, a.queue, a.token) for a in held_here] + self._pipeline.ahead_leases()
        if not leases:
            return True
        try:
            held = self._store.renew(leases, self._timings.lease_ms)
        except ConveyorError as exc:
            logger.warning(
                "lease renewal failed: %s", exc, extra={"event": "renew_failed", "worker_id": self._worker_id}
            )
            return False
        for i, ((task_id, _, token), answer) in enumerate(zip(leases, held, strict=True)):
            if answer == CANCEL_REQUESTED:
                if not self._cancel(held_here[i] if i < len(held_here) else None, task_id, token):
                    self._look_again = True  # between the pipeline and a slot: look again soon
                continue
            attempt = self._slots.get(task_id)
            if not answer and attempt is not None and attempt.lose_lease():
                logger.warning(
                    "lease lost while running", extra=self._recorder.task_fields(attempt, event="lease_lost")
                )
        return True

    def _cancel(self, attempt: Attempt | None, task_id: str, token: str) -> bool:
        """Stop a task an operator cancelled, wherever it is here; False when it is in neither place."""
        if attempt is None and not self._pipeline.cancel_ahead(task_id, token):
            attempt = self._slots.get(task_id)  # taken from those ahead since the renewal was sent
            if attempt is None or attempt.token != token:
                return False
        if attempt is None or not attempt.cancel():  # marked ahead, or stopping already
            return True
        if attempt.is_async:
            attempt.cancel_coroutine()  # or it fails as it starts (Attempt.enter_loop)
        else:
            self._watchdog.halt(attempt, TaskCancelled)  # or it fails as it starts (Attempt.enter)
        return True
