"""The worker registry: its own thread keeps this worker's heartbeat in Redis, where operators list it."""

from __future__ import annotations

import importlib.metadata
import json
import logging
import os
import socket
import threading
import time
from datetime import UTC, datetime

from conveyor.exceptions import ConveyorError
from conveyor.store import Store

from .lifecycle import Lifecycle, State
from .settings import WorkerSettings
from .slots import Slots
from .timings import HEARTBEAT_TTL_BEATS, LEAVE_WAIT, STATE_LOOK

logger = logging.getLogger("conveyor_worker")


def conveyor_version() -> str:
    """Return the installed django-conveyor version ("0+unknown" when it is not installed)."""
    try:
        return importlib.metadata.version("django-conveyor")
    except importlib.metadata.PackageNotFoundError:
        return "0+unknown"


class Registry:
    """Tell Redis every heartbeat_every seconds that this worker lives, and what it is; leave on a clean stop.

    Each heartbeat lasts HEARTBEAT_TTL_BEATS periods, so a worker killed without a word
    drops out of the list by itself; a change of state (draining) is told within STATE_LOOK.
    It holds no shared state: it reads the state from Lifecycle and the busy slots from
    Slots; what it last told and whether it has warned are its thread's own.
    """

    def __init__(self, store: Store, settings: WorkerSettings, lifecycle: Lifecycle, slots: Slots) -> None:
        self._store = store
        self._lifecycle = lifecycle
        self._slots = slots
        self._worker_id = settings.worker_id
        self._every = settings.heartbeat_every
        self._ttl_ms = max(1, int(settings.heartbeat_every * HEARTBEAT_TTL_BEATS * 1000))
        # The keys Operator.workers() reads (times ISO 8601 in UTC); queues as --queues gave them.
        self._fixed = {
            "id": settings.worker_id,
            "host": os.environ.get("POD_NAME") or socket.gethostname(),
            "pid": os.getpid(),
            "queues": settings.queues.as_given(),
            "slots": settings.concurrency,
            "started_at": datetime.now(UTC).isoformat(),
            "version": conveyor_version(),
        }
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, name="conveyor-registry", daemon=True)
        self._failing = False  # a failed heartbeat was reported; the next success clears it

    def start(self) -> None:
        """Start the registry's thread (its first heartbeat goes at once)."""
        self._thread.start()

    def stop(self) -> None:
        """Take this worker out of the registry (a clean stop) and end the thread."""
        self._done.set()
        if self._thread.is_alive():
            self._thread.join(LEAVE_WAIT)

    def describe(self, state: State) -> str:
        """Return this worker's description as the JSON its heartbeat carries (heartbeat.lua adds seen_ms)."""
        return json.dumps({**self._fixed, "busy": self._slots.busy, "state": state.value})

    def _run(self) -> None:
        told: State | None = None
        beat_at = 0.0
        while True:
            state = self._lifecycle.state
            now = time.monotonic()
            if now >= beat_at or state is not told:
                self._tell(self.describe(state), self._ttl_ms)
                told, beat_at = state, now + self._every
            if self._done.wait(min(STATE_LOOK, self._every, max(0.0, beat_at - time.monotonic()))):
                break
        self._tell(self.describe(self._lifecycle.state), 0)  # 0: leave

    def _tell(self, description: str, ttl_ms: int) -> None:
        try:
            self._store.heartbeat(self._worker_id, description, ttl_ms)
        except ConveyorError as exc:
            if not self._failing:  # once per outage; the main loop reports Redis trouble itself
                logger.warning(
                    "heartbeat failed: %s",
                    exc,
                    extra={"event": "heartbeat_failed", "worker_id": self._worker_id},
                )
            self._failing = True
            return
        self._failing = False
