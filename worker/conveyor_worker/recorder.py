"""The recorder: a verdict becomes one store call, then a freed slot, log lines and metrics."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from conveyor import codec
from conveyor.exceptions import ConveyorError
from conveyor.store import ScriptCall, Store

from .executor import CANCELLED, Attempt, Executor, Halt, Verdict
from .lifecycle import Lifecycle
from .logs import TaskLines
from .metrics import Metrics
from .slots import Slots
from .timings import RECORD_RETRY_FIRST, RECORD_RETRY_MAX

logger = logging.getLogger("conveyor_worker")


class Recorder:
    """Store outcomes and give tasks back; free their slots, log them and count them.

    Holds no shared state of its own (the slots are Slots'). It owns the recorder
    thread, on which the attempts the watchdog stopped (timeouts, cancels) are recorded,
    so neither the watchdog nor renewals ever wait on Redis or on a task_finished receiver.
    """

    def __init__(
        self,
        store: Store,
        executor: Executor,
        slots: Slots,
        metrics: Metrics,
        lifecycle: Lifecycle,
        *,
        worker_id: str,
        result_ttl: int,
        failed_ttl: int,
    ) -> None:
        self._store = store
        self._executor = executor
        self._slots = slots
        self._metrics = metrics
        self._lifecycle = lifecycle
        self._worker_id = worker_id
        self._result_ttl = result_ttl
        self._failed_ttl = failed_ttl
        self.lines = TaskLines(logger)  # the two INFO lines of every task
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="conveyor-recorder")

    def close(self) -> None:
        """Stop the recorder thread (a timeout still being recorded is left to its lease)."""
        self._thread.shutdown(wait=False)

    # -- outcomes ------------------------------------------------------------------------

    def call_for(self, attempt: Attempt, verdict: Verdict) -> ScriptCall:
        """Return the one store call that records a verdict (its fields built by codec)."""
        store, tid, q, me = self._store, attempt.task_id, attempt.queue, attempt.token
        if verdict.kind == "succeeded":
            fields = codec.success_fields(verdict.finished_at, verdict.return_json)
            return store.finish_call(tid, q, me, "SUCCESSFUL", self._result_ttl, fields)
        if verdict.kind == "retry":
            delay_ms = int(verdict.retry_delay * 1000)
            return store.retry_call(tid, q, me, delay_ms, codec.retry_fields(verdict.errors))
        fields = codec.failure_fields(verdict.finished_at, verdict.errors)
        return store.finish_call(tid, q, me, "FAILED", self._failed_ttl, fields)

    def record(self, attempt: Attempt, verdict: Verdict, then: Callable[[], None] | None = None) -> bool:
        """Store a verdict on its own round trip (off the processors: coroutines, timeouts); free its slot."""
        return self.persist(attempt, verdict, then, self._write)

    def _write(self, attempt: Attempt, verdict: Verdict) -> bool:
        return bool(self._store.run([self.call_for(attempt, verdict)])[0])

    def persist(
        self,
        attempt: Attempt,
        verdict: Verdict,
        then: Callable[[], None] | None,
        write: Callable[[Attempt, Verdict], bool],
    ) -> bool:
        """Call write(attempt, verdict) until Redis takes it, for as long as this worker runs; then finish up.

        The attempt keeps its slot meanwhile, so its lease is renewed the moment Redis is
        back: an outage, however long, does not make a finished task run again.
        """
        stored = False
        try:
            delay, warned = RECORD_RETRY_FIRST, False
            while True:
                try:
                    stored = write(attempt, verdict)
                    break
                except ConveyorError as exc:
                    if self._lifecycle.stopped():
                        logger.error(
                            "could not record outcome before stopping: %s",
                            exc,
                            extra=self.task_fields(attempt, event="record_failed"),
                        )
                        break
                    if not warned:
                        warned = True
                        logger.warning(
                            "could not record outcome yet (trying again): %s",
                            exc,
                            extra=self.task_fields(attempt, event="record_delayed"),
                        )
                    time.sleep(delay)
                    delay = min(delay * 2, RECORD_RETRY_MAX)
        finally:
            self.finished(attempt, verdict, stored, then)
        return stored

    def finished(
        self, attempt: Attempt, verdict: Verdict, stored: bool, then: Callable[[], None] | None
    ) -> None:
        """Free the attempt's slot, log its outcome and run then() if it was stored."""
        self._slots.leave(attempt)
        self._log_verdict(attempt, verdict, stored)
        if stored and then is not None:
            try:
                then()
            except Exception:  # a signal receiver's bug must not take the processor down
                logger.exception(
                    "a task_finished receiver raised", extra=self.task_fields(attempt, event="signal_failed")
                )

    def halted(self, attempt: Attempt, reason: Halt, where: str) -> None:
        """Record, on the recorder thread, the failure of an attempt the watchdog stopped."""
        self._thread.submit(self._executor.record_halt, attempt, reason, where, self.record)

    # -- giving back -----------------------------------------------------------------------

    def give_back(self, task_id: str, queue: str, token: str, *, started: bool = True) -> bool:
        """Return an unfinished task to its queue; started=False also takes this worker out of worker_ids."""
        try:
            return self._store.release(task_id, queue, token, started=started)
        except ConveyorError as exc:
            logger.warning(
                "could not release: %s",
                exc,
                extra={
                    "event": "release_failed",
                    "task_id": task_id,
                    "queue": queue,
                    "worker_id": self._worker_id,
                },
            )
            return False

    def postpone(self, attempt: Attempt) -> None:
        """Give back, unrun, a task whose path this worker cannot import yet; it is due again later."""
        assert attempt.postpone is not None
        stored = False
        try:
            call = self._store.postpone_call(
                attempt.task_id, attempt.queue, attempt.token, int(attempt.postpone * 1000)
            )
            stored = bool(self._store.run([call])[0])
        except ConveyorError as exc:
            logger.warning(
                "could not postpone: %s", exc, extra=self.task_fields(attempt, event="record_failed")
            )
        finally:
            self._slots.leave(attempt)
        if stored:
            logger.warning(
                "task path does not import here (yet); back in its queue in %.0fs: %s",
                attempt.postpone,
                attempt.rejection,
                extra=self.task_fields(
                    attempt, event="task_postponed", delay_ms=int(attempt.postpone * 1000)
                ),
            )

    # -- log lines and metrics ------------------------------------------------------------

    def task_fields(self, attempt: Attempt, **extra: Any) -> dict[str, Any]:
        """Return the log fields that name an attempt."""
        fields: dict[str, Any] = {
            "task_id": attempt.task_id,
            "queue": attempt.queue,
            "worker_id": self._worker_id,
        }
        if attempt.result is not None:
            fields["task_path"] = attempt.result.task.module_path
            fields["attempt"] = attempt.result.attempts
        fields.update(extra)
        return fields

    def started(self, attempt: Attempt) -> None:
        """Count and log an attempt whose task starts now (a first attempt also times its pickup)."""
        self._metrics.count("started", attempt.queue)
        if attempt.ready_at is not None:
            self._metrics.observe_pickup(attempt.queue, max(0.0, time.time() - attempt.ready_at))
        self.lines.info("task started", self.task_fields(attempt, event="task_started", status="RUNNING"))

    def _log_verdict(self, attempt: Attempt, verdict: Verdict, stored: bool) -> None:
        q = attempt.queue
        duration_ms = round(verdict.duration * 1000, 3)
        if not stored:
            attempt.lose_lease()
            logger.warning(
                "lease lost; outcome discarded (another delivery will run it)",
                extra=self.task_fields(attempt, event="lease_lost"),
            )
            return
        self._metrics.observe(q, verdict.duration)
        if verdict.kind == "succeeded":
            self._metrics.count("succeeded", q)
            fields = self.task_fields(
                attempt, event="task_finished", status="SUCCESSFUL", duration_ms=duration_ms
            )
            self.lines.info("task finished", fields)
            return
        last = verdict.errors[-1] if verdict.errors else None
        error = last.exception_class_path if last else None
        trace = last.traceback if last else None
        if error == CANCELLED and verdict.kind != "retry":
            # An operator's cancel is no error of the task: one line, no traceback.
            self._metrics.count("failed", q)
            self._metrics.count("cancelled", q)
            fields = self.task_fields(
                attempt,
                event="task_cancelled",
                status="FAILED",
                duration_ms=duration_ms,
                error=error,
                reason=attempt.rejection,  # set when it never started
            )
            logger.warning("task cancelled by an operator", extra=fields)
            return
        if verdict.kind == "retry":
            self._metrics.count("retried", q)
            delay_ms = int(verdict.retry_delay * 1000)
            fields = self.task_fields(
                attempt, event="task_retry", status="READY", duration_ms=duration_ms, delay_ms=delay_ms
            )
            logger.warning("task failed; will retry", extra={**fields, "error": error, "traceback": trace})
            return
        self._metrics.count("failed", q)
        fields = self.task_fields(
            attempt, event="task_finished", status="FAILED", duration_ms=duration_ms, reason=attempt.rejection
        )
        message = "task failed" if verdict.kind == "failed" else "task rejected"
        logger.error(message, extra={**fields, "error": error, "traceback": trace})
