"""Redis down, silent or refusing us, and arguments that must never be stored."""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from conveyor import RedisBackend
from conveyor.exceptions import PayloadTooLarge, RedisUnavailable
from django.tasks.base import TaskResult
from django.tasks.exceptions import InvalidTaskBackend, TaskResultDoesNotExist

from devtools.redis_server import RedisProcess
from tests import tasks

from .conftest import BackendFactory

# Failures must surface within a small multiple of these; the bound is generous on purpose.
TIMEOUTS = {"CONNECT_TIMEOUT": 0.5, "SOCKET_TIMEOUT": 0.5}
FAILURE_BOUND_S = 3.0


@contextmanager
def within(seconds: float) -> Iterator[None]:
    """Fail if the block takes longer than seconds (an upper bound only, never a speed test)."""
    start = time.monotonic()
    yield
    elapsed = time.monotonic() - start
    assert elapsed < seconds, f"took {elapsed:.2f}s, bound {seconds}s"


# -- Redis down or silent -------------------------------------------------------


def test_enqueue_to_a_closed_port_raises_redis_unavailable(
    make_backend: BackendFactory, closed_port: int, enqueued: list[TaskResult]
) -> None:
    """Raise RedisUnavailable naming the target when nothing listens, and send no signal."""
    backend = make_backend(URL=f"redis://127.0.0.1:{closed_port}/0", **TIMEOUTS)

    with within(FAILURE_BOUND_S), pytest.raises(RedisUnavailable, match=f"127.0.0.1:{closed_port}"):
        backend.enqueue(tasks.noop_task, (), {})

    assert enqueued == []


def test_redis_killed_then_back(
    make_backend: BackendFactory, own_redis: RedisProcess, enqueued: list[TaskResult]
) -> None:
    """Raise RedisUnavailable while the server is down, and work again once it is back on its port."""
    backend = make_backend(URL=own_redis.url, **TIMEOUTS)
    before = backend.enqueue(tasks.noop_task, (), {})

    # Given the server crashed after a successful enqueue (pooled connections now dead)
    own_redis.stop()
    # When a web request enqueues, reads a result or runs checks
    with within(FAILURE_BOUND_S), pytest.raises(RedisUnavailable, match="unreachable"):
        backend.enqueue(tasks.noop_task, (), {})
    with within(FAILURE_BOUND_S), pytest.raises(RedisUnavailable):
        backend.get_result(before.id)
    with within(FAILURE_BOUND_S):
        [error] = backend.check()
    assert error.id == "conveyor.E002"
    assert enqueued == [before]

    # Then, once Redis is back (empty: it was killed), the same backend recovers
    own_redis.start()
    after = backend.enqueue(tasks.noop_task, (), {})
    assert backend.get_result(after.id) == after
    with pytest.raises(TaskResultDoesNotExist):
        backend.get_result(before.id)


def test_aenqueue_with_redis_down_raises_redis_unavailable(
    make_backend: BackendFactory, closed_port: int, enqueued: list[TaskResult]
) -> None:
    """Raise RedisUnavailable from the native async path too."""
    backend = make_backend(URL=f"redis://127.0.0.1:{closed_port}/0", **TIMEOUTS)

    with within(FAILURE_BOUND_S), pytest.raises(RedisUnavailable):
        asyncio.run(backend.aenqueue(tasks.noop_task, (), {}))
    with within(FAILURE_BOUND_S), pytest.raises(RedisUnavailable):
        asyncio.run(backend.aget_result("some-id"))
    assert enqueued == []


@pytest.mark.parametrize("use_async", [False, True], ids=["sync", "async"])
def test_server_that_never_answers(
    make_backend: BackendFactory, silent_server: int, enqueued: list[TaskResult], use_async: bool
) -> None:
    """Give up on a server that accepts TCP but never replies, within the timeouts, sending no signal."""
    # Given a port whose listen backlog completes the TCP handshake, but nobody ever reads or writes
    backend = make_backend(URL=f"redis://127.0.0.1:{silent_server}/0", **TIMEOUTS)

    # When a task is enqueued, Then the call gives up within a bound of the timeouts
    with within(FAILURE_BOUND_S), pytest.raises(RedisUnavailable, match=r"[Tt]imeout"):
        if use_async:
            asyncio.run(backend.aenqueue(tasks.noop_task, (), {}))
        else:
            backend.enqueue(tasks.noop_task, (), {})

    # And nothing reports the task as enqueued
    assert enqueued == []


def test_silent_server_fails_check_with_e002(make_backend: BackendFactory, silent_server: int) -> None:
    """Report a server that never answers as conveyor.E002 within the timeouts."""
    backend = make_backend(URL=f"redis://127.0.0.1:{silent_server}/0", **TIMEOUTS)

    with within(FAILURE_BOUND_S):
        errors = backend.check()

    assert [e.id for e in errors] == ["conveyor.E002"]


# -- credentials ----------------------------------------------------------------


@pytest.fixture
def redis_with_password(own_redis: RedisProcess) -> RedisProcess:
    """Restart the private server with requirepass set."""
    own_redis.password = "right-pass"
    own_redis.restart()
    return own_redis


@pytest.mark.parametrize(
    "auth",
    ["", ":wrong-pass@", "default:wrong-pass@", "nobody:right-pass@"],
    ids=["none", "wrong", "user", "unknown-user"],
)
def test_wrong_credentials_name_username_password(
    make_backend: BackendFactory, redis_with_password: RedisProcess, auth: str
) -> None:
    """Say the credentials were refused and point at USERNAME/PASSWORD, without echoing the password."""
    backend = make_backend(URL=f"redis://{auth}127.0.0.1:{redis_with_password.port}/0", **TIMEOUTS)

    with within(FAILURE_BOUND_S), pytest.raises(RedisUnavailable) as caught:
        backend.enqueue(tasks.noop_task, (), {})

    message = str(caught.value)
    assert "USERNAME/PASSWORD" in message
    assert "wrong-pass" not in message
    [error] = backend.check()
    assert error.id == "conveyor.E002"
    assert "USERNAME/PASSWORD" in error.msg
    assert "wrong-pass" not in error.msg


def test_right_password_in_options(make_backend: BackendFactory, redis_with_password: RedisProcess) -> None:
    """Connect with HOST/PORT/PASSWORD given as separate options."""
    backend = make_backend(
        URL=None, HOST="127.0.0.1", PORT=redis_with_password.port, PASSWORD="right-pass", **TIMEOUTS
    )

    result = backend.enqueue(tasks.noop_task, (), {})

    assert backend.check() == []
    assert backend.get_result(result.id) == result


# -- misconfiguration -----------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "named"),
    [
        ({"PORT": "x", "URL": None}, "PORT"),
        ({"RESULT_TTL": 0}, "RESULT_TTL"),
        ({"KEY_PREFIX": "{x}"}, "KEY_PREFIX"),
        ({"URL": "http://nope"}, "URL"),
        ({"TYPO": 1}, "TYPO"),
    ],
)
def test_enqueue_on_a_misconfigured_backend(
    make_backend: BackendFactory,
    options: dict[str, Any],
    named: str,
    enqueued: list[TaskResult],
) -> None:
    """Refuse to enqueue or read with InvalidTaskBackend naming the bad option, before any I/O."""
    backend = make_backend(**options)

    with pytest.raises(InvalidTaskBackend, match=named):
        backend.enqueue(tasks.noop_task, (), {})
    with pytest.raises(InvalidTaskBackend, match=named):
        asyncio.run(backend.aenqueue(tasks.noop_task, (), {}))
    with pytest.raises(InvalidTaskBackend, match=named):
        backend.get_result("some-id")
    assert enqueued == []
    assert backend.store._client is None


# -- arguments that must not be stored -----------------------------------------


def test_payload_over_the_limit_is_refused(
    make_backend: BackendFactory,
    enqueued: list[TaskResult],
    stored_keys: Callable[[RedisBackend], list[str]],
) -> None:
    """Raise PayloadTooLarge past MAX_PAYLOAD_BYTES, store nothing, send nothing; accept up to the limit."""
    backend = make_backend(MAX_PAYLOAD_BYTES=64)
    fits = "x" * (64 - len('[""]{}'))

    with pytest.raises(PayloadTooLarge, match="MAX_PAYLOAD_BYTES=64"):
        backend.enqueue(tasks.noop_task, (fits + "x",), {})
    with pytest.raises(PayloadTooLarge):
        asyncio.run(backend.aenqueue(tasks.noop_task, (), {"k": "é" * 40}))
    assert stored_keys(backend) == []
    assert enqueued == []

    ok = backend.enqueue(tasks.noop_task, (fits,), {})
    assert backend.get_result(ok.id).args == [fits]


@pytest.mark.parametrize(
    ("args", "kwargs", "error"),
    [
        (({1: "a"},), {}, "dictionary keys must be strings"),
        ((), {"nested": [{"ok": {2: "b"}}]}, "dictionary keys must be strings"),
        ((math.nan,), {}, "Unsupported value"),
        ((), {"big": math.inf}, "Unsupported value"),
        (({1, 2},), {}, "Unsupported type"),
        ((object(),), {}, "Unsupported type"),
    ],
    ids=["int-key", "nested-int-key", "nan", "inf", "set", "object"],
)
def test_unstorable_arguments_raise_type_error_and_store_nothing(
    make_backend: BackendFactory,
    enqueued: list[TaskResult],
    stored_keys: Callable[[RedisBackend], list[str]],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    error: str,
) -> None:
    """Raise TypeError for arguments JSON cannot round-trip, storing and signalling nothing."""
    backend = make_backend()

    with pytest.raises(TypeError, match=error):
        backend.enqueue(tasks.noop_task, args, kwargs)
    with pytest.raises(TypeError, match=error):
        asyncio.run(backend.aenqueue(tasks.noop_task, args, kwargs))

    assert stored_keys(backend) == []
    assert enqueued == []


def test_undecodable_bytes_argument_stores_nothing(
    make_backend: BackendFactory,
    enqueued: list[TaskResult],
    stored_keys: Callable[[RedisBackend], list[str]],
) -> None:
    """Refuse bytes that are not UTF-8 (Django's normalisation raises ValueError), storing nothing."""
    backend = make_backend()

    with pytest.raises(ValueError, match="Unsupported value"):
        backend.enqueue(tasks.noop_task, (b"\xff",), {})

    assert stored_keys(backend) == []
    assert enqueued == []
