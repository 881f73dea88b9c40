"""The drain: running tasks get up to the shutdown timeout, the rest go back to their queues."""

from __future__ import annotations

import logging
import time

from .lifecycle import Heartbeat
from .pipeline import ClaimPipeline
from .recorder import Recorder
from .runners import Processors
from .slots import Slots
from .timings import SLOT_POLL, STEER_EVERY

logger = logging.getLogger("conveyor_worker")


def drain(
    slots: Slots,
    pipeline: ClaimPipeline,
    recorder: Recorder,
    threads: Processors,
    beat: Heartbeat,
    *,
    deadline: float,
    worker_id: str,
) -> None:
    """Give running tasks until deadline (monotonic), then return the rest to their queues (main thread)."""
    while time.monotonic() < deadline:
        beat.beat()
        pipeline.land_stale(older_than=STEER_EVERY)
        pipeline.flush_deferred(older_than=STEER_EVERY)
        # Wait for the processors too: they run what they claimed ahead.
        if not (slots.busy or pipeline.has_ahead() or threads.active):
            break
        slots.wait(min(SLOT_POLL, max(0.0, deadline - time.monotonic())))
    pipeline.land_stale(older_than=0.0)
    pipeline.flush_deferred()
    left = slots.attempts()
    while (claimed := pipeline.take()) is not None:
        released = recorder.give_back(claimed.task_id, claimed.queue, claimed.token, started=False)
        logger.warning(
            "task returned to its queue before it started" if released else "task left to its lease",
            extra={
                "event": "task_released",
                "task_id": claimed.task_id,
                "queue": claimed.queue,
                "worker_id": worker_id,
            },
        )
    for attempt in left:
        if not attempt.finalize():
            continue
        released = recorder.give_back(attempt.task_id, attempt.queue, attempt.token)
        logger.warning(
            "task returned to its queue unfinished" if released else "task left to its lease",
            extra=recorder.task_fields(attempt, event="task_released"),
        )
        slots.leave(attempt)
