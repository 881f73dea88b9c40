"""A stop signal lands on the main thread wherever it is, even inside a lock: its handler takes none."""

from __future__ import annotations

import signal
import threading
import time

from .conftest import WorkerFactory


def test_a_stop_signal_landing_inside_the_stop_events_own_lock_does_not_deadlock(
    backend: object, make_worker: WorkerFactory
) -> None:
    """The SIGTERM handler takes no lock: threading.Event's inner lock is not reentrant."""
    from conveyor_worker.__main__ import _on_signals

    handle = make_worker()
    worker = handle.worker
    previous = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    _on_signals(worker, worker.settings)
    handler = signal.getsignal(signal.SIGTERM)
    assert callable(handler)

    def signal_lands_mid_wait() -> None:
        # Given the thread the handler runs on inside Event.wait()/set(), holding the Event's lock
        with worker.lifecycle.stopping._cond:  # type: ignore[attr-defined]
            # When the first SIGTERM's handler runs right there
            handler(signal.SIGTERM, None)

    try:
        thread = threading.Thread(target=signal_lands_mid_wait, daemon=True)
        thread.start()
        thread.join(10)
        # Then the handler returned, and the worker drains all the same
        assert not thread.is_alive(), "the signal handler deadlocked on the stop Event's lock"
        deadline = time.monotonic() + 10
        while worker.lifecycle.accepting() and time.monotonic() < deadline:
            time.sleep(0.01)
        assert not worker.lifecycle.accepting()
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
