"""A signal handler runs request_stop on the main thread, inside whatever the main thread holds."""

from __future__ import annotations

import faulthandler
import signal
import time

from .conftest import WorkerFactory


def test_a_stop_signal_may_land_while_the_main_thread_holds_any_part(
    backend: object, make_worker: WorkerFactory
) -> None:
    """request_stop() from a signal handler never deadlocks on a lock its own thread holds."""
    worker = make_worker().worker
    stops = 0

    def on_alarm(signum: int, frame: object) -> None:
        nonlocal stops
        stops += 1
        worker.request_stop()

    previous = signal.signal(signal.SIGALRM, on_alarm)
    faulthandler.dump_traceback_later(20, exit=True)  # a deadlock ends the run loudly, not silently
    signal.setitimer(signal.ITIMER_REAL, 0.0002, 0.0002)
    try:
        # Given the main thread inside the parts' locks again and again (as the main loop is)
        deadline = time.monotonic() + 0.5
        while time.monotonic() < deadline:
            worker.lifecycle.accepting()
            _ = worker.busy, worker.wakeups.idle, worker.wakeups.waiting
            worker.slots.spent()
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0, 0)
        faulthandler.cancel_dump_traceback_later()
        signal.signal(signal.SIGALRM, previous)
    # Then every signal was handled and the worker is draining
    assert stops > 100
    assert not worker.lifecycle.accepting()
