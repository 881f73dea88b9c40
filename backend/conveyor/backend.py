"""RedisBackend: the Django-facing task backend; it validates, stores and reads, never runs."""

from __future__ import annotations

import logging
import math
import os
import re
import time
from base64 import urlsafe_b64encode
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, replace
from datetime import datetime
from functools import partial
from itertools import islice
from typing import Any

from django.core import checks
from django.db import transaction
from django.tasks.backends.base import BaseTaskBackend
from django.tasks.base import Task, TaskResult
from django.tasks.exceptions import InvalidTask, InvalidTaskBackend, TaskResultDoesNotExist
from django.tasks.signals import task_enqueued
from django.utils.json import normalize_json
from django.utils.module_loading import import_string

from . import codec
from .exceptions import ConveyorError, CorruptRecord, PartiallyEnqueued, RedisUnavailable, UnknownTaskPath
from .keys import Keys
from .options import parse_options
from .retries import Backoff, backoff_problem, max_attempts_problem, parse_retry_defaults
from .schedule import ScheduleEntry
from .store import Holder, Store, UniqueLock
from .tracing import Tracing, tracing_for
from .transport import ScriptCall, Sent
from .waiting import async_waiters, wait_for_record

logger = logging.getLogger(__name__)

# Ids are 32 URL-safe characters from secrets; anything else cannot be one of ours.
_ID_RE = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")  # "." after a queue token (HASH_TAG_PER_QUEUE)
# Key names hold any queue name safely (see keys.py); these limits keep names usable: the
# worker's --queues splits on commas and strips blanks, and logs and metrics carry names.
QUEUE_NAME_MAX = 1024
_BAD_QUEUE_CHAR_RE = re.compile(r"[,\x00-\x1f\x7f]")
# enqueue_many() stores this many tasks per atomic script call by default, and sends
# up to CHUNKS_PER_TRIP calls in one round trip; a chunk larger than MAX_CHUNK would
# pass Lua's limit on the arguments of one Redis call.
DEFAULT_CHUNK = 500
MAX_CHUNK = 2000
CHUNKS_PER_TRIP = 8
# One item of enqueue_many(), encoded: normalised args and kwargs, and their JSON.
type Payload = tuple[list[Any], dict[str, Any], str, str]
# One round trip of enqueue_many(): its script calls, and the results each call stores.
type Trip = tuple[list[ScriptCall], list[list[TaskResult]]]
# One chunk of enqueue_many(): its results, and the (task id, args JSON, kwargs JSON) it stores.
type Chunk = tuple[list[TaskResult], list[tuple[str, str, str]]]


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

    max_attempts: int | None = None  # attempts in all, the first included; None: MAX_ATTEMPTS, else 1
    timeout: float | None = None  # seconds an attempt may run before it is stopped and failed
    retry_backoff: float | None = None  # seconds before the first retry, doubling; None: 1.0 (or BACKOFF)
    retry_backoff_max: float | None = None  # cap on that backoff, before jitter; None: 300.0
    backoff: Backoff | None = None  # (exception, task_result) -> seconds or None (no retry); see retries.py
    # Unique tasks: while a task with the same lock key is READY (or RUNNING, with
    # unique_while_running), enqueue returns that task's result instead of a new one.
    unique_for: float | None = None  # seconds the lock lasts at most; None: not unique
    unique_key: Callable[[list[Any], dict[str, Any]], str] | None = None  # None: the arguments
    unique_while_running: bool = False  # a RUNNING holder also turns a new enqueue away


def new_task_id() -> str:
    """Return a fresh, unguessable task id, never starting with "-" (read as an option on a command line)."""
    # secrets.token_urlsafe(24), without its padding strip: 24 bytes encode to 32 characters.
    while (task_id := urlsafe_b64encode(os.urandom(24)).decode()).startswith("-"):
        pass
    return task_id


def new_task_ids(count: int) -> list[str]:
    """Return count fresh task ids like new_task_id(), from one read of the system's randomness."""
    # 24 bytes are 32 characters with no padding, so every id is its own 32-character slice.
    text = urlsafe_b64encode(os.urandom(24 * count)).decode()
    return [
        task_id if task_id[0] != "-" else new_task_id()
        for task_id in [text[i : i + 32] for i in range(0, 32 * count, 32)]
    ]


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
        self.retry_defaults, retry_problems = parse_retry_defaults(params)  # MAX_ATTEMPTS, BACKOFF
        self.problems.extend(retry_problems)
        self.keys = Keys(self.settings.key_prefix, per_queue=self.settings.hash_tag_per_queue)
        self.store = Store(self.settings, self.keys)  # connects on first use, not here
        # OpenTelemetry spans (docs/tracing.md): None unless the [otel] extra is installed and a
        # tracer provider is configured by now; each enqueue then tests only this attribute.
        self.tracing: Tracing | None = tracing_for() if self.settings.tracing else None
        # Tasks without run_after that passed validate_task(): a Task is frozen and what
        # validation reads of this backend never changes, so once valid it stays valid.
        self._valid_tasks: dict[Task, bool] = {}

    # -- validation --------------------------------------------------------------

    def validate_task(self, task: Task) -> None:
        """Validate like Django does, plus conveyor's queue names and per-task options."""
        super().validate_task(task)
        problem = queue_name_problem(task.queue_name)
        if problem:
            raise InvalidTask(f"{problem}.")
        if isinstance(task, ConveyorTask):
            if task.max_attempts is not None and max_attempts_problem(task.max_attempts):
                raise InvalidTask("max_attempts must be a whole number of at least 1.")
            if task.timeout is not None and (
                isinstance(task.timeout, bool)
                or not isinstance(task.timeout, (int, float))
                or task.timeout <= 0
            ):
                raise InvalidTask("timeout must be a number of seconds greater than 0, or None.")
            for seconds in (task.retry_backoff, task.retry_backoff_max):
                if seconds is not None and (
                    isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not seconds >= 0
                ):
                    raise InvalidTask("retry_backoff and retry_backoff_max must be 0 or more seconds.")
            if task.backoff is not None:
                problem = backoff_problem(task.backoff)
                if problem:
                    raise InvalidTask(f"{problem}.")
                if task.retry_backoff is not None or task.retry_backoff_max is not None:
                    raise InvalidTask(
                        "give either backoff or retry_backoff/retry_backoff_max, not both: "
                        "backoff decides every delay itself."
                    )
            self._validate_unique(task)

    @staticmethod
    def _validate_unique(task: ConveyorTask) -> None:
        window = task.unique_for
        if window is None:
            if task.unique_key is not None or task.unique_while_running:
                raise InvalidTask("unique_key and unique_while_running need unique_for.")
            return
        if isinstance(window, bool) or not isinstance(window, (int, float)) or not 0 < window < math.inf:
            raise InvalidTask("unique_for must be a number of seconds greater than 0, or None.")
        if task.unique_key is not None and not callable(task.unique_key):
            raise InvalidTask("unique_key must be a function of (args, kwargs) returning a str, or None.")
        if not isinstance(task.unique_while_running, bool):
            raise InvalidTask("unique_while_running must be True or False.")

    def _require_valid_options(self) -> None:
        if self.problems:
            listed = "; ".join(f"{p.setting}: {p.message}" for p in self.problems)
            raise InvalidTaskBackend(f"Task backend {self.alias!r} is misconfigured: {listed}")

    # -- enqueue -----------------------------------------------------------------

    def _payload(self, args: Any, kwargs: Any) -> tuple[list[Any], dict[str, Any], str, str]:
        """Return normalised args and kwargs and their JSON; raise if they cannot be stored."""
        settings = self.settings
        plain = codec.encode_plain_payload(
            args, kwargs, settings.max_payload_bytes, max_nesting=settings.max_nesting
        )
        if plain is not None:  # exact JSON types: no normalize_json() pass needed
            return plain
        # normalize_json() (what TaskResult runs) recurses; measure the depth first.
        codec.check_nesting(args, kwargs, settings.max_nesting)
        norm_args, norm_kwargs = normalize_json(args), normalize_json(kwargs)
        args_json, kwargs_json = codec.encode_payload(
            norm_args, norm_kwargs, settings.max_payload_bytes, max_nesting=settings.max_nesting
        )
        return norm_args, norm_kwargs, args_json, kwargs_json

    def _encode(self, task: Task, args: Any, kwargs: Any, enqueued_at: Any) -> tuple[TaskResult, str, str]:
        """Return a new task's READY result and its arguments' JSON; raise if they cannot be stored."""
        norm_args, norm_kwargs, args_json, kwargs_json = self._payload(args, kwargs)
        task_id = new_task_id()
        if self.keys.per_queue:  # the id names its queue's slot
            task_id = self.keys.task_id(task.queue_name, task_id)
        result = codec.ready_result(task, task_id, enqueued_at, norm_args, norm_kwargs, self.alias)
        return result, args_json, kwargs_json

    def _validate_once(self, task: Task) -> None:
        """Run validate_task(), remembering tasks without run_after that passed (run_after reads USE_TZ)."""
        try:
            if task in self._valid_tasks:
                return
        except TypeError:  # a Task subclass with an unhashable field: validate every time
            self.validate_task(task)
            return
        self.validate_task(task)
        if task.run_after is None:
            if len(self._valid_tasks) >= 1024:
                self._valid_tasks.clear()
            self._valid_tasks[task] = True

    def _prepare(
        self, task: Task, args: Any, kwargs: Any
    ) -> tuple[TaskResult, dict[str, str], UniqueLock | None]:
        """Validate and encode; nothing is written and no signal sent if this raises."""
        self._require_valid_options()
        self._validate_once(task)
        fields, enqueued_at = self._shared(task)
        result, fields["args"], fields["kwargs"] = self._encode(task, args, kwargs, enqueued_at)
        unique = self._unique_lock(task, result) if isinstance(task, ConveyorTask) else None
        return result, fields, unique

    def _unique_lock(self, task: ConveyorTask, result: TaskResult) -> UniqueLock | None:
        """Return the lock a unique task takes (None for any other), named by its arguments or its key."""
        if task.unique_for is None:
            return None
        key = None
        if task.unique_key is not None:
            key = task.unique_key(result.args, result.kwargs)
            if not isinstance(key, str):
                raise TypeError(f"unique_key must return a str, not {type(key).__name__}.")
        digest = codec.unique_digest(task.module_path, task.queue_name, result.args, result.kwargs, key)
        return UniqueLock(
            key=self.keys.of(task.queue_name).unique(digest),
            window_ms=max(1, math.ceil(task.unique_for * 1000)),
            while_running=task.unique_while_running,
        )

    @staticmethod
    def _due_ms(task: Task) -> int | None:
        return None if task.run_after is None else codec.to_micros(task.run_after) // 1000

    def _write(self, result: TaskResult, fields: dict[str, str], unique: UniqueLock | None) -> TaskResult:
        if self.tracing is not None:
            with self._send_span(result.task, fields, result.id):
                return self._store_one(result, fields, unique)
        return self._store_one(result, fields, unique)

    def _send_span(self, task: Task, fields: dict[str, str], task_id: str | None, count: int = 1) -> Any:
        """Open the send span of one task (its id) or a bulk enqueue (its count); fields get its context."""
        assert self.tracing is not None
        return self.tracing.send(
            queue=task.queue_name,
            task_path=task.module_path,
            priority=task.priority,
            fields=fields,
            task_id=task_id,
            count=count,
        )

    def _store_one(self, result: TaskResult, fields: dict[str, str], unique: UniqueLock | None) -> TaskResult:
        task = result.task
        due_ms = None if task.run_after is None else codec.to_micros(task.run_after) // 1000
        reply = self.store.enqueue(result.id, task.queue_name, task.priority, due_ms, fields, unique=unique)
        if type(reply) is Holder:
            return self._holder_result(task, reply)
        task_enqueued.send(type(self), task_result=result)
        return result

    def enqueue(self, task: Task, args: Any, kwargs: Any) -> TaskResult:
        """Validate, store in one atomic round trip, send task_enqueued, return the result.

        A unique task whose lock is held returns the holder's result and sends no signal.
        """
        result, fields, unique = self._prepare(task, args, kwargs)
        if self.settings.enqueue_on_commit:
            transaction.on_commit(partial(self._write, result, fields, unique))
            return result
        return self._write(result, fields, unique)

    async def aenqueue(self, task: Task, args: Any, kwargs: Any) -> TaskResult:
        """Enqueue natively on the running event loop (on_commit needs the sync path)."""
        if self.settings.enqueue_on_commit:
            return await super().aenqueue(task, args, kwargs)
        result, fields, unique = self._prepare(task, args, kwargs)
        if self.tracing is not None:
            with self._send_span(result.task, fields, result.id):
                return await self._astore_one(result, fields, unique)
        return await self._astore_one(result, fields, unique)

    async def _astore_one(
        self, result: TaskResult, fields: dict[str, str], unique: UniqueLock | None
    ) -> TaskResult:
        task = result.task
        reply = await self.store.aenqueue(
            result.id, task.queue_name, task.priority, self._due_ms(task), fields, unique=unique
        )
        if type(reply) is Holder:
            return self._holder_result(task, reply)
        await task_enqueued.asend(type(self), task_result=result)
        return result

    def _holder_result(self, task: Task, holder: Holder) -> TaskResult:
        """Return the result of the task holding a unique lock, read in the enqueue's own round trip."""
        try:
            record = codec.decode(holder.task_id, holder.fields)
        except CorruptRecord:
            return self._result_from(holder.task_id, holder.fields)  # raises, naming the problem
        if record.task_path != task.module_path:  # a key function shared by two tasks: check the path
            return self._result_from(holder.task_id, holder.fields)
        return codec.to_task_result(record, self._as_recorded(task, record))

    # -- bulk enqueue --------------------------------------------------------------

    def _prepare_many(self, task: Task, items: Iterable[tuple[Any, Any]], chunk: int) -> list[Payload]:
        """Validate the task once and encode every item; nothing is written or signalled if this raises."""
        self._require_valid_options()
        self.validate_task(task)
        if isinstance(task, ConveyorTask) and task.unique_for is not None:
            raise InvalidTask(
                "enqueue_many() does not take unique tasks: enqueue them one by one, so each "
                "finds the lock of the one before."
            )
        if isinstance(chunk, bool) or not isinstance(chunk, int) or not 1 <= chunk <= MAX_CHUNK:
            raise ValueError(f"chunk must be a whole number from 1 to {MAX_CHUNK}, not {chunk!r}.")
        payloads: list[Payload] = []
        payload = self._payload
        for index, item in enumerate(items):
            try:
                args, kwargs = item
            except (TypeError, ValueError) as exc:
                raise TypeError(f"item {index} of enqueue_many() is not an (args, kwargs) pair") from exc
            payloads.append(payload(args, kwargs))
        return payloads

    def _shared(self, task: Task) -> tuple[dict[str, str], datetime]:
        """Return the fields of new tasks of this task but their arguments, and their enqueue time."""
        enqueued_micros = time.time_ns() // 1000
        shared = codec.shared_fields(
            task_path=task.module_path,
            queue=task.queue_name,
            priority=task.priority,
            backend=self.alias,
            run_after=task.run_after,
            enqueued_micros=enqueued_micros,
        )
        return shared, codec.from_micros(enqueued_micros)

    def _chunks(
        self, task: Task, payloads: list[Payload], chunk: int, enqueued_at: datetime
    ) -> Iterator[Chunk]:
        """Yield each chunk's results and (id, args JSON, kwargs JSON) records, made only when asked."""
        ready_result, alias = codec.ready_result, self.alias
        for start in range(0, len(payloads), chunk):
            part = payloads[start : start + chunk]
            results, records = [], []
            ids = new_task_ids(len(part))
            if self.keys.per_queue:  # each id names its queue's slot
                ids = [self.keys.task_id(task.queue_name, task_id) for task_id in ids]
            for task_id, (norm_args, norm_kwargs, args_json, kwargs_json) in zip(ids, part, strict=True):
                results.append(ready_result(task, task_id, enqueued_at, norm_args, norm_kwargs, alias))
                records.append((task_id, args_json, kwargs_json))
            yield results, records

    def _trips(self, task: Task, chunks: Iterator[Chunk], shared: dict[str, str]) -> Iterator[Trip]:
        """Yield CHUNKS_PER_TRIP chunks at a time as one round trip's script calls, with their results."""
        queue, priority, due_ms, call = (
            task.queue_name,
            task.priority,
            self._due_ms(task),
            self.store.enqueue_many_call,
        )
        while trip := list(islice(chunks, CHUNKS_PER_TRIP)):
            yield (
                [call(queue, priority, due_ms, shared, records) for _, records in trip],
                [results for results, _ in trip],
            )

    @staticmethod
    def _partial(done: list[TaskResult], exc: ConveyorError) -> PartiallyEnqueued:
        return PartiallyEnqueued(
            f"enqueue_many() stored {len(done)} tasks and then failed: {exc}", list(done)
        )

    def _write_many(
        self, task: Task, shared: dict[str, str], chunks: Iterator[Chunk], count: int
    ) -> list[TaskResult]:
        """Store the tasks of enqueue_many(), in one send span when tracing is on."""
        self.store.announce(task.queue_name)  # HASH_TAG_PER_QUEUE only
        if self.tracing is not None:
            with self._send_span(task, shared, None, count):  # its context goes into shared first
                return self._store_many(self._trips(task, chunks, shared))
        return self._store_many(self._trips(task, chunks, shared))

    def _store_many(self, trips: Iterator[Trip]) -> list[TaskResult]:
        """Send the trips in turn; make the next trip and signal this one's tasks while Redis stores."""
        transport = self.store.transport
        done: list[TaskResult] = []
        send, sender = task_enqueued.send, type(self)
        with transport.hold():
            current = next(trips, None)
            sent = self._send_trip(current[0]) if current else None
            while current is not None:
                calls, made = current
                following = next(trips, None)
                try:
                    if sent is None:
                        raise RedisUnavailable("not sent")
                    replies = transport.receive(sent, check=False)
                except ConveyorError:  # a lost connection: send again once, as run() does (idempotent)
                    try:
                        replies = transport.run(calls, check=False)
                    except ConveyorError as exc:
                        raise self._partial(done, exc) from exc
                failed = next((r for r in replies if isinstance(r, ConveyorError)), None)
                sent = self._send_trip(following[0]) if following and failed is None else None
                for results, reply in zip(made, replies, strict=True):
                    if not isinstance(reply, ConveyorError):
                        for result in results:
                            send(sender, task_result=result)
                        done += results
                if failed is not None:
                    raise self._partial(done, failed) from failed
                current = following
        return done

    def _send_trip(self, calls: list[ScriptCall]) -> Sent | None:
        """Write a trip's calls without waiting; None when that failed (the trip is then run again)."""
        try:
            return self.store.transport.send_ahead(calls)
        except ConveyorError:
            return None

    def enqueue_many(
        self, task: Task, items: Iterable[tuple[Any, Any]], *, chunk: int = DEFAULT_CHUNK
    ) -> list[TaskResult]:
        """Enqueue one task with many (args, kwargs) pairs: chunk tasks per atomic script call,
        CHUNKS_PER_TRIP calls per round trip, task_enqueued for each task; return their results."""
        payloads = self._prepare_many(task, items, chunk)
        if not payloads:
            return []
        shared, enqueued_at = self._shared(task)
        chunks = self._chunks(task, payloads, chunk, enqueued_at)
        if self.settings.enqueue_on_commit:
            made = list(chunks)
            transaction.on_commit(partial(self._write_many, task, shared, iter(made), len(payloads)))
            return [result for results, _ in made for result in results]
        return self._write_many(task, shared, chunks, len(payloads))

    async def aenqueue_many(
        self, task: Task, items: Iterable[tuple[Any, Any]], *, chunk: int = DEFAULT_CHUNK
    ) -> list[TaskResult]:
        """Enqueue many like enqueue_many(), on the running event loop (on_commit needs the sync path)."""
        if self.settings.enqueue_on_commit:
            from asgiref.sync import sync_to_async

            return await sync_to_async(self.enqueue_many, thread_sensitive=True)(
                task, list(items), chunk=chunk
            )
        payloads = self._prepare_many(task, items, chunk)
        if not payloads:
            return []
        shared, enqueued_at = self._shared(task)
        chunks = self._chunks(task, payloads, chunk, enqueued_at)
        await self.store.aannounce(task.queue_name)  # HASH_TAG_PER_QUEUE only
        if self.tracing is not None:
            with self._send_span(task, shared, None, len(payloads)):
                return await self._astore_many(self._trips(task, chunks, shared))
        return await self._astore_many(self._trips(task, chunks, shared))

    async def _astore_many(self, trips: Iterator[Trip]) -> list[TaskResult]:
        """Send the trips of aenqueue_many() in turn, signalling each trip's tasks."""
        done: list[TaskResult] = []
        for calls, made in trips:
            try:
                replies = await self.store.arun(calls, check=False)
            except ConveyorError as exc:
                raise self._partial(done, exc) from exc
            failed: ConveyorError | None = None
            for results, reply in zip(made, replies, strict=True):
                if isinstance(reply, ConveyorError):
                    failed = failed or reply
                    continue
                for result in results:
                    await task_enqueued.asend(type(self), task_result=result)
                done += results
            if failed is not None:
                raise self._partial(done, failed) from failed
        return done

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
        return self._as_recorded(task, record)

    @staticmethod
    def _as_recorded(task: Task, record: codec.TaskRecord) -> Task:
        """Return task with the priority, queue, run_after and backend its record was sent with."""
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

    def scheduled_task(self, entry: ScheduleEntry) -> Task:
        """Return the Task a SCHEDULE entry enqueues, with its queue and priority; ValueError says why not."""
        if not self.task_path_allowed(entry.task):
            raise ValueError(
                f"task {entry.task!r} is not under an allowed module "
                f"({', '.join(self.allowed_task_modules())})"
            )
        try:
            task = import_string(entry.task)
        except ImportError as exc:
            raise ValueError(f"task {entry.task!r} cannot be imported ({exc})") from exc
        if not isinstance(task, Task):
            raise ValueError(f"{entry.task!r} is not a django.tasks Task (decorate it with @task)")
        changes: dict[str, Any] = {"backend": self.alias}
        if entry.queue is not None:
            changes["queue_name"] = entry.queue
        if entry.priority is not None:
            changes["priority"] = entry.priority
        try:
            scheduled = task.using(**changes)
            self.validate_task(scheduled)
        except (InvalidTask, InvalidTaskBackend) as exc:
            raise ValueError(str(exc)) from exc
        codec.encode_payload(
            list(entry.args),
            dict(entry.kwargs or {}),
            self.settings.max_payload_bytes,
            max_nesting=self.settings.max_nesting,
        )
        return scheduled

    def schedule_problems(self) -> list[checks.CheckMessage]:
        """Report each SCHEDULE entry whose task cannot be enqueued as declared (conveyor.E005)."""
        errors: list[checks.CheckMessage] = []
        for entry in self.settings.schedule:
            try:
                self.scheduled_task(entry)
            except (ValueError, TypeError, ConveyorError) as exc:
                errors.append(
                    checks.Error(
                        f"TASKS[{self.alias!r}] OPTIONS SCHEDULE {entry.name}: {exc}",
                        hint="Name a @task function under ALLOWED_TASK_MODULES, a queue in QUEUES "
                        "and a priority from -100 to 100 (docs/periodic.md).",
                        obj=self,
                        id="conveyor.E005",
                    )
                )
        return errors

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
        """Report bad OPTIONS and an unreachable Redis as errors, a Redis that loses tasks as warnings."""
        errors: list[checks.CheckMessage] = [
            checks.Error(
                f"TASKS[{self.alias!r}] {p.setting}: {p.message}",
                hint=p.hint,
                obj=self,
                id="conveyor.E001",
            )
            for p in self.problems
        ]
        if errors:
            return errors
        errors += self.schedule_problems()
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
            durability = self.store.durability()
            if durability is None:  # CONFIG refused (managed Redis, ACL): nothing to warn about
                logger.info(
                    "TASKS[%r]: could not verify Redis eviction and persistence (CONFIG GET refused)",
                    self.alias,
                )
            else:
                for risk, check_id in (
                    (durability.eviction_risk(), "conveyor.W001"),
                    (durability.persistence_risk(), "conveyor.W002"),
                ):
                    if risk is not None:
                        errors.append(
                            checks.Warning(
                                f"TASKS[{self.alias!r}]: Redis may lose tasks without an error: {risk}.",
                                hint="See docs/production.md; silence this check only for a Redis "
                                "whose tasks may be lost (development).",
                                obj=self,
                                id=check_id,
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


def enqueue_many(
    task: Task, items: Iterable[tuple[Any, Any]], *, chunk: int = DEFAULT_CHUNK
) -> list[TaskResult]:
    """Enqueue task once per (args, kwargs) pair; on conveyor in a few round trips, elsewhere one by one."""
    backend = task.get_backend()
    if isinstance(backend, RedisBackend):
        return backend.enqueue_many(task, items, chunk=chunk)
    return [backend.enqueue(task, args, kwargs) for args, kwargs in items]


async def aenqueue_many(
    task: Task, items: Iterable[tuple[Any, Any]], *, chunk: int = DEFAULT_CHUNK
) -> list[TaskResult]:
    """Enqueue task once per (args, kwargs) pair like enqueue_many(), on the running event loop."""
    backend = task.get_backend()
    if isinstance(backend, RedisBackend):
        return await backend.aenqueue_many(task, items, chunk=chunk)
    return [await backend.aenqueue(task, args, kwargs) for args, kwargs in items]


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
