"""OpenTelemetry spans for enqueue and for each attempt, with the [otel] extra; nothing when it is off.

A backend holds a Tracing only when opentelemetry imports and a tracer provider is configured
(tracing_for()); otherwise it holds None and the hot paths test that one attribute. Span
names and attributes follow OpenTelemetry's messaging conventions (docs/tracing.md).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from . import codec

INSTRUMENTATION = "conveyor"
# messaging.system has no well-known value for a Redis-backed task queue; "redis" names a
# database client (db.system.name) elsewhere in the conventions, so conveyor names itself.
SYSTEM = "conveyor"
# One trace context form for every producer and consumer, whatever OTEL_PROPAGATORS says: the
# record is conveyor's own envelope, read only by conveyor's worker.
TRACEPARENT = "traceparent"


class Tracing:
    """Start conveyor's send and process spans on one tracer; build with tracing_for()."""

    def __init__(self, provider: Any) -> None:
        from opentelemetry import context, trace
        from opentelemetry.context import Context
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        self._trace = trace
        self._context = context
        self._empty = Context
        self._tracer = provider.get_tracer(INSTRUMENTATION)
        self._propagator = TraceContextTextMapPropagator()

    # -- producer --------------------------------------------------------------------

    @contextmanager
    def send(
        self,
        *,
        queue: str,
        task_path: str,
        priority: int,
        fields: dict[str, str],
        task_id: str | None,
        count: int,
    ) -> Iterator[Any]:
        """Open the PRODUCER span "send <queue>" and write its context into a record's fields.

        fields are one task's, or the fields every task of a bulk enqueue shares; task_id names
        the single message sent, a bulk send gives None and its message count.
        """
        attributes: dict[str, Any] = {
            "messaging.system": SYSTEM,
            "messaging.operation.type": "send",
            "messaging.operation.name": "send",
            "messaging.destination.name": queue,
            "conveyor.task.path": task_path,
            "conveyor.task.priority": priority,
        }
        if task_id is not None:
            attributes["messaging.message.id"] = task_id
        else:
            attributes["messaging.batch.message_count"] = count
        with self._tracer.start_as_current_span(
            f"send {queue}", kind=self._trace.SpanKind.PRODUCER, attributes=attributes
        ) as span:
            carrier: dict[str, str] = {}
            self._propagator.inject(carrier)
            if (
                TRACEPARENT in carrier
            ):  # an unsampled span propagates too (its process spans are dropped alike)
                fields[codec.TRACE_FIELD] = codec.encode_trace(carrier)
            yield span

    # -- consumer --------------------------------------------------------------------

    def process(
        self,
        *,
        queue: str,
        task_id: str,
        task_path: str,
        priority: int,
        attempt: int,
        worker_id: str | None,
        carrier: Mapping[str, str] | None,
    ) -> Any:
        """Start the CONSUMER span "process <queue>" of one attempt, a child of the send span it carries."""
        parent = self._propagator.extract(carrier) if carrier else self._empty()
        attributes: dict[str, Any] = {
            "messaging.system": SYSTEM,
            "messaging.operation.type": "process",
            "messaging.operation.name": "process",
            "messaging.destination.name": queue,
            "messaging.message.id": task_id,
            "conveyor.task.path": task_path,
            "conveyor.task.priority": priority,
            "conveyor.attempt": attempt,
        }
        if worker_id:
            attributes["messaging.client.id"] = worker_id
        return self._tracer.start_span(
            f"process {queue}", context=parent, kind=self._trace.SpanKind.CONSUMER, attributes=attributes
        )

    def attach(self, span: Any) -> object:
        """Make span the current one (the task's own spans are its children); return the token to detach."""
        return self._context.attach(self._trace.set_span_in_context(span))

    def detach(self, token: Any) -> None:
        """Restore the context attach() replaced (the span itself ends with the attempt's outcome)."""
        self._context.detach(token)

    def end(self, span: Any, outcome: str, exc: BaseException | None) -> None:
        """End an attempt's span: its outcome, and for a failure the exception event and ERROR status."""
        span.set_attribute("conveyor.outcome", outcome)
        if exc is not None:
            cls = type(exc)
            span.set_attribute("error.type", f"{cls.__module__}.{cls.__qualname__}")
            span.record_exception(exc)
            span.set_status(self._trace.Status(self._trace.StatusCode.ERROR, str(exc)[:1024] or cls.__name__))
        span.end()


def tracing_for(provider: Any = None) -> Tracing | None:
    """Return a Tracing on provider (default: the global one); None without opentelemetry or a provider."""
    try:
        from opentelemetry import trace
    except ImportError:
        return None
    if provider is None:
        provider = trace.get_tracer_provider()
        # The API's default stands in until an SDK (or another implementation) is set; spans
        # from it record nothing, so they are not made at all.
        if isinstance(provider, (trace.ProxyTracerProvider, trace.NoOpTracerProvider)):
            return None
    return Tracing(provider)
