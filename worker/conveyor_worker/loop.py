"""The worker: a claim loop with explicit states, a watchdog for leases and timeouts, and drain."""

from __future__ import annotations

import enum
import logging
import random
import threading
import time
from collections.abc import Callable
from typing import Any

from conveyor import codec
from conveyor.backend import RedisBackend
from conveyor.exceptions import ConveyorError, RedisUnavailable, TaskTimeout
from conveyor.store import Claimed, Store

from .executor import Attempt, Executor, Verdict
from .metrics import Metrics
from .runners import AsyncRunner, ThreadPool, interrupt_thread
from .settings import WorkerSettings

logger = logging.getLogger("conveyor_worker")

PROMOTE_EVERY = 1.0  # seconds between promotions while busy (idle workers promote on wake-up)
QUEUE_REFRESH_EVERY = 1.0  # seconds between re-reading the queue list for '*'
BACKOFF_MAX = 5.0  # seconds, cap of the reconnect backoff


class State(enum.StrEnum):
    """Where the worker is in its life."""

    STARTING = "starting"
    READY = "ready"
    DRAINING = "draining"
    STOPPED = "stopped"


class Worker:
    """Claim tasks from Redis, run them, record outcomes, and never lose one."""

    def __init__(
        self,
        settings: WorkerSettings,
        backend: RedisBackend,
        store: Store,
        allowed_modules: tuple[str, ...],
        metrics: Metrics,
        on_busy_change: Callable[[int], None] | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.metrics = metrics
        self.worker_id = settings.worker_id
        self.lease_ms = int(settings.lease * 1000)
        self.executor = Executor(backend, allowed_modules, self._record)
        self.result_ttl = backend.settings.result_ttl
        self.failed_ttl = backend.settings.failed_result_ttl
        self._on_busy_change = on_busy_change
        self.state = State.STARTING
        self.redis_ok = False
        self.exit_code = 0
        self.finished = 0  # attempts recorded (for --max-tasks)
        self.claimed = 0
        self._running: dict[str, Attempt] = {}
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._watch_wake = threading.Event()
        self._queues: list[str] = []
        self._queues_at = 0.0
        self._promote_at = 0.0
        self._reclaim_at = 0.0
        self._reclaim_every = min(5.0, settings.lease / 4)
        self.loop_beat = time.monotonic()
        self.watch_beat = time.monotonic()
        self._pool: ThreadPool | None = None
        self._async: AsyncRunner | None = None
        self._watchdog: threading.Thread | None = None

    # -- health ------------------------------------------------------------------

    @property
    def busy(self) -> int:
        """Return how many slots run a task."""
        return len(self._running)

    @property
    def ready(self) -> bool:
        """Ready: Redis answers and the worker takes new work."""
        return self.state is State.READY and self.redis_ok

    def alive(self, stale_after: float = 30.0) -> bool:
        """Live: the loop and the watchdog make progress and abandoned threads do not pile up."""
        now = time.monotonic()
        if self.state is State.STOPPED:
            return True
        # A thread stuck past its task's timeout was replaced and holds no slot; only more
        # of them than there are slots is a leak worth a restart.
        stuck = self._pool.stuck if self._pool else 0
        return (
            now - self.loop_beat < stale_after
            and now - self.watch_beat < stale_after
            and stuck <= self.settings.concurrency
        )

    # -- lifecycle ---------------------------------------------------------------

    def request_stop(self) -> None:
        """Stop claiming and drain (the first SIGTERM)."""
        if self.state in (State.STARTING, State.READY):
            logger.info(
                "draining",
                extra={"event": "worker_draining", "worker_id": self.worker_id, "count": self.busy},
            )
            self.state = State.DRAINING
        self._stop.set()
        with self._cond:
            self._cond.notify_all()

    def run(self) -> int:
        """Run until stopped, drained (batch) or max tasks; return the exit code."""
        self._pool = ThreadPool(self.settings.concurrency, "conveyor-task")
        self._async = AsyncRunner("conveyor-async")
        self._watchdog = threading.Thread(target=self._watch, name="conveyor-watchdog", daemon=True)
        self._watchdog.start()
        if self.state is State.STARTING:
            self.state = State.READY
        failures = 0
        while self.state is State.READY:
            self.loop_beat = time.monotonic()
            try:
                self._tick()
                if not self.redis_ok:
                    logger.info(
                        "redis reachable", extra={"event": "redis_recovered", "worker_id": self.worker_id}
                    )
                self.redis_ok, failures = True, 0
            except RedisUnavailable as exc:
                failures += 1
                if self.redis_ok or failures == 1:
                    logger.warning(
                        "redis unavailable: %s",
                        exc,
                        extra={"event": "redis_unavailable", "worker_id": self.worker_id},
                    )
                self.redis_ok = False
                delay = min(BACKOFF_MAX, 0.05 * 2**failures) * random.uniform(0.5, 1.5)
                self._stop.wait(delay)
        self._drain()
        self.state = State.STOPPED
        self._watch_wake.set()
        self._pool.shutdown()
        self._async.shutdown()
        return self.exit_code

    # -- the loop ----------------------------------------------------------------

    def _tick(self) -> None:
        """Do one step: maintenance, then claim what fits, else wait for work."""
        queues = self._current_queues()
        now = time.monotonic()
        promotion = None
        if now >= self._promote_at:
            promotion = self.store.promote(queues, limit=1000)
            self._promote_at = now + PROMOTE_EVERY
            if promotion.next_due_ms is not None:
                until = (promotion.next_due_ms - promotion.server_now_ms) / 1000
                self._promote_at = min(self._promote_at, now + max(0.0, until))
        if now >= self._reclaim_at:
            self.store.reclaim(
                queues, limit=1000, max_deliveries=self.settings.max_deliveries, failed_ttl=self.failed_ttl
            )
            self._reclaim_at = now + self._reclaim_every
        wanted = self.settings.concurrency - self.busy
        if self.settings.max_tasks:
            remaining = self.settings.max_tasks - self.claimed
            if remaining <= 0:
                self._finish_run("max tasks reached")
                return
            wanted = min(wanted, remaining)
        if wanted <= 0:
            with self._cond:
                self._cond.wait_for(
                    lambda: self.busy < self.settings.concurrency or self._stop.is_set(),
                    timeout=self.settings.block_seconds,
                )
            return
        claimed = self.store.claim(queues, self.worker_id, self.lease_ms, wanted)
        if claimed:
            for item in claimed:
                self._dispatch(item)
            return
        if self.settings.batch and self.busy == 0 and promotion is not None and self._nothing_due(promotion):
            self._finish_run("batch drained")
            return
        if self._stop.is_set():
            return
        timeout = min(
            self.settings.block_seconds, max(0.0, self._promote_at - now), max(0.0, self._reclaim_at - now)
        )
        if self.settings.batch:
            timeout = min(timeout, 0.05)
        if timeout > 0 and self.store.wait_for_work(queues, timeout):
            self._promote_at = 0.0  # a token may announce a scheduled task: look at the schedule

    @staticmethod
    def _nothing_due(promotion: Any) -> bool:
        return promotion.promoted == 0 and (
            promotion.next_due_ms is None or promotion.next_due_ms > promotion.server_now_ms
        )

    def _finish_run(self, reason: str) -> None:
        logger.info(reason, extra={"event": "worker_draining", "worker_id": self.worker_id, "reason": reason})
        self.state = State.DRAINING

    def _current_queues(self) -> list[str]:
        selection = self.settings.queues
        if not selection.all_queues:
            return selection.resolve(set())
        now = time.monotonic()
        if now - self._queues_at >= QUEUE_REFRESH_EVERY or not self._queues:
            self._queues = selection.resolve(self.store.known_queues())
            self._queues_at = now
        return self._queues

    # -- dispatching and recording -----------------------------------------------

    def _dispatch(self, claimed: Claimed) -> None:
        attempt = self.executor.prepare(claimed)
        self.claimed += 1
        with self._cond:
            self._running[attempt.task_id] = attempt
        self._busy_changed()
        if attempt.rejection is not None:
            self.executor.reject(attempt)
            return
        result = attempt.result
        assert result is not None and self._pool is not None and self._async is not None
        self.metrics.count("started", attempt.queue)
        logger.info("task started", extra=self._task_fields(attempt, event="task_started", status="RUNNING"))
        if attempt.is_async:
            self._async.submit(self.executor.run_async(attempt))
        else:
            self._pool.submit(lambda: self.executor.run_sync(attempt))
            if attempt.timeout is not None:
                self._watch_wake.set()

    def _task_fields(self, attempt: Attempt, **extra: Any) -> dict[str, Any]:
        fields: dict[str, Any] = {
            "task_id": attempt.task_id,
            "queue": attempt.queue,
            "worker_id": self.worker_id,
        }
        if attempt.result is not None:
            fields["task_path"] = attempt.result.task.module_path
            fields["attempt"] = attempt.result.attempts
        fields.update(extra)
        return fields

    def _record(self, attempt: Attempt, verdict: Verdict) -> bool:
        """Store an attempt's outcome (retrying while Redis is away, up to one lease); free its slot."""
        try:
            stored = self._store_verdict(attempt, verdict)
        finally:
            with self._cond:
                self._running.pop(attempt.task_id, None)
                self.finished += 1
                self._cond.notify_all()
            self._busy_changed()
        self._log_verdict(attempt, verdict, stored)
        return stored

    def _store_verdict(self, attempt: Attempt, verdict: Verdict) -> bool:
        deadline = time.monotonic() + self.settings.lease
        delay = 0.05
        while True:
            try:
                return self._write_verdict(attempt, verdict)
            except RedisUnavailable as exc:
                if time.monotonic() + delay > deadline:
                    logger.error(
                        "could not record outcome: %s",
                        exc,
                        extra=self._task_fields(attempt, event="record_failed"),
                    )
                    return False
                time.sleep(delay)
                delay = min(delay * 2, 2.0)

    def _write_verdict(self, attempt: Attempt, verdict: Verdict) -> bool:
        store, tid, q = self.store, attempt.task_id, attempt.queue
        errors = codec.encode_errors(verdict.errors) if verdict.errors else None  # type: ignore[arg-type]
        if verdict.kind == "retry":
            return (
                store.retry(
                    tid, q, self.worker_id, int(verdict.retry_delay * 1000), {"errors": errors or "[]"}
                )
                is not None
            )
        fields = {"finished_at": str(codec.to_micros(verdict.finished_at))} if verdict.finished_at else {}
        if verdict.kind == "succeeded":
            fields["result"] = verdict.return_json or "null"
            return store.finish(tid, q, self.worker_id, "SUCCESSFUL", self.result_ttl, fields)
        fields["errors"] = errors or "[]"
        return store.finish(tid, q, self.worker_id, "FAILED", self.failed_ttl, fields)

    def _log_verdict(self, attempt: Attempt, verdict: Verdict, stored: bool) -> None:
        q = attempt.queue
        duration_ms = round(verdict.duration * 1000, 3)
        if not stored:
            attempt.lease_lost = True
            logger.warning(
                "lease lost; outcome discarded (another delivery will run it)",
                extra=self._task_fields(attempt, event="lease_lost"),
            )
            return
        self.metrics.observe(q, verdict.duration)
        last = verdict.errors[-1] if verdict.errors else None
        if verdict.kind == "succeeded":
            self.metrics.count("succeeded", q)
            logger.info(
                "task finished",
                extra=self._task_fields(
                    attempt, event="task_finished", status="SUCCESSFUL", duration_ms=duration_ms
                ),
            )
        elif verdict.kind == "retry":
            self.metrics.count("retried", q)
            logger.warning(
                "task failed; will retry",
                extra=self._task_fields(
                    attempt,
                    event="task_retry",
                    status="READY",
                    duration_ms=duration_ms,
                    delay_ms=int(verdict.retry_delay * 1000),
                    error=last.exception_class_path if last else None,
                    traceback=last.traceback if last else None,
                ),
            )
        else:
            self.metrics.count("failed", q)
            logger.error(
                "task failed" if verdict.kind == "failed" else "task rejected",
                extra=self._task_fields(
                    attempt,
                    event="task_finished",
                    status="FAILED",
                    duration_ms=duration_ms,
                    reason=attempt.rejection,
                    error=last.exception_class_path if last else None,
                    traceback=last.traceback if last else None,
                ),
            )

    def _busy_changed(self) -> None:
        busy = self.busy
        self.metrics.set_busy(busy)
        if self._on_busy_change is not None:
            self._on_busy_change(busy)

    # -- watchdog: leases and timeouts ------------------------------------------

    def _watch(self) -> None:
        renew_every = self.settings.lease / 3
        renew_at = time.monotonic() + renew_every
        while self.state is not State.STOPPED:
            now = time.monotonic()
            self.watch_beat = now
            next_wake = renew_at
            for attempt in list(self._running.values()):
                deadline = attempt.deadline
                if deadline is None or attempt.is_async or attempt.finalized:
                    continue
                if now >= deadline:
                    self._time_out(attempt)
                else:
                    next_wake = min(next_wake, deadline)
            if now >= renew_at:
                self._renew()
                renew_at = now + renew_every
                next_wake = min(next_wake, renew_at)
            self._watch_wake.wait(min(1.0, max(0.005, next_wake - time.monotonic())))
            self._watch_wake.clear()

    def _time_out(self, attempt: Attempt) -> None:
        thread_id = attempt.thread_id
        if thread_id is None:  # queued but not started yet: its clock starts when it runs
            return
        if self.executor.time_out(attempt):
            assert self._pool is not None
            self._pool.retire(thread_id)
            interrupt_thread(thread_id, TaskTimeout)

    def _renew(self) -> None:
        leases = [(a.task_id, a.queue) for a in list(self._running.values()) if not a.lease_lost]
        if not leases:
            return
        try:
            held = self.store.renew(leases, self.worker_id, self.lease_ms)
        except ConveyorError as exc:
            logger.warning(
                "lease renewal failed: %s", exc, extra={"event": "renew_failed", "worker_id": self.worker_id}
            )
            return
        for (task_id, _), ok in zip(leases, held, strict=True):
            attempt = self._running.get(task_id)
            if not ok and attempt is not None and not attempt.lease_lost:
                attempt.lease_lost = True
                logger.warning(
                    "lease lost while running", extra=self._task_fields(attempt, event="lease_lost")
                )

    # -- draining ----------------------------------------------------------------

    def _drain(self) -> None:
        """Give running tasks up to the shutdown timeout, then return the rest to their queues."""
        deadline = time.monotonic() + self.settings.shutdown_timeout
        with self._cond:
            while self._running and time.monotonic() < deadline:
                self.loop_beat = time.monotonic()
                self._cond.wait(timeout=min(0.5, max(0.0, deadline - time.monotonic())))
            left = list(self._running.values())
        for attempt in left:
            if not attempt.finalize():
                continue
            try:
                released = self.store.release(attempt.task_id, attempt.queue, self.worker_id)
            except ConveyorError as exc:
                released = False
                logger.warning(
                    "could not release: %s", exc, extra=self._task_fields(attempt, event="release_failed")
                )
            logger.warning(
                "task returned to its queue unfinished" if released else "task left to its lease",
                extra=self._task_fields(attempt, event="task_released"),
            )
            with self._cond:
                self._running.pop(attempt.task_id, None)
        self._busy_changed()
