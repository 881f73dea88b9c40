"""RedisBackend: the Django-facing task backend; it validates, stores and reads, never runs."""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from functools import partial
from typing import Any

from django.core import checks
from django.db import transaction
from django.tasks.backends.base import BaseTaskBackend
from django.tasks.base import Task, TaskResult, TaskResultStatus
from django.tasks.exceptions import InvalidTask, InvalidTaskBackend, TaskResultDoesNotExist
from django.tasks.signals import task_enqueued
from django.utils.module_loading import import_string

from . import codec
from .exceptions import ConveyorError, CorruptRecord, RedisUnavailable
from .keys import Keys
from .options import parse_options
from .store import Store

# Ids are 32 URL-safe characters from secrets; anything else cannot be one of ours.
_ID_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


@dataclass(frozen=True, slots=True, kw_only=True)
class ConveyorTask(Task):
    """A Django Task with conveyor's per-task options, set through @task(...) keywords."""

    max_attempts: int = 1  # attempts in all, the first included; failures retry until then
    timeout: float | None = None  # seconds an attempt may run before it is stopped and failed
    retry_backoff: float = 1.0  # seconds before the first retry; doubles each attempt
    retry_backoff_max: float = 300.0  # cap on the backoff, before jitter


def new_task_id() -> str:
    """Return a fresh, unguessable task id."""
    return secrets.token_urlsafe(24)


class RedisBackend(BaseTaskBackend):
    """Enqueue django.tasks onto Redis and read their results back from any process."""

    task_class = ConveyorTask
    supports_defer = True
    supports_async_task = True
    supports_get_result = True
    supports_priority = True

    def __init__(self, alias: str, params: dict[str, Any]) -> None:
        super().__init__(alias, params)
        self.settings, self.problems = parse_options(self.options)
        self.keys = Keys(self.settings.key_prefix)
        self.store = Store(self.settings, self.keys)  # connects on first use, not here

    # -- validation --------------------------------------------------------------

    def validate_task(self, task: Task) -> None:
        """Validate like Django does, plus conveyor's per-task options."""
        super().validate_task(task)
        if isinstance(task, ConveyorTask):
            if (
                isinstance(task.max_attempts, bool)
                or not isinstance(task.max_attempts, int)
                or (task.max_attempts < 1)
            ):
                raise InvalidTask("max_attempts must be a whole number of at least 1.")
            if task.timeout is not None and (
                isinstance(task.timeout, bool)
                or not isinstance(task.timeout, (int, float))
                or task.timeout <= 0
            ):
                raise InvalidTask("timeout must be a number of seconds greater than 0, or None.")
            if not task.retry_backoff >= 0 or not task.retry_backoff_max >= 0:
                raise InvalidTask("retry_backoff and retry_backoff_max must be 0 or more seconds.")

    def _require_valid_options(self) -> None:
        if self.problems:
            listed = "; ".join(f"{p.option}: {p.message}" for p in self.problems)
            raise InvalidTaskBackend(f"Task backend {self.alias!r} is misconfigured: {listed}")

    # -- enqueue -----------------------------------------------------------------

    def _prepare(self, task: Task, args: Any, kwargs: Any) -> tuple[TaskResult, dict[str, str]]:
        """Validate and encode; nothing is written and no signal sent if this raises."""
        self._require_valid_options()
        self.validate_task(task)
        enqueued_at = datetime.now(UTC)
        result = TaskResult(
            task=task,
            id=new_task_id(),
            status=TaskResultStatus.READY,
            enqueued_at=enqueued_at,
            started_at=None,
            last_attempted_at=None,
            finished_at=None,
            args=args,
            kwargs=kwargs,
            backend=self.alias,
            errors=[],
            worker_ids=[],
        )
        args_json, kwargs_json = codec.encode_payload(
            result.args, result.kwargs, self.settings.max_payload_bytes
        )
        fields = codec.new_record(
            task_path=task.module_path,
            queue=task.queue_name,
            priority=task.priority,
            backend=self.alias,
            run_after=task.run_after,
            args_json=args_json,
            kwargs_json=kwargs_json,
            enqueued_at=enqueued_at,
        )
        return result, fields

    @staticmethod
    def _due_ms(task: Task) -> int | None:
        return None if task.run_after is None else codec.to_micros(task.run_after) // 1000

    def _write(self, result: TaskResult, fields: dict[str, str]) -> None:
        task = result.task
        self.store.enqueue(result.id, task.queue_name, task.priority, self._due_ms(task), fields)
        task_enqueued.send(type(self), task_result=result)

    def enqueue(self, task: Task, args: Any, kwargs: Any) -> TaskResult:
        """Validate, store in one atomic round trip, send task_enqueued, return the result."""
        result, fields = self._prepare(task, args, kwargs)
        if self.settings.enqueue_on_commit:
            transaction.on_commit(partial(self._write, result, fields))
        else:
            self._write(result, fields)
        return result

    async def aenqueue(self, task: Task, args: Any, kwargs: Any) -> TaskResult:
        """Enqueue natively on the running event loop (on_commit needs the sync path)."""
        if self.settings.enqueue_on_commit:
            return await super().aenqueue(task, args, kwargs)
        result, fields = self._prepare(task, args, kwargs)
        await self.store.aenqueue(result.id, task.queue_name, task.priority, self._due_ms(task), fields)
        await task_enqueued.asend(type(self), task_result=result)
        return result

    # -- results -----------------------------------------------------------------

    def _result_from(self, result_id: str, fields: dict[bytes, bytes]) -> TaskResult:
        if not fields:
            raise TaskResultDoesNotExist(result_id)
        try:
            record = codec.decode(result_id, fields)
        except CorruptRecord as exc:
            raise TaskResultDoesNotExist(f"{result_id}: unreadable record ({exc})") from exc
        return codec.to_task_result(record, self.resolve_task(record))

    def resolve_task(self, record: codec.TaskRecord) -> Task:
        """Return the Task a record names, with the priority, queue and run_after it was sent with."""
        try:
            task = import_string(record.task_path)
        except (ImportError, ValueError) as exc:
            raise TaskResultDoesNotExist(
                f"{record.id}: task {record.task_path!r} cannot be imported ({exc})"
            ) from exc
        if not isinstance(task, Task):
            raise TaskResultDoesNotExist(f"{record.id}: {record.task_path!r} is not a Task")
        changes: dict[str, Any] = {}
        if task.priority != record.priority:
            changes["priority"] = record.priority
        if task.queue_name != record.queue:
            changes["queue_name"] = record.queue
        if task.run_after != record.run_after:
            changes["run_after"] = record.run_after
        if task.backend != record.backend:
            changes["backend"] = record.backend
        if not changes:
            return task
        try:
            return replace(task, **changes)  # replace() validates against the named backend
        except (InvalidTask, InvalidTaskBackend) as exc:
            raise TaskResultDoesNotExist(f"{record.id}: stored task is no longer valid ({exc})") from exc

    @staticmethod
    def _check_id(result_id: Any) -> None:
        if not isinstance(result_id, str) or not _ID_RE.match(result_id):
            raise TaskResultDoesNotExist(result_id)

    def get_result(self, result_id: str) -> TaskResult:
        """Read a result by id from Redis; unknown or malformed ids raise TaskResultDoesNotExist."""
        self._check_id(result_id)
        self._require_valid_options()
        return self._result_from(result_id, self.store.get(result_id))

    async def aget_result(self, result_id: str) -> TaskResult:
        """Read a result like get_result(), on the running event loop."""
        self._check_id(result_id)
        self._require_valid_options()
        return self._result_from(result_id, await self.store.aget(result_id))

    # -- checks ------------------------------------------------------------------

    def check(self, **kwargs: Any) -> list[checks.CheckMessage]:
        """Report bad OPTIONS and an unreachable Redis as errors; never raise."""
        errors: list[checks.CheckMessage] = [
            checks.Error(
                f"TASKS[{self.alias!r}] OPTIONS {p.option}: {p.message}",
                hint=p.hint,
                obj=self,
                id="conveyor.E001",
            )
            for p in self.problems
        ]
        if errors:
            return errors
        try:
            self.store.ping()
        except RedisUnavailable as exc:
            errors.append(
                checks.Error(
                    f"TASKS[{self.alias!r}]: {exc}",
                    hint="Check URL (or HOST/PORT/DB), USERNAME/PASSWORD, TLS settings and "
                    "that Redis is running and reachable from here.",
                    obj=self,
                    id="conveyor.E002",
                )
            )
        except ConveyorError as exc:
            errors.append(checks.Error(f"TASKS[{self.alias!r}]: {exc}", obj=self, id="conveyor.E003"))
        except Exception as exc:
            errors.append(
                checks.Error(
                    f"TASKS[{self.alias!r}]: unexpected error talking to Redis: {exc!r}",
                    obj=self,
                    id="conveyor.E003",
                )
            )
        return errors
