"""Read the final Redis state of a scenario: task hashes, queue sets, results and memory."""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from conveyor import RedisBackend
from django.tasks.base import TaskResult

TERMINAL = (b"SUCCESSFUL", b"FAILED")


@dataclass(frozen=True, slots=True, kw_only=True)
class QueueCounts:
    """How many ids a queue's sets hold."""

    ready: int
    since: int
    scheduled: int
    running: int

    @property
    def empty(self) -> bool:
        return not (self.ready or self.since or self.scheduled or self.running)


def queue_counts(backend: RedisBackend, queue: str) -> QueueCounts:
    """Return the sizes of a queue's ready, ready-since, scheduled and running sets."""
    keys = backend.keys

    def read(client: Any) -> list[int]:
        pipe = client.pipeline(transaction=False)
        for key in (keys.ready(queue), keys.ready_since(queue), keys.scheduled(queue), keys.running(queue)):
            pipe.zcard(key)
        return [int(n) for n in pipe.execute()]

    ready, since, scheduled, running = backend.store.call(read)
    return QueueCounts(ready=ready, since=since, scheduled=scheduled, running=running)


def members(backend: RedisBackend, key: str) -> set[str]:
    """Return the members of a sorted set."""
    return {m.decode(errors="replace") for m in backend.store.call(lambda c: c.zrange(key, 0, -1))}


def raw(backend: RedisBackend, task_id: str) -> dict[bytes, bytes]:
    """Return a task hash as Redis holds it (empty when absent)."""
    return backend.store.call(lambda c: c.hgetall(backend.keys.task(task_id)))


def statuses(backend: RedisBackend, task_ids: Iterable[str]) -> dict[str, bytes | None]:
    """Return the raw status field of many task hashes in one round trip."""
    ids = list(task_ids)

    def read(client: Any) -> list[bytes | None]:
        pipe = client.pipeline(transaction=False)
        for task_id in ids:
            pipe.hget(backend.keys.task(task_id), "status")
        return list(pipe.execute())

    return dict(zip(ids, backend.store.call(read), strict=True))


def unfinished(backend: RedisBackend, task_ids: Iterable[str]) -> list[str]:
    """Return the ids whose hash is not SUCCESSFUL or FAILED yet."""
    return [tid for tid, status in statuses(backend, task_ids).items() if status not in TERMINAL]


def results(backend: RedisBackend, task_ids: Iterable[str]) -> dict[str, TaskResult]:
    """Return get_result() of each id (the backend's own reading of the final state)."""
    return {task_id: backend.get_result(task_id) for task_id in task_ids}


def error_paths(result: TaskResult) -> list[str]:
    """Return the exception class path of each error of a result."""
    return [e.exception_class_path for e in result.errors]


def raw_errors(fields: dict[bytes, bytes]) -> list[dict[str, str]]:
    """Return the decoded errors list of a raw task hash."""
    return list(json.loads(fields.get(b"errors", b"[]") or b"[]"))


def used_memory(backend: RedisBackend) -> int:
    """Return Redis INFO memory used_memory in bytes."""
    return int(backend.store.call(lambda c: c.info("memory"))["used_memory"])


def task_keys(backend: RedisBackend) -> int:
    """Count the task hashes of this prefix (SCAN: a test may, the scripts never do)."""
    pattern = backend.keys.task("*").replace("{", "\\{").replace("}", "\\}")  # braces are literal
    return sum(1 for _ in backend.store.call(lambda c: list(c.scan_iter(match=pattern, count=1000))))


def volatile_keys(backend: RedisBackend) -> int:
    """Return how many keys of the database have a TTL (INFO keyspace "expires"), heartbeats aside.

    A running worker's heartbeat ({P}:worker:<id>) always has a TTL, renewed every beat: it
    is one small key per live worker, not something that should expire while the worker runs.
    """
    keyspace = backend.store.call(lambda c: c.info("keyspace"))
    expiring = sum(int(db.get("expires", 0)) for db in keyspace.values() if isinstance(db, dict))
    beats = backend.keys.worker("*")
    live = backend.store.call(lambda c: sum(1 for _ in c.scan_iter(match=beats)))
    return expiring - live
