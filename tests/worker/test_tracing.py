"""Tracing in the worker: a process span per attempt, a child of the send span its record carries."""

from __future__ import annotations

import sys
from typing import Any

import pytest
from conveyor.tracing import tracing_for
from django.test import override_settings
from opentelemetry.trace import SpanKind, StatusCode

from tests import tasks
from tests.conftest import TracedSpans, tasks_setting

from . import worker_tasks
from .conftest import BatchRunner, good_record, plant, real_backend, wait_finished


def trace_with(traced: TracedSpans) -> None:
    """Make the default backend (and so the workers built after this) trace to the test's provider."""
    real_backend().tracing = tracing_for(traced.provider)


def ids_of(span: Any) -> list[str]:
    ctx = span.context
    return [f"{ctx.trace_id:032x}", f"{ctx.span_id:016x}"]


@pytest.mark.parametrize(
    "task", [worker_tasks.current_span_ids, worker_tasks.async_current_span_ids], ids=["sync", "async"]
)
def test_an_attempt_runs_in_a_process_span_whose_parent_is_the_send_span(
    backend: object, traced: TracedSpans, run_batch: BatchRunner, task: Any
) -> None:
    trace_with(traced)
    with traced.provider.get_tracer("test").start_as_current_span("request"):
        result = task.enqueue()
    handle = run_batch()

    (send,) = traced.finished("send")
    (process,) = traced.finished("process")
    assert process.name == "process default"
    assert process.kind is SpanKind.CONSUMER
    assert process.context.trace_id == send.context.trace_id
    assert process.parent is not None
    assert process.parent.span_id == send.context.span_id
    assert dict(process.attributes) == {
        "messaging.system": "conveyor",
        "messaging.operation.type": "process",
        "messaging.operation.name": "process",
        "messaging.destination.name": "default",
        "messaging.message.id": result.id,
        "messaging.client.id": handle.worker_id,
        "conveyor.task.path": task.module_path,
        "conveyor.task.priority": 0,
        "conveyor.attempt": 1,
        "conveyor.outcome": "succeeded",
    }
    assert process.status.status_code is StatusCode.UNSET
    assert process.events == ()
    # The task's own spans would be children of the process span: it is the current one inside.
    assert wait_finished(real_backend(), result.id).return_value == ids_of(process)


def test_each_attempt_is_a_span_of_its_own_and_a_failure_records_its_exception(
    backend: object, traced: TracedSpans, run_batch: BatchRunner
) -> None:
    trace_with(traced)
    result = tasks.always_fails.enqueue()  # two attempts, no backoff
    run_batch()
    assert wait_finished(real_backend(), result.id).status == "FAILED"

    (send,) = traced.finished("send")
    attempts = sorted(traced.finished("process"), key=lambda s: s.attributes["conveyor.attempt"])
    assert [s.attributes["conveyor.attempt"] for s in attempts] == [1, 2]
    assert [s.attributes["conveyor.outcome"] for s in attempts] == ["retry", "failed"]
    for span in attempts:
        assert span.parent is not None
        assert span.parent.span_id == send.context.span_id
        assert span.status.status_code is StatusCode.ERROR
        assert span.status.description == "always"
        assert span.attributes["error.type"] == "builtins.RuntimeError"
        (event,) = span.events
        assert event.name == "exception"
        assert event.attributes["exception.type"] == "RuntimeError"
        assert event.attributes["exception.message"] == "always"
        assert "raise RuntimeError" in event.attributes["exception.stacktrace"]
    assert attempts[0].context.span_id != attempts[1].context.span_id


def test_a_timed_out_attempt_ends_its_span_with_the_timeout(
    backend: object, traced: TracedSpans, run_batch: BatchRunner
) -> None:
    trace_with(traced)
    result = tasks.sleeps_past_timeout.enqueue(1.0)  # timeout 0.5 s: the watchdog stops it
    run_batch()
    assert wait_finished(real_backend(), result.id).status == "FAILED"

    (process,) = traced.finished("process")
    assert process.status.status_code is StatusCode.ERROR
    assert process.attributes["error.type"] == "conveyor.exceptions.TaskTimeout"
    assert process.attributes["conveyor.outcome"] == "failed"
    assert [e.name for e in process.events] == ["exception"]


def test_a_record_without_a_trace_field_is_processed_in_a_trace_of_its_own(
    backend: object, traced: TracedSpans, run_batch: BatchRunner
) -> None:
    trace_with(traced)
    planted = plant(real_backend(), good_record())  # as an older conveyor wrote it
    run_batch()
    assert wait_finished(real_backend(), planted).status == "SUCCESSFUL"

    (process,) = traced.finished("process")
    assert process.parent is None
    assert process.attributes["messaging.message.id"] == planted


def test_without_opentelemetry_installed_the_worker_runs_traced_records(
    backend: object,
    traced: TracedSpans,
    run_batch: BatchRunner,
    redis_url: str,
    prefix: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Given a record enqueued with tracing on (it carries a trace field)
    trace_with(traced)
    result = tasks.noop_task.enqueue()
    assert real_backend().store.call(lambda c: c.hexists(real_backend().keys.task(result.id), "trace"))
    # When opentelemetry cannot be imported and a fresh backend and worker run it
    monkeypatch.setitem(sys.modules, "opentelemetry", None)
    with override_settings(TASKS=tasks_setting(redis_url, prefix)):
        fresh = real_backend()
        assert fresh.tracing is None
        run_batch()
        # Then it runs as it always did
        assert wait_finished(fresh, result.id).status == "SUCCESSFUL"
        fresh.store.close()
    assert traced.finished("process") == []
