"""The record's optional trace field: written by codec.encode_trace, read back without ever raising."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from conveyor import codec

WHEN = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
PARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


def record(**extra: str) -> dict[bytes, bytes]:
    """Return a freshly enqueued record as Redis returns it, with extra fields."""
    fields = codec.new_record(
        task_path="tests.tasks.noop_task",
        queue="default",
        priority=0,
        backend="default",
        run_after=None,
        args_json="[]",
        kwargs_json="{}",
        enqueued_at=WHEN,
    )
    fields.update(extra)
    return {k.encode(): v.encode() for k, v in fields.items()}


def test_a_carrier_round_trips() -> None:
    carrier = {"traceparent": PARENT, "tracestate": "vendor=1"}
    raw = record(trace=codec.encode_trace(carrier))
    assert codec.trace_carrier(raw) == carrier


def test_records_with_and_without_the_field_decode_alike() -> None:
    old, new = record(), record(trace=codec.encode_trace({"traceparent": PARENT}))
    assert codec.trace_carrier(old) is None
    assert codec.decode("a", old) == codec.decode("a", new)
    assert codec._decode_checked("a", new) == codec.decode("a", new)


@pytest.mark.parametrize(
    "text",
    [
        b"",
        b"not json",
        b"[1, 2]",
        b'"00-..."',
        b'{"traceparent": 5}',
        b"\xff\xfe",
        b"[" * 900 + b"]" * 900,
        b'{"traceparent": "' + b"x" * 2000 + b'"}',
    ],
    ids=["empty", "not-json", "list", "string", "number-value", "not-utf8", "deep", "too-long"],
)
def test_an_unreadable_trace_field_is_no_context(text: bytes) -> None:
    raw = record()
    raw[b"trace"] = text
    assert codec.trace_carrier(raw) is None
