"""Where tasks run: a pool of threads for sync tasks and one event loop thread for async ones."""

from __future__ import annotations

import asyncio
import ctypes
import logging
import queue
import threading
from collections.abc import Callable, Coroutine
from typing import Any

logger = logging.getLogger(__name__)


def interrupt_thread(thread_id: int, exc_type: type[BaseException]) -> bool:
    """Raise exc_type in another thread at its next bytecode (not inside a blocking C call)."""
    done = ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(thread_id), ctypes.py_object(exc_type))
    return bool(done == 1)


class ThreadPool:
    """A fixed number of live threads; a thread stuck past its task's timeout is retired and replaced."""

    def __init__(self, size: int, name: str) -> None:
        self._jobs: queue.SimpleQueue[Callable[[], None] | None] = queue.SimpleQueue()
        self._name = name
        self._lock = threading.Lock()
        self._retired: set[int] = set()
        self._threads: dict[int, threading.Thread] = {}
        self._counter = 0
        for _ in range(size):
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
        while me not in self._retired:
            try:
                job = self._jobs.get()
                if job is None:
                    break
                job()
            except BaseException:  # a late timeout interrupt or a bug: never kill the pool silently
                if me not in self._retired:
                    logger.exception("task thread crashed; replacing it")
                    self._retired.add(me)
                    self._spawn()
        with self._lock:
            self._threads.pop(me, None)
            self._retired.discard(me)

    def submit(self, job: Callable[[], None]) -> None:
        """Queue a job for the next free thread."""
        self._jobs.put(job)

    def retire(self, thread_id: int) -> None:
        """Stop using a thread that is stuck in a task, and start a replacement."""
        with self._lock:
            if thread_id in self._retired or thread_id not in self._threads:
                return
            self._retired.add(thread_id)
        self._spawn()

    @property
    def stuck(self) -> int:
        """Return how many retired threads are still running a task."""
        with self._lock:
            return sum(1 for t in self._retired if t in self._threads)

    def shutdown(self) -> None:
        """Ask idle threads to exit (running tasks are not interrupted)."""
        with self._lock:
            count = len(self._threads)
        for _ in range(count):
            self._jobs.put(None)


class AsyncRunner:
    """One thread running an asyncio event loop for coroutine tasks."""

    def __init__(self, name: str) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    def submit(self, coro: Coroutine[Any, Any, None]) -> None:
        """Schedule a coroutine on the loop from any thread."""
        asyncio.run_coroutine_threadsafe(coro, self.loop)

    def shutdown(self) -> None:
        """Stop the loop (running coroutines are abandoned; their leases bring them back)."""
        self.loop.call_soon_threadsafe(self.loop.stop)
