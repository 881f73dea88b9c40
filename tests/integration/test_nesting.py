"""Deeply nested arguments and records: a clear error at enqueue and on read, never RecursionError."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from conveyor import RedisBackend, codec
from conveyor.exceptions import CorruptRecord
from django.tasks.base import TaskResult
from django.tasks.exceptions import TaskResultDoesNotExist

from tests import tasks

from .conftest import BackendFactory

REFUSED = r"^Task arguments are nested deeper than MAX_NESTING=64\."
TEN_MB = 10 * 1024 * 1024
# Reading a 10 MB record must end; the bound only catches quadratic scans, never a speed test.
BIG_RECORD_BOUND_S = 30.0


def nested_list(depth: int) -> list[Any]:
    """Return a list nested depth levels deep ([] is one level), built without recursion."""
    value: list[Any] = []
    for _ in range(depth - 1):
        value = [value]
    return value


def nested_dict(depth: int) -> dict[str, Any]:
    """Return a dict nested depth levels deep ({} is one level), built without recursion."""
    value: dict[str, Any] = {}
    for _ in range(depth - 1):
        value = {"k": value}
    return value


def plant(backend: RedisBackend, task_id: str, **fields: str) -> None:
    """Overwrite fields of a stored task record, as a bug or an attacker with Redis access might."""
    backend.store.call(lambda client: client.hset(backend.keys.task(task_id), mapping=fields))


@contextmanager
def within(seconds: float) -> Iterator[None]:
    """Fail if the block takes longer than seconds (an upper bound only, never a speed test)."""
    start = time.monotonic()
    yield
    elapsed = time.monotonic() - start
    assert elapsed < seconds, f"took {elapsed:.2f}s, bound {seconds}s"


# -- enqueue ----------------------------------------------------------------------


@pytest.mark.parametrize("depth", [1_500, 100_000])
def test_enqueue_refuses_deep_arguments_and_stores_nothing(
    make_backend: BackendFactory,
    enqueued: list[TaskResult],
    stored_keys: Callable[[RedisBackend], list[str]],
    depth: int,
) -> None:
    """Raise TypeError naming MAX_NESTING for deep args or kwargs, sync and async; store and send nothing."""
    backend = make_backend()

    with pytest.raises(TypeError, match=REFUSED):
        backend.enqueue(tasks.noop_task, (nested_list(depth),), {})
    with pytest.raises(TypeError, match=REFUSED):
        backend.enqueue(tasks.noop_task, (), {"deep": nested_dict(depth)})
    with pytest.raises(TypeError, match=REFUSED):
        asyncio.run(backend.aenqueue(tasks.noop_task, ((nested_list(depth),),), {}))

    assert stored_keys(backend) == []
    assert enqueued == []


@pytest.mark.parametrize("depth", [1_500, 100_000])
def test_task_enqueue_refuses_deep_arguments(
    backend: RedisBackend, enqueued: list[TaskResult], depth: int
) -> None:
    """Refuse deep arguments given to Django's Task.enqueue(), which hands them to the backend untouched."""
    with pytest.raises(TypeError, match=REFUSED):
        tasks.noop_task.enqueue(nested_list(depth))
    with pytest.raises(TypeError, match=REFUSED):
        asyncio.run(tasks.noop_task.aenqueue(deep=nested_dict(depth)))

    assert enqueued == []


def test_a_list_that_contains_itself_is_refused(make_backend: BackendFactory) -> None:
    """Refuse a self-containing list as too deep rather than recursing forever."""
    loop: list[Any] = []
    loop.append(loop)

    with pytest.raises(TypeError, match=REFUSED):
        make_backend().enqueue(tasks.noop_task, (loop,), {})


def test_max_nesting_option_sets_the_limit(make_backend: BackendFactory) -> None:
    """Store arguments nested exactly MAX_NESTING levels and refuse one level more."""
    backend = make_backend(MAX_NESTING=3)

    stored = backend.enqueue(tasks.noop_task, (nested_list(3),), {"k": nested_dict(3)})
    with pytest.raises(TypeError, match=r"MAX_NESTING=3\."):
        backend.enqueue(tasks.noop_task, (nested_list(4),), {})
    with pytest.raises(TypeError, match=r"MAX_NESTING=3\."):
        backend.enqueue(tasks.noop_task, (((((1,),),),),), {})  # a tuple nested 4 deep

    fetched = backend.get_result(stored.id)
    assert (fetched.args, fetched.kwargs) == ([nested_list(3)], {"k": nested_dict(3)})


def test_default_limit_stores_64_levels(make_backend: BackendFactory) -> None:
    """Store and read back arguments nested as deep as the default MAX_NESTING allows."""
    backend = make_backend()

    stored = backend.enqueue(tasks.noop_task, (nested_list(64),), {})

    assert backend.get_result(stored.id).args == [nested_list(64)]


# -- reading planted records --------------------------------------------------------

PLANTED = {
    "args": "[" * 100_000 + "]" * 100_000,
    "kwargs": '{"k":' * 100_000 + "1" + "}" * 100_000,
    "result": "[" * 100_000 + "]" * 100_000,
    "errors": "[" * 100_000 + "]" * 100_000,
    "worker_ids": "[" * 100_000 + "]" * 100_000,
}


@pytest.mark.parametrize("name", PLANTED)
def test_get_result_of_a_planted_deep_record(make_backend: BackendFactory, name: str) -> None:
    """Raise TaskResultDoesNotExist naming the field for a record nested 100,000 deep, sync and async."""
    backend = make_backend()
    stored = backend.enqueue(tasks.noop_task, (), {})
    plant(backend, stored.id, **{name: PLANTED[name]})
    message = rf"^{stored.id}: unreadable record \(field '{name}' is nested deeper than"

    with pytest.raises(TaskResultDoesNotExist, match=message):
        backend.get_result(stored.id)
    with pytest.raises(TaskResultDoesNotExist, match=message):
        asyncio.run(backend.aget_result(stored.id))
    with pytest.raises(CorruptRecord, match=f"field '{name}'"):  # what the worker's decode sees
        codec.decode(stored.id, backend.store.get(stored.id))


def test_get_result_of_a_planted_deep_record_of_10_mb(make_backend: BackendFactory) -> None:
    """Refuse 10 MB of brackets quickly, without recursing into them."""
    backend = make_backend()
    stored = backend.enqueue(tasks.noop_task, (), {})
    plant(backend, stored.id, args="[" * (TEN_MB // 2) + "]" * (TEN_MB // 2))

    with within(BIG_RECORD_BOUND_S), pytest.raises(TaskResultDoesNotExist, match="field 'args' is nested"):
        backend.get_result(stored.id)


@pytest.mark.parametrize(
    "value",
    [
        ["x" * 1000] * (TEN_MB // 1000),
        [[10**99 + i] for i in range(TEN_MB // 100)],  # few elements: Django normalises each one
    ],
    ids=["long-strings", "many-small-lists"],
)
def test_get_result_of_a_planted_10_mb_args_field(make_backend: BackendFactory, value: list[Any]) -> None:
    """Decode a 10 MB args field (over MAX_PAYLOAD_BYTES, which only enqueue and the worker enforce)."""
    backend = make_backend()
    stored = backend.enqueue(tasks.noop_task, (), {})
    text = json.dumps(value, separators=(",", ":"))
    assert len(text) >= TEN_MB
    plant(backend, stored.id, args=text)

    with within(BIG_RECORD_BOUND_S):
        fetched = backend.get_result(stored.id)

    assert fetched.args == value
