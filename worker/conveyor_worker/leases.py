"""The lease keeper: its own thread renews every lease this worker holds, every third of a lease."""

from __future__ import annotations

import logging
import threading
import time

from conveyor.exceptions import ConveyorError
from conveyor.store import Store

from .lifecycle import Heartbeat
from .pipeline import ClaimPipeline
from .recorder import Recorder
from .slots import Slots
from .timings import WATCH_SLEEP_MAX, WATCH_SLEEP_MIN, Timings

logger = logging.getLogger("conveyor_worker")


class LeaseKeeper:
    """Renew the leases of running attempts, of tasks claimed ahead and of the task waiting to run alone.

    It holds no shared state: its beat (for /livez) is a Heartbeat, and the leases it
    renews are read from Slots and ClaimPipeline under their locks.
    """

    def __init__(
        self,
        store: Store,
        timings: Timings,
        slots: Slots,
        pipeline: ClaimPipeline,
        recorder: Recorder,
        worker_id: str,
    ) -> None:
        self._store = store
        self._timings = timings
        self._slots = slots
        self._pipeline = pipeline
        self._recorder = recorder
        self._worker_id = worker_id
        self._done = threading.Event()
        self.beat = Heartbeat()

    def start(self) -> None:
        """Start the keeper's thread."""
        threading.Thread(target=self._keep, name="conveyor-leases", daemon=True).start()

    def stop(self) -> None:
        """End the keeper's thread (the worker has stopped)."""
        self._done.set()

    def _keep(self) -> None:
        t = self._timings
        renew_at = time.monotonic() + t.renew_every
        while not self._done.is_set():
            now = time.monotonic()
            self.beat.beat()
            if now >= renew_at:
                # After a failure, try again soon: when Redis comes back, this worker's leases
                # are renewed within moments, before anyone may reclaim them.
                renew_at = now + (t.renew_every if self.renew() else t.renew_retry)
            self._done.wait(min(WATCH_SLEEP_MAX, max(WATCH_SLEEP_MIN, renew_at - time.monotonic())))

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
        for (task_id, _, _), ok in zip(leases, held, strict=True):
            attempt = self._slots.get(task_id)
            if not ok and attempt is not None and attempt.lose_lease():
                logger.warning(
                    "lease lost while running", extra=self._recorder.task_fields(attempt, event="lease_lost")
                )
        return True
