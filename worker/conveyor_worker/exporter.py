"""--metrics-only: a process that serves queue metrics for autoscalers and runs no task."""

from __future__ import annotations

import threading

from .lifecycle import Heartbeat
from .timings import STALE_AFTER


class Exporter:
    """Serve /metrics and /work only: live while its loop beats, ready until asked to stop.

    Owner of its stop Event and its Heartbeat (each thread-safe on its own).
    """

    busy = 0  # it never runs a task

    def __init__(self) -> None:
        self._stop = threading.Event()
        self._beat = Heartbeat()

    def alive(self) -> bool:
        """Live: its loop beats."""
        return self._beat.age() < STALE_AFTER

    def ready(self) -> bool:
        """Ready until asked to stop (/readyz also pings Redis)."""
        return not self._stop.is_set()

    def request_stop(self) -> None:
        """Stop at once (there is nothing to drain)."""
        self._stop.set()

    def run(self) -> int:
        """Beat until asked to stop; return the exit code."""
        while not self._stop.wait(1.0):
            self._beat.beat()
        return 0
