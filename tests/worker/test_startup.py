"""The worker starts its processor threads cleanly."""

from __future__ import annotations

import logging
import threading
import time

import pytest
from conveyor_worker.loop import Worker
from conveyor_worker.metrics import Metrics
from conveyor_worker.runners import Processors
from conveyor_worker.settings import load_settings

from tests import tasks


def test_processors_start_without_crashing(backend: object, caplog: pytest.LogCaptureFixture) -> None:
    """No processor thread dies and is replaced while the worker starts (they once ran before
    the worker held a reference to them)."""
    # Given a queued task and a worker with several processors
    result = tasks.calculate_meaning_of_life.enqueue()
    settings = load_settings(["--batch", "--health-port", "0", "--concurrency", "4"], {})
    worker = Worker(settings, backend, backend.store, ("tests",), Metrics(4))  # type: ignore[attr-defined]

    # When it runs to the end of the batch
    with caplog.at_level(logging.WARNING):
        assert worker.run() == 0

    # Then nothing crashed and the task ran
    assert not [r for r in caplog.records if "crashed" in r.getMessage()]
    assert backend.get_result(result.id).return_value == 42  # type: ignore[attr-defined]


def test_a_thread_that_keeps_crashing_is_replaced_with_a_growing_pause(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A processor that dies at once every time is replaced a handful of times a second, not in a hot loop."""
    starts: list[float] = []
    fixed = threading.Event()

    def crash() -> None:
        if fixed.is_set():
            return  # a thread whose target returns is not replaced
        starts.append(time.monotonic())
        raise RuntimeError("broken at start")

    processors = Processors(1, crash, "crashing")
    with caplog.at_level(logging.CRITICAL, logger="conveyor_worker.runners"):
        processors.start()
        time.sleep(1.0)
        count = len(starts)
        fixed.set()

    # 0.05 + 0.1 + 0.2 + 0.4 s of pauses fit in a second: about five starts, never hundreds
    assert 2 <= count <= 8, f"{count} starts in one second"
