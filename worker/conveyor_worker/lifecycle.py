"""Where the worker is in its life: starting, ready, draining, stopped; and whether Redis answers."""

from __future__ import annotations

import enum
import threading
import time


class State(enum.StrEnum):
    """Where the worker is in its life."""

    STARTING = "starting"
    READY = "ready"
    DRAINING = "draining"
    STOPPED = "stopped"


class Lifecycle:
    """The worker's state, its Redis health and its exit code.

    Owner of state, redis_ok and exit_code, all under _lock (reentrant, as the first
    SIGTERM's handler drains on the main thread wherever it was); stopping is an Event so any
    thread may wait on it. Only the main thread moves the state forward, except drain(),
    which a signal handler or a test may call from anywhere.
    """

    def __init__(self) -> None:
        self._lock = threading.RLock()  # reentrant: a signal handler may drain() while its thread holds it
        self._state = State.STARTING
        self._redis_ok = False
        self._exit_code = 0
        self.stopping = threading.Event()  # set once the worker stops taking work

    @property
    def state(self) -> State:
        """Return the current state."""
        with self._lock:
            return self._state

    def accepting(self) -> bool:
        """Tell whether the worker takes new work (it is READY)."""
        with self._lock:
            return self._state is State.READY

    def stopped(self) -> bool:
        """Tell whether the worker has stopped (its drain is over)."""
        with self._lock:
            return self._state is State.STOPPED

    def ready(self) -> bool:
        """Tell whether the worker is READY and Redis answers (/readyz)."""
        with self._lock:
            return self._state is State.READY and self._redis_ok

    def start(self) -> None:
        """Become READY unless a stop came first."""
        with self._lock:
            if self._state is State.STARTING:
                self._state = State.READY

    def drain(self) -> bool:
        """Stop taking work; True when this call is the one that started draining."""
        with self._lock:
            first = self._state in (State.STARTING, State.READY)
            if first:
                self._state = State.DRAINING
        self.stopping.set()
        return first

    def stop(self) -> None:
        """Mark the drain as over."""
        with self._lock:
            self._state = State.STOPPED
        self.stopping.set()

    @property
    def redis_ok(self) -> bool:
        """Tell whether Redis answered the main loop's last call."""
        with self._lock:
            return self._redis_ok

    @redis_ok.setter
    def redis_ok(self, value: bool) -> None:
        with self._lock:
            self._redis_ok = value

    @property
    def exit_code(self) -> int:
        """Return the code the process exits with."""
        with self._lock:
            return self._exit_code

    @exit_code.setter
    def exit_code(self, value: int) -> None:
        with self._lock:
            self._exit_code = value


class Heartbeat:
    """When a thread last showed progress: it beats, /livez reads the age (one float, under _lock)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._at = time.monotonic()

    def beat(self) -> None:
        """Note progress now."""
        now = time.monotonic()
        with self._lock:
            self._at = now

    def age(self) -> float:
        """Return seconds since the last beat."""
        with self._lock:
            at = self._at
        return time.monotonic() - at
