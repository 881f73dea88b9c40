"""Set up an OpenTelemetry SDK tracer provider whose spans are batched and dropped, for --tracing sdk.

Run as a script it sets the provider up and then runs conveyor-worker with the arguments given,
so the worker's spans cost what they would with an exporter, less the export itself.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any


def install() -> None:
    """Set the global tracer provider: the SDK with a batch processor feeding an exporter that drops."""
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

    class Drop(SpanExporter):
        """Accept every batch of spans and keep nothing."""

        def export(self, spans: Sequence[Any]) -> SpanExportResult:
            return SpanExportResult.SUCCESS

    provider = TracerProvider()
    provider.add_span_processor(BatchSpanProcessor(Drop()))
    trace.set_tracer_provider(provider)


if __name__ == "__main__":
    install()
    from conveyor_worker.__main__ import main

    sys.exit(main(sys.argv[1:]))
