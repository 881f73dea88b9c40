"""The operator's side: read and act on tasks, queues and workers (the command and the admin call this)."""

from __future__ import annotations

import builtins
import json
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from . import codec
from .backend import RedisBackend
from .exceptions import ConveyorError, CorruptRecord, UnknownQueue, UnknownTask
from .schedule import ScheduleEntry

__all__ = [
    "CancelOutcome",
    "Operator",
    "Page",
    "QueueStatus",
    "RetryOutcome",
    "Status",
    "TaskDetail",
    "TaskSummary",
    "WorkerInfo",
]

# Django's status names; a READY task is either ready now or waiting (run_after, a retry backoff).
StatusName = Literal["READY", "RUNNING", "SUCCESSFUL", "FAILED"]
STATUS_NAMES: tuple[StatusName, ...] = ("READY", "RUNNING", "SUCCESSFUL", "FAILED")
# cancel: "cancelled" (it was READY: FAILED now, it never starts), "requested" (RUNNING: its
# worker stops it), "finished" (already SUCCESSFUL or FAILED: nothing done), "missing" (no such task).
CancelOutcome = Literal["cancelled", "requested", "finished", "missing"]
# retry: "retried" (FAILED -> READY in its queue), "not_failed" (nothing done), "missing".
RetryOutcome = Literal["retried", "not_failed", "missing"]


@dataclass(frozen=True, slots=True, kw_only=True)
class QueueStatus:
    """One queue's counts, read in one round trip."""

    queue: str
    ready: int  # ready to run now
    scheduled: int  # READY but waiting: run_after or a retry backoff
    running: int
    failed: int  # FAILED results still kept (FAILED_RESULT_TTL)
    succeeded: int  # SUCCESSFUL results still kept (RESULT_TTL)
    oldest_ready_age: float | None  # seconds the oldest ready task has waited
    paused: bool


@dataclass(frozen=True, slots=True, kw_only=True)
class WorkerInfo:
    """A live worker, from its heartbeat (gone on its own a few beats after the worker dies)."""

    id: str
    host: str
    pid: int
    queues: tuple[str, ...]  # as given to --queues ('*' for all)
    slots: int
    busy: int
    started_at: datetime
    seen_at: datetime  # its last heartbeat
    version: str
    state: str  # starting, ready, draining


@dataclass(frozen=True, slots=True, kw_only=True)
class Status:
    """Every known queue and every live worker."""

    queues: tuple[QueueStatus, ...]
    workers: tuple[WorkerInfo, ...]
    read_at: datetime


@dataclass(frozen=True, slots=True, kw_only=True)
class TaskSummary:
    """One row of a task list."""

    id: str
    task_path: str
    queue: str
    status: StatusName
    priority: int
    enqueued_at: datetime | None
    finished_at: datetime | None
    attempts: int
    last_error: str | None  # exception class path of the latest error
    cancel_requested: bool


@dataclass(frozen=True, slots=True, kw_only=True)
class Page:
    """A page of a task list, newest first; next_cursor fetches the next page (None: the last)."""

    items: tuple[TaskSummary, ...]
    next_cursor: str | None


@dataclass(frozen=True, slots=True, kw_only=True)
class TaskDetail:
    """One task in full; args, kwargs and return value only when asked for (they may be personal data)."""

    summary: TaskSummary
    backend: str
    run_after: datetime | None
    started_at: datetime | None
    last_attempted_at: datetime | None
    worker_ids: tuple[str, ...]
    errors: tuple[tuple[str, str], ...]  # (exception class path, traceback), oldest first
    deliveries: int
    scheduled_for: datetime | None  # when a waiting READY task is due
    cancel_requested_at: datetime | None
    with_args: bool
    args: list[Any] | None
    kwargs: dict[str, Any] | None
    return_value: Any  # None unless with_args and SUCCESSFUL


# Ids are what RedisBackend makes (URL-safe base64); anything else is refused before Redis.
_ID_RE = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")  # "." after a queue token (HASH_TAG_PER_QUEUE)
_CURSOR_RE = re.compile(r"^(-?[0-9]{1,20})\.([A-Za-z0-9_-]{1,64})$")
# A task-path filter reads candidates' paths in chunks, at most this many per list() call.
SCAN_CHUNK = 200
SCAN_BUDGET = 5000
# Retry reads and writes this many tasks per step, however many a filter matched.
OPERATOR_CHUNK = 1000
# Fields a list row is built from (a page reads them for its rows in one round trip).
_SUMMARY_FIELDS = (
    "task",
    "queue",
    "status",
    "priority",
    "enqueued_at",
    "finished_at",
    "worker_ids",
    "errors",
    "cancel",
)


def check_task_id(task_id: object) -> str:
    """Return task_id if it can be a conveyor task id; raise UnknownTask otherwise."""
    if not isinstance(task_id, str) or not _ID_RE.match(task_id):
        raise UnknownTask(f"{task_id!r} is not a task id")
    return task_id


def _moment(raw: bytes | None) -> datetime | None:
    if not raw:
        return None
    try:
        return codec.from_micros(int(raw))
    except (ValueError, OverflowError):
        return None


def _ms(moment: datetime) -> int:
    return codec.to_micros(moment) // 1000


def _json_list(raw: bytes | None) -> list[Any]:
    if not raw:
        return []
    try:
        value = json.loads(raw)
    except ValueError:
        return []
    return value if isinstance(value, list) else []


def _summary(task_id: str, values: Sequence[bytes | None]) -> TaskSummary | None:
    """Build a list row from _SUMMARY_FIELDS values; None when the task is gone."""
    task, queue, status, priority, enqueued, finished, worker_ids, errors, cancel = values
    if status is None:
        return None
    name = status.decode(errors="replace")
    last = _json_list(errors)[-1:] if errors and errors != b"[]" else []
    try:
        prio = int(priority or 0)
    except ValueError:
        prio = 0
    return TaskSummary(
        id=task_id,
        task_path=(task or b"").decode(errors="replace"),
        queue=(queue or b"").decode(errors="replace"),
        status=name if name in STATUS_NAMES else "FAILED",  # type: ignore[arg-type]
        priority=prio,
        enqueued_at=_moment(enqueued),
        finished_at=_moment(finished),
        attempts=len(_json_list(worker_ids)),
        last_error=str(last[0].get("exception_class_path")) if last and isinstance(last[0], dict) else None,
        cancel_requested=cancel is not None,
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class ScheduleRow:
    """One periodic task: as declared in SCHEDULE (or only stored, once undeclared) and as Redis holds it."""

    name: str
    declared: bool  # in this process's SCHEDULE; False: stored by an earlier deploy, no worker fires it
    task: str | None
    timing: str | None  # "cron <expr>" or "every <n>s"
    timezone: str | None
    next_run: datetime | None  # None before a worker first looked at it, or never again
    last_task_id: str | None
    last_enqueued_at: datetime | None
    skipped: int  # ticks skipped (catch_up skip, skip_if_pending)


class Operator:
    """Operate one RedisBackend: status, list, show, retry, cancel, pause, resume, purge.

    Every read is bounded (indexes, never SCAN or KEYS); every write is one Lua script per
    task or per bounded batch, so it races safely with workers. Errors: UnknownTask,
    UnknownQueue, RedisUnavailable (all ConveyorError).
    """

    def __init__(self, backend: RedisBackend) -> None:
        self.backend = backend
        self.store = backend.store
        self.keys = backend.keys

    def _entry_queue(self, entry: ScheduleEntry) -> str:
        """Return the queue an entry's ticks go to (where its state is kept), as the workers resolve it."""
        try:
            return str(self.backend.scheduled_task(entry).queue_name)
        except (ValueError, TypeError, ImportError):  # check() reports it; its state, if any, is not found
            return entry.queue or "default"

    def schedules(self) -> list[ScheduleRow]:
        """Return every periodic task, declared ones first, with its next run and last task."""
        declared = {e.name: e for e in self.backend.settings.schedule}
        _, stored = self.store.schedule_entries(
            [(name, self._entry_queue(entry)) for name, entry in declared.items()], self.queues()
        )

        def moment(raw: bytes | None) -> datetime | None:
            value = int(raw) if raw else -1
            return None if value < 0 else datetime.fromtimestamp(value / 1000, UTC)

        rows = []
        for name, fields in stored.items():
            entry = declared.get(name)
            last = fields.get(b"last_id")
            rows.append(
                ScheduleRow(
                    name=name,
                    declared=entry is not None,
                    task=entry.task if entry else None,
                    timing=entry.describe if entry else None,
                    timezone=entry.timezone if entry else None,
                    next_run=moment(fields.get(b"next")),
                    last_task_id=last.decode() if last else None,
                    last_enqueued_at=moment(fields.get(b"last_at")),
                    skipped=int(fields.get(b"skipped", b"0")),
                )
            )
        return rows

    # -- reading ----------------------------------------------------------------------

    def status(self) -> Status:
        """Return per-queue counts and live workers."""
        queues = self.queues()
        stats = self.store.queue_stats(queues)
        kept = self.store.index_counts(queues)
        rows = tuple(
            QueueStatus(
                queue=s.queue,
                ready=s.ready,
                scheduled=s.scheduled,
                running=s.running,
                failed=failed,
                succeeded=succeeded,
                oldest_ready_age=None
                if s.oldest_ready_ms is None
                else max(0.0, (s.read_at_ms - s.oldest_ready_ms) / 1000),
                paused=s.paused,
            )
            for s, (failed, succeeded) in zip(stats, kept, strict=True)
        )
        read_at = datetime.fromtimestamp(stats[0].read_at_ms / 1000, UTC) if stats else datetime.now(UTC)
        return Status(queues=rows, workers=self.workers(), read_at=read_at)

    def queues(self) -> tuple[str, ...]:
        """Return every queue name that has seen a task, sorted."""
        return tuple(sorted(self.store.known_queues()))

    def workers(self) -> tuple[WorkerInfo, ...]:
        """Return the live workers, by id."""
        _, beats = self.store.live_workers()
        found = []
        for raw in beats:
            try:
                d = json.loads(raw)
                found.append(
                    WorkerInfo(
                        id=str(d["id"]),
                        host=str(d.get("host", "")),
                        pid=int(d.get("pid", 0)),
                        queues=tuple(str(q) for q in d.get("queues", ())),
                        slots=int(d.get("slots", 0)),
                        busy=int(d.get("busy", 0)),
                        started_at=datetime.fromisoformat(d["started_at"]),
                        seen_at=datetime.fromtimestamp(int(d["seen_ms"]) / 1000, UTC),
                        version=str(d.get("version", "")),
                        state=str(d.get("state", "")),
                    )
                )
            except (ValueError, KeyError, TypeError):
                continue  # a heartbeat some other version wrote: skip it rather than fail the page
        return tuple(sorted(found, key=lambda w: w.id))

    def _sources(self, queue: str | None, status: StatusName | None) -> list[str]:
        """Return the sorted sets a list() reads, for the filters."""
        if queue is not None:
            self._require_queue(queue)
        names = [queue] if queue is not None else list(self.queues())
        wanted = [status] if status is not None else list(STATUS_NAMES)
        sets: list[str] = []
        for q in names:
            k = self.keys.of(q)
            for st in wanted:
                if st == "READY":
                    sets += (k.ready_since(q), k.scheduled(q))
                elif st == "RUNNING":
                    sets.append(k.running(q))
                elif st == "SUCCESSFUL":
                    sets.append(k.succeeded(q))
                else:
                    sets.append(k.failed(q))
        return sets

    def _merged(self, sets: list[str], cursor: tuple[int, str] | None, chunk: int) -> list[tuple[int, str]]:
        """Return the next chunk of (score, id) after cursor across sets, highest first."""
        below = None if cursor is None else cursor[0]
        entries: set[tuple[int, str]] = set()
        for reply in self.store.newest(sets, below, chunk):
            for member, score in reply:
                entry = (score, member.decode())
                if cursor is None or entry < cursor:
                    entries.add(entry)
        return sorted(entries, reverse=True)[:chunk]

    def list(
        self,
        *,
        queue: str | None = None,
        status: StatusName | None = None,
        task: str | None = None,
        cursor: str | None = None,
        limit: int = 50,
    ) -> Page:
        """Return tasks newest first, filtered by queue, status and task path; page by cursor.

        Newest by: finish time (SUCCESSFUL, FAILED), when it became ready or falls due
        (READY), its lease deadline (RUNNING). A task path filter reads each candidate's
        path, at most SCAN_BUDGET per call: a page may then hold fewer than limit rows,
        with a next_cursor to go on from.
        """
        if status is not None and status not in STATUS_NAMES:
            raise ConveyorError(f"unknown status {status!r}; use one of {', '.join(STATUS_NAMES)}")
        limit = max(1, min(limit, 1000))
        at = self._parse_cursor(cursor)
        sets = self._sources(queue, status)
        items: builtins.list[TaskSummary] = []
        seen: set[str] = set()
        examined = 0
        chunk = limit + 1 if task is None else SCAN_CHUNK
        while len(items) <= limit and examined < SCAN_BUDGET:
            entries = self._merged(sets, at, chunk)
            if not entries:
                return Page(items=tuple(items), next_cursor=None)
            rows = self.store.fields_of([tid for _, tid in entries], _SUMMARY_FIELDS)
            for (score, tid), values in zip(entries, rows, strict=True):
                examined += 1
                row = _summary(tid, values)
                wanted = (
                    row is not None
                    and tid not in seen
                    and (status is None or row.status == status)
                    and (task is None or row.task_path == task)
                )
                if wanted and len(items) == limit:  # one more exists: the page ends before it
                    return Page(items=tuple(items), next_cursor=self._cursor(at))
                if wanted and row is not None:
                    seen.add(tid)
                    items.append(row)
                at = (score, tid)  # past skipped entries too (results expired, not yet trimmed)
            if len(entries) < chunk:
                return Page(items=tuple(items), next_cursor=None)
        return Page(items=tuple(items), next_cursor=self._cursor(at))

    @staticmethod
    def _cursor(at: tuple[int, str] | None) -> str | None:
        return None if at is None else f"{at[0]}.{at[1]}"

    @staticmethod
    def _parse_cursor(cursor: str | None) -> tuple[int, str] | None:
        if cursor is None:
            return None
        match = _CURSOR_RE.match(cursor)
        if not match:
            raise ConveyorError(f"{cursor!r} is not a cursor from a previous page")
        return int(match.group(1)), match.group(2)

    def show(self, task_id: str, *, with_args: bool = False) -> TaskDetail:
        """Return one task in full; UnknownTask when there is no such task."""
        check_task_id(task_id)
        raw = self.store.get(task_id)
        if not raw:
            raise UnknownTask(f"no task {task_id!r} (never enqueued, or its result expired or was purged)")
        summary = _summary(task_id, [raw.get(name.encode()) for name in _SUMMARY_FIELDS])
        assert summary is not None
        try:
            record: codec.TaskRecord | None = codec.decode(task_id, raw)
        except CorruptRecord:
            record = None
        errors = _json_list(raw.get(b"errors"))
        due = self.store.due_at(summary.queue, task_id) if summary.status == "READY" else None
        return TaskDetail(
            summary=summary,
            backend=(raw.get(b"backend") or b"").decode(errors="replace"),
            run_after=_moment(raw.get(b"run_after")),
            started_at=_moment(raw.get(b"started_at")),
            last_attempted_at=_moment(raw.get(b"last_attempted_at")),
            worker_ids=tuple(str(w) for w in _json_list(raw.get(b"worker_ids"))),
            errors=tuple(
                (str(e.get("exception_class_path", "")), str(e.get("traceback", "")))
                for e in errors
                if isinstance(e, dict)
            ),
            deliveries=int(raw.get(b"deliveries") or 0),
            scheduled_for=None if due is None else datetime.fromtimestamp(due / 1000, UTC),
            cancel_requested_at=_moment(raw.get(b"cancel")),
            with_args=with_args,
            args=record.args if with_args and record is not None else None,
            kwargs=record.kwargs if with_args and record is not None else None,
            return_value=record.return_value if with_args and record is not None else None,
        )

    # -- acting on tasks ----------------------------------------------------------------

    def _queues_of(self, task_ids: Sequence[str]) -> dict[str, str | None]:
        """Return each task's queue (None when the task does not exist)."""
        ids = [check_task_id(t) for t in task_ids]
        rows = self.store.fields_of(ids, ("queue",))
        return {t: (q.decode() if q is not None else None) for t, (q,) in zip(ids, rows, strict=True)}

    def retry(self, task_ids: Sequence[str]) -> dict[str, RetryOutcome]:
        """Put FAILED tasks back in their queue as READY, keeping id, errors and worker ids."""
        if len(task_ids) > OPERATOR_CHUNK:
            done: dict[str, RetryOutcome] = {}
            for start in range(0, len(task_ids), OPERATOR_CHUNK):
                done |= self.retry(task_ids[start : start + OPERATOR_CHUNK])
            return done
        queues = self._queues_of(task_ids)
        found = [(t, q) for t, q in queues.items() if q is not None]
        replies = self.store.operator_calls([self.store.requeue_call(t, q) for t, q in found])
        outcomes: dict[str, RetryOutcome] = {t: "missing" for t, q in queues.items() if q is None}
        for (t, _), reply in zip(found, replies, strict=True):
            outcomes[t] = _text(reply)  # type: ignore[assignment]
        return {t: outcomes[t] for t in queues}

    def failed_matching(
        self, *, queue: str | None = None, task: str | None = None, since: datetime | None = None
    ) -> builtins.list[str]:
        """Return the ids of FAILED tasks matching the filters, oldest first (read in bounded chunks)."""
        if queue is not None:
            self._require_queue(queue)
        low = None if since is None else _ms(since)
        ids: builtins.list[str] = []
        for q in [queue] if queue is not None else self.queues():
            start = 0
            while True:
                chunk = [
                    m.decode() for m in self.store.index_members(self.keys.of(q).failed(q), low, start, 1000)
                ]
                if not chunk:
                    break
                start += len(chunk)
                if task is None:
                    ids += chunk
                else:
                    paths = self.store.fields_of(chunk, ("task",))
                    ids += [t for t, (p,) in zip(chunk, paths, strict=True) if p == task.encode()]
        return ids

    def retry_matching(
        self,
        *,
        queue: str | None = None,
        task: str | None = None,
        since: datetime | None = None,
        dry_run: bool = False,
    ) -> int:
        """Retry every FAILED task matching the filters (finished at or after since); return how many."""
        ids = self.failed_matching(queue=queue, task=task, since=since)
        if dry_run:
            return len(ids)
        return sum(1 for outcome in self.retry(ids).values() if outcome == "retried")

    def cancel(self, task_ids: Sequence[str], *, by: str = "an operator") -> dict[str, CancelOutcome]:
        """Cancel tasks: a READY one fails at once (TaskCancelled); a RUNNING one is stopped by its worker."""
        queues = self._queues_of(task_ids)
        found = [(t, q) for t, q in queues.items() if q is not None]
        ttl = self.backend.settings.failed_result_ttl
        replies = self.store.operator_calls([self.store.cancel_call(t, q, ttl, by) for t, q in found])
        outcomes: dict[str, CancelOutcome] = {t: "missing" for t, q in queues.items() if q is None}
        for (t, _), reply in zip(found, replies, strict=True):
            outcomes[t] = _text(reply)  # type: ignore[assignment]
        return {t: outcomes[t] for t in queues}

    def delete(self, task_ids: Sequence[str]) -> dict[str, bool]:
        """Delete finished or READY tasks with their index entries (RUNNING ones are refused)."""
        queues = self._queues_of(task_ids)
        found = [(t, q) for t, q in queues.items() if q is not None]
        replies = self.store.operator_calls([self.store.delete_call(t, q) for t, q in found])
        deleted = {t: _text(reply) == "deleted" for (t, _), reply in zip(found, replies, strict=True)}
        return {t: deleted.get(t, False) for t in queues}

    # -- queues ------------------------------------------------------------------------------

    def _require_queue(self, queue: str) -> None:
        if not self.store.knows_queue(queue):
            known = ", ".join(self.queues()) or "none yet"
            raise UnknownQueue(f"no task was ever enqueued to queue {queue!r} (known: {known})")

    def pause(self, queue: str) -> None:
        """Stop every worker claiming from queue (at once: claims check it); tasks keep arriving."""
        self._require_queue(queue)
        self.store.set_paused(queue, True)

    def resume(self, queue: str) -> None:
        """Let workers claim from queue again."""
        self._require_queue(queue)
        self.store.set_paused(queue, False)

    # -- purging -------------------------------------------------------------------------------

    def _indexes(
        self, status: Literal["SUCCESSFUL", "FAILED"] | None, queue: str | None
    ) -> Iterator[tuple[str, str, str]]:
        if queue is not None:
            self._require_queue(queue)
        for q in [queue] if queue is not None else self.queues():
            if status in (None, "SUCCESSFUL"):
                yield q, self.keys.of(q).succeeded(q), "SUCCESSFUL"
            if status in (None, "FAILED"):
                yield q, self.keys.of(q).failed(q), "FAILED"

    def purge_results(
        self,
        *,
        older_than: float,
        status: Literal["SUCCESSFUL", "FAILED"] | None = None,
        queue: str | None = None,
        dry_run: bool = False,
        batch: int = 1000,
    ) -> int:
        """Delete finished results older than older_than seconds, in batches; return how many."""
        if status not in (None, "SUCCESSFUL", "FAILED"):
            raise ConveyorError(f"only finished results are purged by age, not {status!r} ones")
        cutoff = self.store.server_time_ms() - int(older_than * 1000)
        total = 0
        for q, index, name in self._indexes(status, queue):
            if dry_run:
                total += self.store.count_between(index, "-inf", cutoff)
                continue
            while removed := self.store.purge_index(q, index, name, cutoff, batch):
                total += removed
        return total

    def purge_ready(
        self, queue: str, *, dry_run: bool = False, batch: int = 1000, limit: int | None = None
    ) -> int:
        """Delete a queue's READY tasks (ready and waiting), in batches, at most limit; return how many.

        Tasks keep arriving meanwhile: pass the count a dry run showed as limit to delete no more.
        """
        self._require_queue(queue)
        if dry_run:
            waiting = sum(
                self.store.count_between(key, "-inf", "+inf")
                for key in (self.keys.of(queue).ready(queue), self.keys.of(queue).scheduled(queue))
            )
            return waiting if limit is None else min(limit, waiting)
        total = 0
        while limit is None or total < limit:
            removed = self.store.drop_ready(queue, batch if limit is None else min(batch, limit - total))
            if not removed:
                break
            total += removed
        return total


def _text(reply: Any) -> str:
    return reply.decode() if isinstance(reply, bytes) else str(reply)
