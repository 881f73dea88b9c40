"""Where tasks run: a pool of threads for sync tasks and one event loop thread for async ones."""

from __future__ import annotations

import asyncio
import ctypes
import logging
import threading
import time
from collections.abc import Callable, Coroutine
from concurrent.futures import Future
from typing import Any

logger = logging.getLogger(__name__)

CRASH_BACKOFF_MAX = 5.0  # seconds, cap of the pause before replacing a thread that crashed at once


def interrupt_thread(thread_id: int, exc_type: type[BaseException]) -> bool:
    """Raise exc_type in another thread at its next bytecode (not inside a blocking C call)."""
    done = ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(thread_id), ctypes.py_object(exc_type))
    return bool(done == 1)


class Processors:
    """Threads that each run target() until it returns; a thread stuck in a task can be retired."""

    def __init__(self, size: int, target: Callable[[], None], name: str) -> None:
        self._size = size
        self._target = target
        self._name = name
        self._lock = threading.Lock()
        self._retired: set[int] = set()
        self._threads: dict[int, threading.Thread] = {}
        self._counter = 0
        self._quick_crashes = 0  # crashes in a row of threads that lived under a second

    def start(self) -> None:
        """Start the threads (separate from __init__, so their owner can keep a reference first)."""
        for _ in range(self._size):
            self._spawn()

    def _spawn(self) -> None:
        with self._lock:
            self._counter += 1
            thread = threading.Thread(target=self._serve, name=f"{self._name}-{self._counter}", daemon=True)
            thread.start()
            assert thread.ident is not None
            self._threads[thread.ident] = thread

    def _serve(self) -> None:
        me = threading.get_ident()
        born = time.monotonic()
        try:
            self._target()
        except BaseException:  # a late timeout interrupt, or a bug: never lose a slot silently
            if not self.is_retired(me):
                logger.exception("task thread crashed; replacing it")
                # A thread that keeps crashing at once must not become a hot spawn loop.
                with self._lock:
                    self._quick_crashes = self._quick_crashes + 1 if time.monotonic() - born < 1 else 0
                    n = self._quick_crashes
                    pause = min(CRASH_BACKOFF_MAX, 0.05 * 2 ** min(n - 1, 10)) if n else 0.0
                time.sleep(pause)
                self._spawn()
        finally:
            with self._lock:
                self._threads.pop(me, None)
                self._retired.discard(me)

    def is_retired(self, thread_id: int) -> bool:
        """Tell whether a thread was retired (it must stop after its current task)."""
        with self._lock:
            return thread_id in self._retired

    def retire(self, thread_id: int) -> bool:
        """Stop using a thread that is stuck in a task and start a replacement; False if unknown."""
        with self._lock:
            if thread_id in self._retired or thread_id not in self._threads:
                return False
            self._retired.add(thread_id)
        self._spawn()
        return True

    @property
    def stuck(self) -> int:
        """Return how many retired threads are still running a task."""
        with self._lock:
            return sum(1 for t in self._retired if t in self._threads)

    @property
    def active(self) -> int:
        """Return how many threads that were not retired are running."""
        with self._lock:
            return sum(1 for t in self._threads if t not in self._retired)

    @property
    def alive(self) -> int:
        """Return how many threads are running."""
        with self._lock:
            return len(self._threads)


class AsyncRunner:
    """One thread running an asyncio event loop for coroutine tasks."""

    def __init__(self, name: str) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> None:
        """Start the loop's thread."""
        self._thread.start()

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        try:
            self.loop.run_forever()
        finally:
            self.loop.close()

    def submit(self, coro: Coroutine[Any, Any, None]) -> Future[None]:
        """Schedule a coroutine on the loop from any thread; return its future."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def shutdown(self) -> None:
        """Stop the loop (running coroutines are abandoned; their leases bring them back)."""
        self.loop.call_soon_threadsafe(self.loop.stop)
