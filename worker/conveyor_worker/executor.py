"""Run one claimed task the way Django's ImmediateBackend does; outcomes go to a recorder, not Redis."""

from __future__ import annotations

import asyncio
import sys
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal, Protocol

from asgiref.sync import sync_to_async
from conveyor import codec, retries
from conveyor.backend import RedisBackend
from conveyor.exceptions import (
    BackoffFailed,
    CorruptRecord,
    RejectedTask,
    TaskCancelled,
    TaskTimeout,
    UnknownTaskPath,
)
from conveyor.store import Claimed
from conveyor.tracing import Tracing
from django.db import close_old_connections
from django.tasks.base import TaskContext, TaskError, TaskResult, TaskResultStatus
from django.tasks.exceptions import TaskResultDoesNotExist
from django.tasks.signals import task_finished, task_started

from .runners import interrupt_thread

Kind = Literal["succeeded", "failed", "retry", "rejected"]
# How an attempt is stopped from outside (the watchdog, for a timeout or an operator's cancel).
Halt = type[TaskTimeout] | type[TaskCancelled]
CANCELLED = "conveyor.exceptions.TaskCancelled"  # the error class path of an operator's cancel
# A task path inside the allowed modules that does not import here may be newer than this
# worker (a rolling deploy): it goes back to its queue with a growing delay, for this long
# at most after it was first put back, and then fails.
UNKNOWN_TASK_PATIENCE = 15 * 60.0  # seconds
UNKNOWN_TASK_DELAY_MIN = 1.0  # seconds before a task this worker cannot import is due again...
UNKNOWN_TASK_DELAY_MAX = 60.0  # ...growing with the time it has waited, up to this


@dataclass(slots=True, kw_only=True)
class Attempt:
    """One delivery of a task to this worker, from claim to its recorded outcome.

    What is known at preparation is fixed from then on. What changes later (when it
    started, the thread or asyncio task inside it, whether an outcome was claimed, whether
    the lease was lost, whether an operator cancelled it) is read by the watchdog, the lease
    keeper and the pacer too, so it lives behind _lock and its methods.
    """

    task_id: str
    queue: str
    token: str = ""  # the delivery's fencing token, checked by every call about this attempt
    alone: bool = False  # an earlier delivery lost its worker: run with no other task beside it
    result: TaskResult | None = None  # None when the record was rejected before running
    rejection: str | None = None
    postpone: float | None = None  # seconds: give back unrun, due again after this delay
    timeout: float | None = None
    errors_before: tuple[codec.ErrorRecord, ...] = ()  # a record failed unstarted keeps its errors
    trace_context: dict[str, str] | None = None  # the send span's, read from the record when tracing is on
    span: Any = None  # its process span: set before it enters its thread, ended by whoever claims the outcome
    # First deliveries only: when the task could first run (epoch seconds), for the pickup histogram.
    ready_at: float | None = None
    _started: float = field(default_factory=time.monotonic)
    _thread_id: int | None = None
    _coroutine: asyncio.Task[Any] | None = None
    _lease_lost: bool = False
    _finalized: bool = False
    _cancelled: bool = False
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def started(self) -> float:
        """Return when the task started (monotonic); until then, when the attempt was prepared."""
        with self._lock:
            return self._started

    def begin(self) -> None:
        """Start the attempt's clock: its timeout counts from now, not from any wait before."""
        now = time.monotonic()
        with self._lock:
            self._started = now

    @property
    def deadline(self) -> float | None:
        """Return the monotonic time at which the attempt times out, if it has a timeout."""
        with self._lock:
            return None if self.timeout is None else self._started + self.timeout

    def running_for(self, now: float) -> float | None:
        """Return how long the task has run by now; None once its outcome was claimed."""
        with self._lock:
            return None if self._finalized else now - self._started

    @property
    def is_async(self) -> bool:
        """Tell whether the task function is a coroutine function."""
        return self.result is not None and asyncio.iscoroutinefunction(self.result.task.func)

    @property
    def finalized(self) -> bool:
        """Tell whether an outcome was already claimed."""
        with self._lock:
            return self._finalized

    def finalize(self) -> bool:
        """Claim the right to record the outcome; False if someone (the watchdog) already did."""
        with self._lock:
            if self._finalized:
                return False
            self._finalized = True
            return True

    @property
    def thread_id(self) -> int | None:
        """Return the thread running the task, while one does."""
        with self._lock:
            return self._thread_id

    def enter(self, thread_id: int) -> bool:
        """Note that thread_id runs the task now; False when it was cancelled first (it must not run)."""
        with self._lock:
            self._thread_id = thread_id
            return not self._cancelled

    def enter_loop(self, coroutine: asyncio.Task[Any] | None) -> bool:
        """Note the asyncio task that runs the coroutine now; False when it was cancelled first."""
        with self._lock:
            self._coroutine = coroutine
            return not self._cancelled

    def leave(self) -> None:
        """Note that the thread is done with this attempt (it may go on to run another task)."""
        with self._lock:
            self._thread_id = None

    def interrupt(self, exc_type: type[BaseException]) -> bool:
        """Raise exc_type in the thread running this attempt; False once that thread has left it."""
        with self._lock:
            return self._thread_id is not None and interrupt_thread(self._thread_id, exc_type)

    @property
    def cancelled(self) -> bool:
        """Tell whether an operator cancelled the task."""
        with self._lock:
            return self._cancelled

    def cancel(self) -> bool:
        """Note that an operator cancelled the task; True when this call is the first to say so.

        An attempt not started yet sees it when it starts (enter, enter_loop) and fails at once;
        one running is stopped by its caller (Watchdog.halt, or cancel_coroutine).
        """
        with self._lock:
            first = not self._cancelled
            self._cancelled = True
            return first

    def cancel_coroutine(self) -> bool:
        """Cancel the asyncio task running the attempt unless its outcome is claimed; False if none runs."""
        with self._lock:
            coroutine = self._coroutine
        if coroutine is None:
            return False
        try:
            coroutine.get_loop().call_soon_threadsafe(self._cancel_unless_final, coroutine)
        except RuntimeError:  # the loop has closed: the worker stopped
            return False
        return True

    def _cancel_unless_final(self, coroutine: asyncio.Task[Any]) -> None:
        # On the loop's thread: the coroutine waits at an await, so if no outcome is claimed
        # yet it is still before it and the CancelledError lands there (run_async turns it
        # into TaskCancelled); once claimed, cancelling would only cut its clean-up short.
        if not self.finalized:
            coroutine.cancel()

    @property
    def lease_lost(self) -> bool:
        """Tell whether another delivery holds the task now."""
        with self._lock:
            return self._lease_lost

    def lose_lease(self) -> bool:
        """Note that another delivery holds the task now; True when this call is the first to say so."""
        with self._lock:
            first = not self._lease_lost
            self._lease_lost = True
            return first


@dataclass(frozen=True, slots=True, kw_only=True)
class Verdict:
    """What to store for an attempt."""

    kind: Kind
    finished_at: datetime | None = None
    return_json: str | None = None
    errors: tuple[TaskError, ...] = ()
    retry_delay: float = 0.0
    duration: float = 0.0


class RecordVerdict(Protocol):
    """Store a verdict; False when the lease was lost meanwhile. then() runs once it is stored."""

    def __call__(
        self, attempt: Attempt, verdict: Verdict, then: Callable[[], None] | None = None
    ) -> bool: ...


def error_for(exc: BaseException) -> TaskError:
    """Return Django's TaskError for an exception."""
    cls = type(exc)
    return TaskError(
        exception_class_path=f"{cls.__module__}.{cls.__qualname__}",
        traceback="".join(traceback.format_exception(exc)),
    )


class Executor:
    """Turn claimed records into attempts and run them with Django's semantics."""

    def __init__(self, backend: RedisBackend, allowed_modules: tuple[str, ...]) -> None:
        self.backend = backend
        self.sender = type(backend)
        self.tracing = backend.tracing  # None: no spans (docs/tracing.md)
        self.allowed_modules = allowed_modules

    # -- preparing ---------------------------------------------------------------

    def allowed(self, path: str) -> bool:
        """Tell whether a task path falls under an allowed module prefix."""
        return any(path == m or path.startswith(m + ".") for m in self.allowed_modules)

    def prepare(self, claimed: Claimed) -> Attempt:
        """Check a claimed record before anything is imported; return a runnable or rejected attempt."""
        fields = claimed.fields
        lost = fields.get(b"lost")  # (Claimed.token and .lost_worker, read inline: once per task)
        attempt = Attempt(
            task_id=claimed.task_id,
            queue=claimed.queue,
            token=fields[b"owner"].decode(),
            alone=bool(lost) and lost != b"0",
        )
        if self.tracing is not None:
            attempt.trace_context = codec.trace_carrier(fields)
        size = len(claimed.fields.get(b"args", b"")) + len(claimed.fields.get(b"kwargs", b""))
        limit = self.backend.settings.max_payload_bytes
        try:
            if size > limit:
                raise RejectedTask(f"payload of {size} bytes exceeds MAX_PAYLOAD_BYTES={limit}")
            record = codec.decode(claimed.task_id, claimed.fields)
            if b"cancel" in fields:  # cancelled while an earlier delivery ran (or while claimed ahead)
                attempt.cancel()
                attempt.rejection = "cancelled by an operator before it started"
                attempt.errors_before = record.errors
                return attempt
            if not self.allowed(record.task_path):
                raise RejectedTask(
                    f"task path {record.task_path!r} is not under an allowed module "
                    f"({', '.join(self.allowed_modules)}); nothing was imported"
                )
            try:
                task = self.backend.resolve_task(record)
            except UnknownTaskPath as exc:
                waited = self._waited_for_code(claimed)
                if waited >= UNKNOWN_TASK_PATIENCE:
                    raise RejectedTask(
                        f"{exc}; still not importable after {waited / 60:.0f} minutes of retries"
                    ) from exc
                attempt.postpone = min(UNKNOWN_TASK_DELAY_MAX, max(UNKNOWN_TASK_DELAY_MIN, waited / 2))
                attempt.rejection = str(exc)
                return attempt
            except TaskResultDoesNotExist as exc:
                raise RejectedTask(str(exc)) from exc
            except Exception as exc:  # the task's own module raised while being imported
                raise RejectedTask(f"importing {record.task_path!r} raised {exc!r}") from exc
        except (CorruptRecord, RejectedTask) as exc:
            attempt.rejection = str(exc)
            return attempt
        except Exception as exc:  # a record no check foresaw must fail, not crash its thread
            attempt.rejection = f"record {claimed.task_id!r} cannot be prepared: {exc!r}"
            return attempt
        attempt.result = codec.to_task_result(record, task)
        attempt.timeout = getattr(task, "timeout", None)
        if fields.get(b"deliveries") == b"1" and record.enqueued_at is not None:
            # A retry's or a redelivery's due time is not in the record, so only first attempts count.
            ready_at = record.enqueued_at
            if record.run_after is not None and record.run_after > ready_at:
                ready_at = record.run_after
            attempt.ready_at = ready_at.timestamp()
        return attempt

    @staticmethod
    def _waited_for_code(claimed: Claimed) -> float:
        """Return seconds since this task was first put back because its path did not import."""
        since = claimed.fields.get(b"unknown_since")
        try:
            return max(0.0, time.time() - int(since) / 1e6) if since else 0.0
        except ValueError:
            return UNKNOWN_TASK_PATIENCE

    def reject(self, attempt: Attempt, record: RecordVerdict) -> None:
        """Record a rejected (or cancelled) attempt as FAILED with its reason; nothing runs."""
        if not attempt.finalize():
            return
        path = CANCELLED if attempt.cancelled else "conveyor.exceptions.RejectedTask"
        error = TaskError(exception_class_path=path, traceback=f"{path}: {attempt.rejection}\n")
        earlier = tuple(attempt.result.errors) if attempt.result else attempt.errors_before
        record(attempt, Verdict(kind="rejected", finished_at=datetime.now(UTC), errors=(*earlier, error)))

    # -- running -----------------------------------------------------------------

    def _args(self, result: TaskResult) -> tuple[list[Any], dict[str, Any]]:
        args = list(result.args)
        if result.task.takes_context:
            args.insert(0, TaskContext(task_result=result))
        return args, result.kwargs

    def _start_span(self, tracing: Tracing, attempt: Attempt) -> Any:
        """Start an attempt's process span, a child of its send span, and keep it on the attempt."""
        result = attempt.result
        assert result is not None
        attempt.span = tracing.process(
            queue=attempt.queue,
            task_id=attempt.task_id,
            task_path=result.task.module_path,
            priority=result.task.priority,
            attempt=result.attempts,
            worker_id=result.worker_ids[-1] if result.worker_ids else None,
            carrier=attempt.trace_context,
        )
        return attempt.span

    def run_sync(self, attempt: Attempt, record: RecordVerdict) -> None:
        """Run a synchronous task in the calling thread (inside its process span when tracing is on)."""
        result = attempt.result
        assert result is not None
        tracing = self.tracing
        current = None if tracing is None else tracing.attach(self._start_span(tracing, attempt))
        runs = attempt.enter(threading.get_ident())
        try:  # a raising receiver fails the attempt; outside the try it would leak the slot
            if not runs:
                raise TaskCancelled("Task cancelled by an operator before it started")
            task_started.send(sender=self.sender, task_result=result)
            close_old_connections()
            args, kwargs = self._args(result)
            raw = result.task.call(*args, **kwargs)
            value, text = codec.encode_return_value(raw, max_nesting=self.backend.settings.max_nesting)
        except BaseException as exc:
            self._failed(attempt, exc, record)
        else:
            self._succeeded(attempt, value, text, record)
        finally:
            close_old_connections()
            attempt.leave()  # a late timeout interrupt must not land in this thread's next task
            if current is not None and tracing is not None:
                tracing.detach(current)

    async def run_async(self, attempt: Attempt, record: RecordVerdict) -> None:
        """Run a coroutine task on the running event loop (inside its process span when tracing is on)."""
        result = attempt.result
        assert result is not None
        tracing = self.tracing
        current = None if tracing is None else tracing.attach(self._start_span(tracing, attempt))
        try:
            try:
                if not attempt.enter_loop(asyncio.current_task()):
                    raise TaskCancelled("Task cancelled by an operator before it started")
                task_started.send(sender=self.sender, task_result=result)
                await sync_to_async(close_old_connections)()
                args, kwargs = self._args(result)
                raw = await self._await_with_timeout(attempt, result.task.acall(*args, **kwargs))
                value, text = codec.encode_return_value(raw, max_nesting=self.backend.settings.max_nesting)
            except asyncio.CancelledError as exc:
                if not attempt.cancelled:
                    raise
                raise TaskCancelled("Task cancelled by an operator while it ran") from exc
        except BaseException as exc:
            self._failed(attempt, exc, record)
        else:
            self._succeeded(attempt, value, text, record)
        finally:
            await sync_to_async(close_old_connections)()
            if current is not None and tracing is not None:
                tracing.detach(current)

    @staticmethod
    async def _await_with_timeout(attempt: Attempt, coro: Any) -> Any:
        if attempt.timeout is None:
            return await coro
        try:
            async with asyncio.timeout(attempt.timeout):
                return await coro
        except TimeoutError as exc:
            if time.monotonic() >= (attempt.deadline or 0):
                raise TaskTimeout(f"Task exceeded its timeout of {attempt.timeout:g}s") from exc
            raise

    @staticmethod
    def where(attempt: Attempt) -> str:
        """Return the stack of the thread running an attempt, for the timeout's traceback."""
        frame = sys._current_frames().get(attempt.thread_id or -1)
        return "" if frame is None else "\nIt was running:\n" + "".join(traceback.format_stack(frame))

    def record_halt(self, attempt: Attempt, reason: Halt, where: str, record: RecordVerdict) -> None:
        """Record the failure of a sync attempt the watchdog finalized: a timeout, or an operator's cancel."""
        if reason is TaskTimeout:
            message = f"Task exceeded its timeout of {attempt.timeout:g}s"
        else:
            message = "Task cancelled by an operator while it ran"
        try:
            raise reason(message + where)
        except reason as exc:
            self._record_failure(attempt, exc, record)

    def _succeeded(self, attempt: Attempt, value: Any, text: str, record: RecordVerdict) -> None:
        if not attempt.finalize():
            return
        result = attempt.result
        assert result is not None
        finished = self._finish_time(result)
        object.__setattr__(result, "_return_value", value)
        object.__setattr__(result, "finished_at", finished)
        object.__setattr__(result, "status", TaskResultStatus.SUCCESSFUL)
        if attempt.span is not None and self.tracing is not None:
            self.tracing.end(attempt.span, "succeeded", None)
        verdict = Verdict(
            kind="succeeded",
            finished_at=finished,
            return_json=text,
            duration=time.monotonic() - attempt.started,
        )
        # A success may be stored a moment later, with the next round trip: then() runs then.
        record(attempt, verdict, lambda: task_finished.send(self.sender, task_result=result))

    def _failed(self, attempt: Attempt, exc: BaseException, record: RecordVerdict) -> bool:
        """Record a failed attempt; call only inside an except block (receivers read exc_info)."""
        if not attempt.finalize():
            return False
        self._record_failure(attempt, exc, record)
        return True

    def _record_failure(self, attempt: Attempt, exc: BaseException, record: RecordVerdict) -> None:
        """Record a finalized attempt's failure: retried while attempts are left, unless cancelled."""
        result = attempt.result
        assert result is not None
        result.errors.append(error_for(exc))
        duration = time.monotonic() - attempt.started
        delay = None if isinstance(exc, TaskCancelled) else self._retry_delay(result, exc)
        if attempt.span is not None and self.tracing is not None:
            self.tracing.end(attempt.span, "failed" if delay is None else "retry", exc)
        if delay is not None:
            object.__setattr__(result, "status", TaskResultStatus.READY)
            record(
                attempt,
                Verdict(kind="retry", errors=tuple(result.errors), retry_delay=delay, duration=duration),
            )
            return
        finished = self._finish_time(result)
        object.__setattr__(result, "finished_at", finished)
        object.__setattr__(result, "status", TaskResultStatus.FAILED)
        verdict = Verdict(kind="failed", finished_at=finished, errors=tuple(result.errors), duration=duration)
        if record(attempt, verdict):
            task_finished.send(self.sender, task_result=result)

    def _retry_delay(self, result: TaskResult, exc: BaseException) -> float | None:
        """Return seconds before the next attempt, or None for none (appending a failed backoff's error)."""
        task, defaults = result.task, self.backend.retry_defaults
        if result.attempts >= retries.max_attempts_for(task, defaults):
            return None
        backoff = retries.backoff_for(task, defaults)
        if backoff is None:
            return retries.exponential_backoff(task, result.attempts)
        try:
            return retries.call_backoff(backoff, exc, retries.failed_view(result))
        except BackoffFailed as failure:
            result.errors.append(error_for(failure))
            return None

    @staticmethod
    def _finish_time(result: TaskResult) -> datetime:
        now = datetime.now(UTC)
        return max(now, result.started_at) if result.started_at else now
