"""RedisBackend: the Django-facing task backend; it validates, stores and reads, never runs."""

from __future__ import annotations

import os
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
from .exceptions import ConveyorError, CorruptRecord, RedisUnavailable, UnknownTaskPath
from .keys import Keys
from .options import parse_options
from .store import Store
from .waiting import async_waiters, wait_for_record

# Ids are 32 URL-safe characters from secrets; anything else cannot be one of ours.
_ID_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
# Key names hold any queue name safely (see keys.py); these limits keep names usable: the
# worker's --queues splits on commas and strips blanks, and logs and metrics carry names.
QUEUE_NAME_MAX = 1024
_BAD_QUEUE_CHAR_RE = re.compile(r"[,\x00-\x1f\x7f]")


def queue_name_problem(name: object) -> str | None:
    """Return why a queue name cannot be used, or None when it can."""
    if not isinstance(name, str) or not name:
        return "a queue name must be a non-empty string"
    if len(name) > QUEUE_NAME_MAX:
        return f"queue name is {len(name)} characters long; at most {QUEUE_NAME_MAX} are allowed"
    if name != name.strip():
        return f"queue name {name!r} starts or ends with white space"
    if _BAD_QUEUE_CHAR_RE.search(name):
        return f"queue name {name!r} holds a comma or a control character"
    return None


@dataclass(frozen=True, slots=True, kw_only=True)
class ConveyorTask(Task):
    """A Django Task with conveyor's per-task options, set through @task(...) keywords."""

    max_attempts: int = 1  # attempts in all, the first included; failures retry until then
    timeout: float | None = None  # seconds an attempt may run before it is stopped and failed
    retry_backoff: float = 1.0  # seconds before the first retry; doubles each attempt
    retry_backoff_max: float = 300.0  # cap on the backoff, before jitter


def new_task_id() -> str:
    """Return a fresh, unguessable task id, never starting with "-" (read as an option on a command line)."""
    while (task_id := secrets.token_urlsafe(24)).startswith("-"):
        pass
    return task_id


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
        """Validate like Django does, plus conveyor's queue names and per-task options."""
        super().validate_task(task)
        problem = queue_name_problem(task.queue_name)
        if problem:
            raise InvalidTask(f"{problem}.")
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
        # TaskResult normalises args and kwargs recursively; measure their depth first.
        codec.check_nesting(args, kwargs, self.settings.max_nesting)
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
            result.args,
            result.kwargs,
            self.settings.max_payload_bytes,
            max_nesting=self.settings.max_nesting,
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
        if not self.task_path_allowed(record.task_path):
            raise TaskResultDoesNotExist(
                f"{result_id}: task path {record.task_path!r} is not under an allowed module "
                f"({', '.join(self.allowed_task_modules())}); nothing was imported"
            )
        try:
            return codec.to_task_result(record, self.resolve_task(record))
        except TaskResultDoesNotExist:
            raise
        except Exception as exc:  # a stored record must never turn into a 500 deep inside Django
            raise TaskResultDoesNotExist(f"{result_id}: the stored record is not usable ({exc!r})") from exc

    def allowed_task_modules(self) -> tuple[str, ...]:
        """Return the module prefixes a stored task path may name (default: the project's own apps)."""
        if self.settings.allowed_task_modules:
            return self.settings.allowed_task_modules
        from django.apps import apps

        return tuple(
            cfg.name
            for cfg in apps.get_app_configs()
            if not cfg.name.startswith("django.") and cfg.name.split(".")[0] != "conveyor"
        )

    def project_name(self) -> str:
        """Return the name this project claims its KEY_PREFIX with: PROJECT, else the settings package."""
        if self.settings.project:
            return self.settings.project
        from django.conf import settings

        module = (
            getattr(settings, "SETTINGS_MODULE", None)
            or os.environ.get("DJANGO_SETTINGS_MODULE")
            or "unnamed"
        )
        return str(module).split(".", 1)[0]

    def task_path_allowed(self, path: str) -> bool:
        """Tell whether a task path falls under an allowed module prefix (nothing is imported)."""
        return any(path == m or path.startswith(m + ".") for m in self.allowed_task_modules())

    def resolve_task(self, record: codec.TaskRecord) -> Task:
        """Return the Task a record names, with the priority, queue and run_after it was sent with.

        Check task_path_allowed() first: this imports the module the record names.
        """
        try:
            task = import_string(record.task_path)
        except ImportError as exc:  # no such module or attribute here (perhaps not deployed yet)
            raise UnknownTaskPath(
                f"{record.id}: task {record.task_path!r} cannot be imported ({exc})"
            ) from exc
        except ValueError as exc:
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

    # -- waiting -----------------------------------------------------------------

    @staticmethod
    def _check_timeout(timeout: Any) -> None:
        if timeout is not None and (
            isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not timeout >= 0
        ):
            raise ValueError(f"timeout must be a number of seconds (0 or more) or None, not {timeout!r}")

    def wait_result(self, result_id: str, *, timeout: float | None) -> TaskResult:
        """Return a task's result once SUCCESSFUL or FAILED, blocking this thread until then.

        Raise conveyor.exceptions.ResultTimeout after timeout seconds (None waits as long as
        it takes) and TaskResultDoesNotExist for an unknown id, as get_result() does.
        """
        self._check_id(result_id)
        self._check_timeout(timeout)
        self._require_valid_options()
        return self._result_from(result_id, wait_for_record(self.store, result_id, timeout))

    async def await_result(self, result_id: str, *, timeout: float | None) -> TaskResult:
        """Wait like wait_result(), on the running event loop; waiters share one connection."""
        self._check_id(result_id)
        self._check_timeout(timeout)
        self._require_valid_options()
        return self._result_from(result_id, await async_waiters(self.store).wait(result_id, timeout))

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
            owner = self.store.project_owner()
            if owner is not None and owner != self.project_name():
                errors.append(
                    checks.Error(
                        f"TASKS[{self.alias!r}]: KEY_PREFIX {self.settings.key_prefix!r} on this Redis "
                        f"belongs to project {owner!r}, not {self.project_name()!r}; the two would "
                        "run and fail each other's tasks.",
                        hint="Give each project its own KEY_PREFIX (or Redis database). If this is "
                        "the same project under a new name, set OPTIONS PROJECT to the name above.",
                        obj=self,
                        id="conveyor.E004",
                    )
                )
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


def _conveyor_backend(result: TaskResult) -> RedisBackend:
    from django.tasks import task_backends

    backend = task_backends[result.backend]
    if not isinstance(backend, RedisBackend):
        raise TypeError(f"task backend {result.backend!r} is not a conveyor RedisBackend")
    return backend


def wait_result(result: TaskResult, *, timeout: float | None) -> TaskResult:
    """Return the finished TaskResult of an enqueued task (see RedisBackend.wait_result)."""
    return _conveyor_backend(result).wait_result(result.id, timeout=timeout)


async def await_result(result: TaskResult, *, timeout: float | None) -> TaskResult:
    """Return the finished TaskResult of an enqueued task (see RedisBackend.await_result)."""
    return await _conveyor_backend(result).await_result(result.id, timeout=timeout)
