"""Tracing on enqueue: a send span per enqueue (or per bulk call) and its context in the record."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from typing import Any

import pytest
from conveyor import RedisBackend, aenqueue_many, enqueue_many
from conveyor.exceptions import RedisUnavailable
from conveyor.tracing import tracing_for
from django.tasks import task_backends
from opentelemetry.trace import SpanKind, StatusCode

from tests import tasks
from tests.conftest import ROOT, TracedSpans

from .conftest import BackendFactory


def traced_backend(traced: TracedSpans) -> RedisBackend:
    """Return the default backend, tracing to the test's own provider."""
    backend = task_backends["default"]
    assert isinstance(backend, RedisBackend)
    backend.tracing = tracing_for(traced.provider)
    assert backend.tracing is not None
    return backend


def raw_record(backend: RedisBackend, task_id: str) -> dict[bytes, bytes]:
    """Return a task's hash exactly as Redis holds it."""
    return backend.store.call(lambda c: c.hgetall(backend.keys.task(task_id)))


def traceparent_of(span: Any) -> str:
    """Return the W3C traceparent naming a span."""
    ctx = span.get_span_context()
    assert ctx.trace_flags.sampled
    return f"00-{ctx.trace_id:032x}-{ctx.span_id:016x}-{ctx.trace_flags:02x}"


def test_enqueue_in_a_span_sends_a_producer_span_that_the_record_names(
    backend: object, traced: TracedSpans
) -> None:
    b = traced_backend(traced)
    with traced.provider.get_tracer("test").start_as_current_span("request") as request:
        result = tasks.noop_task.using(priority=7).enqueue(1, two=2)

    (send,) = traced.finished("send")
    assert send.name == "send default"
    assert send.kind is SpanKind.PRODUCER
    assert send.parent is not None
    assert send.parent.span_id == request.get_span_context().span_id
    assert send.context.trace_id == request.get_span_context().trace_id
    assert dict(send.attributes) == {
        "messaging.system": "conveyor",
        "messaging.operation.type": "send",
        "messaging.operation.name": "send",
        "messaging.destination.name": "default",
        "messaging.message.id": result.id,
        "conveyor.task.path": "tests.tasks.noop_task",
        "conveyor.task.priority": 7,
    }
    assert send.status.is_ok
    assert json.loads(raw_record(b, result.id)[b"trace"]) == {"traceparent": traceparent_of(send)}
    assert b.get_result(result.id).args == [1]  # the record still decodes


def test_an_enqueue_outside_any_span_starts_a_trace(backend: object, traced: TracedSpans) -> None:
    b = traced_backend(traced)
    result = tasks.noop_task.using(queue_name="mail").enqueue()

    (send,) = traced.finished()
    assert send.name == "send mail"
    assert send.parent is None
    assert json.loads(raw_record(b, result.id)[b"trace"])["traceparent"] == traceparent_of(send)


def test_aenqueue_sends_the_same_span(backend: object, traced: TracedSpans) -> None:
    b = traced_backend(traced)
    result = asyncio.run(tasks.noop_task.aenqueue())

    (send,) = traced.finished("send")
    assert send.attributes["messaging.message.id"] == result.id
    assert json.loads(raw_record(b, result.id)[b"trace"])["traceparent"] == traceparent_of(send)


@pytest.mark.parametrize("run_async", [False, True], ids=["enqueue_many", "aenqueue_many"])
def test_a_bulk_enqueue_is_one_send_span_whose_context_every_record_carries(
    backend: object, traced: TracedSpans, run_async: bool
) -> None:
    b = traced_backend(traced)
    items = [((n,), {}) for n in range(7)]
    if run_async:
        results = asyncio.run(aenqueue_many(tasks.noop_task, items, chunk=2))
    else:
        results = enqueue_many(tasks.noop_task, items, chunk=2)

    (send,) = traced.finished("send")
    assert send.kind is SpanKind.PRODUCER
    assert send.attributes["messaging.batch.message_count"] == 7
    assert "messaging.message.id" not in send.attributes
    for result in results:
        assert json.loads(raw_record(b, result.id)[b"trace"])["traceparent"] == traceparent_of(send)


def test_an_empty_bulk_enqueue_sends_no_span(backend: object, traced: TracedSpans) -> None:
    traced_backend(traced)
    assert enqueue_many(tasks.noop_task, []) == []
    assert traced.finished() == []


def test_without_a_tracer_provider_nothing_is_traced_and_no_context_is_written(
    backend: object, make_backend: BackendFactory
) -> None:
    # Given no tracer provider set in this process (the API's proxy default stands in)
    assert tracing_for() is None
    # When a backend is built and enqueues
    fresh = make_backend()
    assert fresh.tracing is None
    result = fresh.enqueue(tasks.noop_task, (), {})
    # Then the record has no trace field at all
    raw = raw_record(fresh, result.id)
    assert b"trace" not in raw
    assert raw[b"status"] == b"READY"


def test_without_opentelemetry_installed_enqueue_works(
    backend: object, make_backend: BackendFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "opentelemetry", None)  # import opentelemetry now raises ImportError
    with pytest.raises(ImportError):
        import opentelemetry  # noqa: F401
    assert tracing_for() is None
    fresh = make_backend()
    assert fresh.tracing is None
    result = fresh.enqueue(tasks.noop_task, (1,), {})
    many = fresh.enqueue_many(tasks.noop_task, [((2,), {})])
    assert fresh.get_result(result.id).args == [1]
    assert b"trace" not in raw_record(fresh, many[0].id)


AUTO_DETECT = """
import sys
from conveyor import RedisBackend
params = {"QUEUES": [], "OPTIONS": {"URL": "redis://127.0.0.1:1/0", "TRACING": sys.argv[2] == "on"}}
if sys.argv[1] == "sdk":
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider
    trace.set_tracer_provider(TracerProvider())
print(RedisBackend("default", params).tracing is not None)
"""


@pytest.mark.parametrize(
    ("provider", "option", "traces"),
    [("sdk", "on", "True"), ("sdk", "off", "False"), ("none", "on", "False")],
)
def test_a_backend_traces_when_a_global_provider_is_set_first_unless_tracing_is_off(
    provider: str, option: str, traces: str
) -> None:
    # The global provider can be set once per process: each case runs in a process of its own.
    env = {"PYTHONPATH": f"{ROOT / 'backend'}:{ROOT}", "DJANGO_SETTINGS_MODULE": ""}
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            "import django.conf; django.conf.settings.configure()\n" + AUTO_DETECT,
            provider,
            option,
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == traces


def test_a_send_that_redis_refuses_is_an_error_span(
    make_backend: BackendFactory, closed_port: int, traced: TracedSpans
) -> None:
    b = make_backend(URL=f"redis://127.0.0.1:{closed_port}/0", CONNECT_TIMEOUT=0.5, SOCKET_TIMEOUT=0.5)
    b.tracing = tracing_for(traced.provider)
    with pytest.raises(RedisUnavailable):
        b.enqueue(tasks.noop_task, (), {})

    (send,) = traced.finished("send")
    assert send.status.status_code is StatusCode.ERROR
    assert [e.attributes["exception.type"] for e in send.events] == ["conveyor.exceptions.RedisUnavailable"]
