"""Pacing: how many processors cycle at once, decided by the pure pace() from what the main thread sees."""

from __future__ import annotations

import time

from .pipeline import ClaimPipeline
from .slots import Slots
from .timings import PARALLEL_ABOVE, PARK_ABOVE, SPILL_BELOW, STEER_EVERY
from .wakeups import Wakeups


def pace(*, idle: int, cycling: int, waiting: bool, load: float) -> str:
    """Decide whether to wake one more processor ("spill"), park one ("park") or do nothing ("hold")."""
    room = load < SPILL_BELOW or load > PARALLEL_ABOVE
    if idle and waiting and (cycling <= 0 or room):
        return "spill"
    if cycling > 1 and PARK_ABOVE < load <= PARALLEL_ABOVE:
        return "park"
    return "hold"


class Pacer:
    """Look at the processors every STEER_EVERY while any works: spill, park, or hand over tasks ahead.

    Runs on the main thread only, so its fields (the last CPU mark and the smoothed
    load, the share of one core the process uses) need no lock.
    """

    def __init__(self, concurrency: int, slots: Slots, wakeups: Wakeups, pipeline: ClaimPipeline) -> None:
        self._concurrency = concurrency
        self._slots = slots
        self._wakeups = wakeups
        self._pipeline = pipeline
        self._mark = (time.monotonic(), time.process_time())
        self.load = 0.0

    def steer(self) -> None:
        """Add a processor while work waits and the core has room, or park one of several on a full core."""
        mono, cpu = time.monotonic(), time.process_time()
        last_mono, last_cpu = self._mark
        self._mark = (mono, cpu)
        if mono > last_mono:
            self.load = (self.load + (cpu - last_cpu) / (mono - last_mono)) / 2
        long = self._slots.long_running(mono)
        idle = self._wakeups.idle
        waiting = self._wakeups.waiting > 0
        self._wakeups.steer(
            pace(idle=idle, cycling=self._concurrency - idle - long, waiting=waiting, load=self.load)
        )
        since = self._pipeline.ahead_since()
        if since is not None and mono - since >= STEER_EVERY:
            # The processor that claimed them is held up: let idle ones take them.
            self._wakeups.wake(self._pipeline.ahead_count())
