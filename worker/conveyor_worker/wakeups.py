"""Idle processors and the work announced to them: how the main thread rouses and parks processors."""

from __future__ import annotations

import threading
from collections.abc import Callable


def batch_size(*, idle: int, waiting: int) -> int:
    """How many tasks to claim at once: one, or while work waits, one per idle processor more.

    Tasks claimed ahead wait in the claim pipeline for their processor to run them one
    after another, or for an idle processor to take them if the one before runs long;
    so no more are claimed than there are processors free to run them.
    """
    return max(1, min(1 + idle, waiting))


class Wakeups:
    """Which processors are idle, what work was announced, how much waits, who should park.

    Owner of idle, announced, waiting and the park requests, all under one condition
    that idle processors wait on; went_idle (an Event) tells the main thread that a
    processor went idle, so it listens on Redis again.
    """

    def __init__(self) -> None:
        # Reentrant, since a signal handler on the main thread (request_stop) may run while that
        # thread holds it; taken with 'with self._lock', which costs no Python call, unlike a Condition.
        self._lock = threading.RLock()
        self._cond = threading.Condition(self._lock)
        self._idle = 0  # processors waiting on _cond
        self._announced = 0  # wake tokens taken by the main thread; a processor compares its own count
        self._waiting = 0  # tasks the latest claim left ready (a hint for pacing and claiming ahead)
        self._park = 0  # cycling processors asked to go idle
        self.went_idle = threading.Event()

    @property
    def idle(self) -> int:
        """Return how many processors are idle."""
        with self._lock:
            return self._idle

    @property
    def waiting(self) -> int:
        """Return how many tasks the latest claim left ready (at least 1 after an announcement)."""
        with self._lock:
            return self._waiting

    def claim_size(self) -> tuple[int, int]:
        """Return the announcements made so far (the claimer notes them) and how many tasks to claim."""
        with self._lock:
            return self._announced, batch_size(idle=self._idle, waiting=self._waiting)

    def left_waiting(self, count: int) -> None:
        """Note how many tasks a claim left ready."""
        with self._lock:
            self._waiting = count

    def announce(self, wake: bool = True) -> None:
        """Note that work may be waiting; wake one idle processor unless pacing decides."""
        with self._lock:
            self._announced += 1
            self._waiting = max(self._waiting, 1)
            if wake:
                self._cond.notify()

    def wake(self, count: int = 1) -> None:
        """Wake up to count idle processors."""
        with self._lock:
            self._cond.notify(count)

    def wake_all(self) -> None:
        """Wake every idle processor (to stop, or to look again)."""
        with self._lock:
            self._cond.notify_all()

    def steer(self, step: str) -> None:
        """Apply a pacing step: wake one more processor ("spill"), park one ("park") or neither."""
        with self._lock:
            self._park = int(step == "park")
            if step == "spill":
                self._cond.notify()

    def take_park(self) -> bool:
        """Take up a request to park; True when this processor is the one to go idle."""
        with self._lock:
            if self._park:
                self._park -= 1
                return True
            return False

    def sleep(
        self,
        seen: int,
        *,
        leave: Callable[[], bool],
        ahead: Callable[[], bool],
        accepting: Callable[[], bool],
    ) -> tuple[bool, int]:
        """Wait to be woken unless work came first; return (go on claiming, announcements seen).

        The checks run under the condition, so a wake sent between them and the wait is
        never lost: leave() (the thread was retired) ends at once, ahead() (tasks claimed
        ahead wait) goes on at once, and so does an announcement made after seen.
        """
        with self._lock:
            if leave():
                return False, seen
            if ahead():
                return True, seen
            if not accepting():
                return False, seen
            if self._announced != seen:
                return True, self._announced
            self._idle += 1
            self.went_idle.set()
            try:
                self._cond.wait()
            finally:
                self._idle -= 1
            return not leave() and (accepting() or ahead()), seen
