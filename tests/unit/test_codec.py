"""codec: exact timestamps, payload encoding limits, and CorruptRecord for anything unreadable."""

from __future__ import annotations

import json
import math
import random
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone
from types import MappingProxyType
from typing import Any

import pytest
from conveyor import codec
from conveyor.exceptions import CorruptRecord, PayloadTooLarge
from django.tasks import TaskResult, TaskResultStatus

from tests import tasks

ENQUEUED_AT = datetime(2026, 5, 17, 8, 30, 15, 123456, tzinfo=UTC)


def record_fields(**overrides: Any) -> dict[bytes, bytes]:
    """Return a fresh record's hash as Redis hands it back (bytes), with some fields replaced or dropped."""
    fields: dict[str, Any] = codec.new_record(
        task_path="tests.tasks.noop_task",
        queue="default",
        priority=5,
        backend="default",
        run_after=None,
        args_json="[1]",
        kwargs_json='{"a":"b"}',
        enqueued_at=ENQUEUED_AT,
    )
    fields.update(overrides)
    return {
        k.encode(): v if isinstance(v, bytes) else str(v).encode() for k, v in fields.items() if v is not None
    }


# -- timestamps -----------------------------------------------------------------


@pytest.mark.parametrize(
    "moment",
    [
        codec.EPOCH,
        ENQUEUED_AT,
        datetime(1969, 12, 31, 23, 59, 59, 999999, tzinfo=UTC),
        datetime(1, 1, 1, tzinfo=UTC),
        datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC),
        datetime(2026, 3, 29, 1, 59, 59, 1, tzinfo=timezone(timedelta(hours=5, minutes=45))),
        datetime(2026, 10, 25, 2, 30, 0, 7, tzinfo=timezone(timedelta(hours=-9, minutes=-30))),
    ],
)
def test_micros_round_trip_is_exact(moment: datetime) -> None:
    """Turn an aware datetime into epoch microseconds and back without losing a microsecond."""
    back = codec.from_micros(codec.to_micros(moment))

    assert back == moment
    assert back.tzinfo is UTC
    assert back.microsecond == moment.astimezone(UTC).microsecond


def test_micros_round_trip_on_many_random_moments() -> None:
    """Round-trip a thousand random microsecond-precise moments exactly (no float arithmetic)."""
    rng = random.Random(7)
    for _ in range(1000):
        micros = rng.randint(-(10**16), 10**17)
        assert codec.to_micros(codec.from_micros(micros)) == micros


def test_micros_are_integers_since_the_epoch() -> None:
    """Count whole microseconds since 1970-01-01T00:00:00Z."""
    assert codec.to_micros(codec.EPOCH + timedelta(seconds=1, microseconds=1)) == 1_000_001
    assert codec.to_micros(codec.EPOCH - timedelta(microseconds=1)) == -1


def test_naive_datetime_is_read_as_local_time() -> None:
    """Read a naive datetime as local time, the way datetime.astimezone() does."""
    naive = datetime(2026, 1, 2, 3, 4, 5, 678901)

    assert codec.to_micros(naive) == codec.to_micros(naive.astimezone())


# -- payloads -------------------------------------------------------------------


def test_payload_is_compact_utf8_json() -> None:
    """Encode args and kwargs as compact JSON that keeps non-ASCII text as UTF-8."""
    args_json, kwargs_json = codec.encode_payload([1, "é", None], {"k": [True, 2.5]}, 1000)

    assert args_json == '[1,"é",null]'
    assert kwargs_json == '{"k":[true,2.5]}'


def test_payload_limit_counts_encoded_bytes() -> None:
    """Allow exactly MAX_PAYLOAD_BYTES of UTF-8 and refuse one byte more."""
    args = ["é" * 10]
    exact = 24 + 2  # '["éé…"]' is 20 bytes of text plus 4, and '{}' is 2

    codec.encode_payload(args, {}, exact)
    with pytest.raises(PayloadTooLarge, match=f"{exact} bytes encoded, over MAX_PAYLOAD_BYTES={exact - 1}"):
        codec.encode_payload(args, {}, exact - 1)


def test_payload_too_large_is_a_value_error() -> None:
    """Let callers that catch ValueError catch PayloadTooLarge too."""
    with pytest.raises(ValueError, match="MAX_PAYLOAD_BYTES"):
        codec.encode_payload(["x" * 100], {}, 10)


@pytest.mark.parametrize(
    ("args", "kwargs"),
    [
        ([math.nan], {}),
        ([], {"x": math.inf}),
        ([[-math.inf]], {}),
        ([{1: "a"}], {}),
        ([], {"nested": {"ok": {2: "b"}}}),
        ([{True: 1}], {}),
        ([{None: 1}], {}),
        ([{1.5: 1}], {}),
        ([], {1: "top-level int key"}),
        ([], {"ok": 1, None: 2}),
        (["{"], {3: "a"}),
    ],
    ids=[
        "nan",
        "inf",
        "nested-inf",
        "int-key",
        "nested-int-key",
        "bool-key",
        "none-key",
        "float-key",
        "kwargs-int-key",
        "kwargs-none-key",
        "brace-in-args-and-int-key",
    ],
)
def test_values_json_cannot_round_trip_are_refused(args: list[Any], kwargs: dict[str, Any]) -> None:
    """Refuse NaN, infinities and non-string dict keys with TypeError instead of storing something else."""
    with pytest.raises(TypeError, match="Unsupported value in task arguments"):
        codec.encode_payload(args, kwargs, 10_000)


class Label(str):
    """A str subclass, as a dict key."""


@pytest.mark.parametrize(
    ("args", "kwargs"),
    [
        ([], {}),
        ([1, "two", None, True, 2.5, -0.0, 10**30], {"a": [1, [2, [3]]], "b": None}),
        (["{not a dict}"], {"k": "}{"}),
        ([], {"a{": 1, "b": "{"}),
        ([{"nested": {"deep": "x"}}], {"n": {"m": {}}}),
        ([], {Label("sub"): 1}),
    ],
    ids=["empty", "scalars", "braces-in-strings", "brace-in-key", "nested-dicts", "str-subclass-key"],
)
def test_storable_payloads_round_trip(args: list[Any], kwargs: dict[str, Any]) -> None:
    """Accept every JSON-safe payload, whether or not it takes the decode-and-compare path."""
    args_json, kwargs_json = codec.encode_payload(args, kwargs, 10_000)

    assert json.loads(args_json) == args
    assert json.loads(kwargs_json) == kwargs


# -- records --------------------------------------------------------------------


def test_new_record_holds_only_strings() -> None:
    """Write every field as a string and leave worker-written fields out."""
    run_after = ENQUEUED_AT + timedelta(hours=1)

    fields = codec.new_record(
        task_path="tests.tasks.noop_task",
        queue="q",
        priority=-3,
        backend="default",
        run_after=run_after,
        args_json="[]",
        kwargs_json="{}",
        enqueued_at=ENQUEUED_AT,
    )

    assert all(isinstance(v, str) for v in fields.values())
    assert fields["v"] == codec.VERSION
    assert fields["priority"] == "-3"
    assert fields["status"] == "READY"
    assert fields["run_after"] == str(codec.to_micros(run_after))
    assert not {"started_at", "finished_at", "worker_ids", "errors", "result", "deliveries"} & set(fields)


def test_decode_a_fresh_record() -> None:
    """Decode a just-enqueued record, supplying defaults for what no worker has written yet."""
    record = codec.decode("abc", record_fields())

    assert record.id == "abc"
    assert (record.task_path, record.queue, record.priority, record.backend) == (
        "tests.tasks.noop_task",
        "default",
        5,
        "default",
    )
    assert (record.args, record.kwargs) == ([1], {"a": "b"})
    assert record.status == "READY"
    assert record.enqueued_at == ENQUEUED_AT
    assert record.run_after is record.started_at is record.finished_at is record.last_attempted_at is None
    assert (record.worker_ids, record.errors, record.return_value, record.deliveries) == ((), (), None, 0)


def test_decode_accepts_str_keys_too() -> None:
    """Decode a hash given with str keys and values as well as bytes."""
    fields = {k.decode(): v.decode() for k, v in record_fields().items()}

    assert codec.decode("abc", fields) == codec.decode("abc", record_fields())


def test_decode_a_finished_record() -> None:
    """Decode what the worker writes: times, worker ids, errors, the result, deliveries."""
    started = ENQUEUED_AT + timedelta(seconds=1)
    errors = [{"exception_class_path": "builtins.ValueError", "traceback": "Traceback...\nValueError: x\n"}]
    fields = record_fields(
        status="SUCCESSFUL",
        started_at=codec.to_micros(started),
        last_attempted_at=codec.to_micros(started),
        finished_at=codec.to_micros(started + timedelta(microseconds=1)),
        worker_ids='["w1","w2"]',
        errors=json.dumps(errors),
        result='{"answer":[42]}',
        deliveries="2",
    )

    record = codec.decode("abc", fields)
    result = codec.to_task_result(record, tasks.noop_task)

    assert record.finished_at == started + timedelta(microseconds=1)
    assert record.errors == (
        codec.ErrorRecord(exception_class_path="builtins.ValueError", traceback=errors[0]["traceback"]),
    )
    assert record.deliveries == 2
    assert result.status == TaskResultStatus.SUCCESSFUL
    assert result.return_value == {"answer": [42]}
    assert result.worker_ids == ["w1", "w2"]
    assert result.attempts == 2
    assert result.errors[0].exception_class is ValueError
    assert result.task is tasks.noop_task


def test_encode_errors_round_trips_through_decode() -> None:
    """Encode error records so decode() reads back the same ones."""
    errors = (codec.ErrorRecord(exception_class_path="a.B", traceback='line "quoted"\n\ttab é\n'),)

    record = codec.decode("abc", record_fields(errors=codec.encode_errors(errors)))

    assert record.errors == errors


@pytest.mark.parametrize(
    "overrides",
    [
        {"v": None},
        {"v": "2"},
        {"v": ""},
        {"task": None},
        {"queue": None},
        {"priority": None},
        {"priority": "high"},
        {"priority": "1.5"},
        {"backend": None},
        {"status": None},
        {"status": "DONE"},
        {"status": "ready"},
        {"args": None},
        {"args": "[1"},
        {"args": '{"a":1}'},
        {"kwargs": "[]"},
        {"kwargs": "nul"},
        {"enqueued_at": "yesterday"},
        {"enqueued_at": "1.5"},
        {"enqueued_at": str(10**30)},
        {"started_at": str(-(10**30))},
        {"worker_ids": "w1"},
        {"worker_ids": '{"a":1}'},
        {"errors": "[1]"},
        {"errors": "{}"},
        {"result": "{"},
        {"deliveries": "many"},
        {"task": b"\xff\xfe"},
        {"args": b"[\xff]"},
    ],
    ids=lambda o: "-".join(f"{k}={v!r}"[:30] for k, v in o.items()),
)
def test_unreadable_records_raise_corrupt_record(overrides: dict[str, Any]) -> None:
    """Raise CorruptRecord, and only CorruptRecord, for a missing, unknown or malformed field."""
    with pytest.raises(CorruptRecord):
        codec.decode("abc", record_fields(**overrides))


def test_empty_hash_is_corrupt() -> None:
    """Raise CorruptRecord for an empty hash (the version field is missing)."""
    with pytest.raises(CorruptRecord, match="'v' is missing"):
        codec.decode("abc", {})


def test_dumps_refuses_nan() -> None:
    """Refuse NaN at the lowest level too."""
    with pytest.raises(ValueError, match="not JSON compliant"):
        codec.dumps(math.nan)


# -- the worker's decoding path ---------------------------------------------------
# decode() reads a hash as Redis returns it without decoding every field first, and hands
# anything it cannot vouch for to the field-by-field decoder that names the problem. The
# two must agree on every record: the same TaskRecord, or the same CorruptRecord.

STARTED_AT = ENQUEUED_AT + timedelta(milliseconds=3)


def claimed_fields(**overrides: Any) -> dict[bytes, bytes]:
    """Return a record as claim.lua leaves it (RUNNING, with owner and score), with some fields replaced."""
    started = codec.to_micros(STARTED_AT)
    claimed: dict[str, Any] = {
        "status": "RUNNING",
        "started_at": started,
        "last_attempted_at": started,
        "worker_ids": '["w"]',
        "owner": "w",
        "deliveries": "1",
        "score": str(codec.ready_score(0, 17)),
        "args": "[]",
        "kwargs": "{}",
    }
    return record_fields(**(claimed | overrides))


PLAIN_RECORDS: dict[str, dict[str, Any]] = {
    "claimed": {},
    "fresh": {"status": "READY", "started_at": None, "last_attempted_at": None, "worker_ids": None},
    "with arguments": {"args": '[1,"two",null,2.5,[true]]', "kwargs": '{"a":{"b":[]}}'},
    "non-ascii arguments": {"args": '["é","日本"]', "kwargs": '{"ключ":"значение"}'},
    "spaces inside json": {"args": "[1, 2]", "kwargs": '{"a": 1}', "worker_ids": '["a", "b"]'},
    "retried": {
        "worker_ids": '["w1","w2"]',
        "errors": codec.encode_errors([codec.ErrorRecord(exception_class_path="a.B", traceback="tb é\n")]),
        "deliveries": "2",
        "last_attempted_at": codec.to_micros(STARTED_AT + timedelta(seconds=5)),
    },
    "error entry without keys": {"errors": '[{},{"traceback":7}]'},
    "empty errors with a space": {"errors": "[ ]"},
    "empty optional fields": {
        "errors": "",
        "worker_ids": "",
        "result": "",
        "deliveries": "",
        "run_after": "",
    },
    "finished": {"status": "SUCCESSFUL", "finished_at": codec.to_micros(STARTED_AT), "result": '{"a":[1]}'},
    "null result": {"status": "SUCCESSFUL", "result": "null"},
    "failed": {"status": "FAILED", "result": "-0.5"},
    "non-string worker ids": {"worker_ids": '[1,null,"w"]'},
    "run after": {"run_after": codec.to_micros(ENQUEUED_AT + timedelta(days=1))},
    "empty task text": {"task": "", "queue": ""},
    "spaced integers": {"priority": " -7 ", "deliveries": "+3", "enqueued_at": "1_000"},
    "earliest and latest moments": {
        "enqueued_at": codec.to_micros(datetime(1, 1, 1, tzinfo=UTC)),
        "started_at": codec.to_micros(datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC)),
        "last_attempted_at": -1,
    },
    "fields nobody reads": {"owner": "wörker", "future_field": "x"},
}


@pytest.mark.parametrize("overrides", PLAIN_RECORDS.values(), ids=PLAIN_RECORDS.keys())
def test_plain_records_decode_without_the_checked_path(overrides: dict[str, Any]) -> None:
    """Decode well-formed records on the cheap path, to exactly what the checked path returns."""
    fields = claimed_fields(**overrides)

    plain = codec._decode_plain("abc", fields)

    assert plain is not None
    assert plain == codec._decode_checked("abc", fields) == codec.decode("abc", fields)
    assert type(plain.errors) is tuple
    assert type(plain.worker_ids) is tuple
    for moment in (plain.run_after, plain.enqueued_at, plain.started_at, plain.last_attempted_at):
        assert moment is None or moment.tzinfo is UTC


DEFERRED_RECORDS: dict[str, dict[Any, Any]] = {
    "leading space in args": claimed_fields(args=" [1]"),
    "trailing newline in kwargs": claimed_fields(kwargs='{"a":1}\n'),
    "spaces around worker ids": claimed_fields(worker_ids=' ["w"] '),
    "unicode digits in priority": claimed_fields(priority="٣".encode()),
    "str keys and values": {k.decode(): v.decode() for k, v in claimed_fields().items()},
    "int values": {**claimed_fields(), b"priority": 4, b"deliveries": 2},
    "mixed keys": {**claimed_fields(), "extra": "x"},
}


@pytest.mark.parametrize("fields", DEFERRED_RECORDS.values(), ids=DEFERRED_RECORDS.keys())
def test_unusual_but_valid_records_are_left_to_the_checked_path(fields: dict[Any, Any]) -> None:
    """Leave what the cheap path cannot vouch for to the checked path, which still decodes it."""
    assert codec._decode_plain("abc", fields) is None
    assert codec.decode("abc", fields) == codec._decode_checked("abc", fields)


CORRUPT: dict[str, tuple[dict[str, Any], str]] = {
    # name: (changes to a claimed record, None to drop a field; the CorruptRecord message)
    "no version": ({"v": None}, "field 'v' is missing"),
    "unknown version": ({"v": "99"}, "unknown record version '99'"),
    "no status": ({"status": None}, "field 'status' is missing"),
    "unknown status": ({"status": "DONE"}, "unknown status 'DONE'"),
    "no task": ({"task": None}, "field 'task' is missing"),
    "no queue": ({"queue": None}, "field 'queue' is missing"),
    "no priority": ({"priority": None}, "field 'priority' is missing"),
    "priority not a number": ({"priority": "high"}, "record 'abc' cannot be decoded: invalid literal"),
    "no backend": ({"backend": None}, "field 'backend' is missing"),
    "no args": ({"args": None}, "field 'args' is missing"),
    "empty args": ({"args": ""}, "field 'args' is not valid JSON"),
    "args not a list": ({"args": '{"a":1}'}, "field 'args' is not a JSON list"),
    "args with trailing data": ({"args": "[1] [2]"}, "field 'args' is not valid JSON"),
    "no kwargs": ({"kwargs": None}, "field 'kwargs' is missing"),
    "kwargs not a dict": ({"kwargs": "[]"}, "field 'kwargs' is not a JSON dict"),
    "worker ids not a list": ({"worker_ids": "null"}, "field 'worker_ids' is not a JSON list"),
    "errors an empty object": ({"errors": "{}"}, "field 'errors' is not a JSON list"),
    "errors zero": ({"errors": "0"}, "field 'errors' is not a JSON list"),
    "error entry not an object": ({"errors": '[{"traceback":"x"},"y"]'}, "an error entry is not an object"),
    "result not json": ({"result": "{"}, "record 'abc' cannot be decoded: Expecting"),
    "deliveries not a number": ({"deliveries": "2.0"}, "record 'abc' cannot be decoded"),
    "enqueued at not a number": ({"enqueued_at": "now"}, "field 'enqueued_at' is not a timestamp"),
    "started before year 1": (
        {"started_at": codec.to_micros(datetime(1, 1, 1, tzinfo=UTC)) - 1},
        "field 'started_at' is not a timestamp",
    ),
    "last attempt after year 9999": (
        {"last_attempted_at": codec.to_micros(datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC)) + 1},
        "field 'last_attempted_at' is not a timestamp",
    ),
    "finished at overflows": ({"finished_at": str(10**30)}, "field 'finished_at' is not a timestamp"),
    "run after overflows": ({"run_after": str(-(10**30))}, "field 'run_after' is not a timestamp"),
    "task not utf-8": ({"task": b"\xff\xfe"}, "record 'abc' cannot be decoded: 'utf-8' codec"),
    "truncated utf-8 in args": ({"args": '["é"]'.encode()[:-3]}, "cannot be decoded: 'utf-8' codec"),
    "unread field not utf-8": ({"owner": b"w\xff"}, "cannot be decoded: 'utf-8' codec"),
    # With several faults, the first in the checked order is the one named.
    "status and version wrong": ({"status": "DONE", "v": "2"}, "unknown record version '2'"),
    "priority and backend wrong": ({"priority": "x", "backend": None}, "cannot be decoded"),
    "errors and task wrong": ({"errors": "[1]", "task": None}, "an error entry is not an object"),
}


@pytest.mark.parametrize(("overrides", "message"), CORRUPT.values(), ids=CORRUPT.keys())
def test_corrupt_records_are_named_by_the_checked_path(overrides: dict[str, Any], message: str) -> None:
    """Leave every corrupt record to the checked path, which raises CorruptRecord naming the fault."""
    fields = claimed_fields(**overrides)

    assert codec._decode_plain("abc", fields) is None
    with pytest.raises(CorruptRecord) as raised:
        codec.decode("abc", fields)
    assert message in str(raised.value)


def test_a_key_that_is_not_utf8_is_corrupt() -> None:
    """Refuse a hash whose field name is not UTF-8, although no field of that name is read."""
    fields = {**claimed_fields(), b"\xffowner": b"w"}

    assert codec._decode_plain("abc", fields) is None
    with pytest.raises(CorruptRecord, match="cannot be decoded"):
        codec.decode("abc", fields)


@pytest.mark.parametrize(
    "extra",
    [{b"x": b"w\xc3", b"y": b"\xa9"}, {b"a\xc3": b"1", b"\xa9b": b"2"}],
    ids=["values", "keys"],
)
def test_halves_of_a_character_in_neighbouring_fields_are_corrupt(extra: dict[bytes, bytes]) -> None:
    """Refuse two fields that are each not UTF-8, though together they would spell 'é'."""
    fields = {**claimed_fields(args='["é"]'), **extra}

    assert codec._decode_plain("abc", fields) is None
    with pytest.raises(CorruptRecord, match="cannot be decoded: 'utf-8' codec"):
        codec.decode("abc", fields)


def test_decoded_lists_are_fresh_for_every_record() -> None:
    """Give every record its own args and kwargs, even where the stored text is '[]' and '{}'."""
    first, second = codec.decode("a", claimed_fields()), codec.decode("b", claimed_fields())

    first.args.append(1)
    first.kwargs["k"] = 1

    assert (second.args, second.kwargs) == ([], {})


def test_timestamps_are_exact_aware_utc() -> None:
    """Decode the claim's timestamps to the microsecond, as aware UTC datetimes."""
    attempted = STARTED_AT + timedelta(microseconds=1)

    record = codec.decode("abc", claimed_fields(last_attempted_at=codec.to_micros(attempted)))

    assert (record.enqueued_at, record.started_at, record.last_attempted_at) == (
        ENQUEUED_AT,
        STARTED_AT,
        attempted,
    )
    assert record.started_at is not None
    assert record.started_at.tzinfo is UTC
    assert record.started_at.microsecond == STARTED_AT.microsecond


def test_claimed_record_becomes_a_running_task_result() -> None:
    """Build the TaskResult the worker runs from a claimed record."""
    record = codec.decode("abc", claimed_fields(args='[1,"x"]', kwargs='{"k":[2]}'))

    result = codec.to_task_result(record, tasks.noop_task)

    assert result.status is TaskResultStatus.RUNNING
    assert (result.id, result.backend, result.task) == ("abc", "default", tasks.noop_task)
    assert (result.args, result.kwargs) == ([1, "x"], {"k": [2]})
    assert (result.enqueued_at, result.started_at, result.last_attempted_at) == (
        ENQUEUED_AT,
        STARTED_AT,
        STARTED_AT,
    )
    assert result.finished_at is None
    assert (result.errors, result.worker_ids, result.attempts) == ([], ["w"], 1)
    with pytest.raises(ValueError, match="not finished yet"):
        _ = result.return_value


@pytest.mark.parametrize(("text", "value"), [("null", None), ("0", 0), ('""', ""), ("[]", [])])
def test_falsy_return_values_survive(text: str, value: Any) -> None:
    """Keep a successful task's falsy return value, None included."""
    record = codec.decode("abc", claimed_fields(status="SUCCESSFUL", result=text))

    assert codec.to_task_result(record, tasks.noop_task).return_value == value


# -- nesting ----------------------------------------------------------------------
# Parsing and normalising JSON recurse once per level, so a value nested 100,000 deep raises
# RecursionError wherever it is read. Arguments and return values nested deeper than
# MAX_NESTING are refused when written; a stored field nested deeper than any MAX_NESTING
# allows is a CorruptRecord, found by counting brackets instead of recursing.

CEILING = 256  # the largest MAX_NESTING; a field may hold its own list or dict around that


def nested_list(depth: int) -> list[Any]:
    """Return a list nested depth levels deep ([] is one level), built without recursion."""
    value: list[Any] = []
    for _ in range(depth - 1):
        value = [value]
    return value


def nested_tuple(depth: int) -> tuple[Any, ...]:
    """Return a tuple nested depth levels deep ((1,) is one level), built without recursion."""
    value: tuple[Any, ...] = (1,)
    for _ in range(depth - 1):
        value = (value,)
    return value


def nested_dict(depth: int) -> dict[str, Any]:
    """Return a dict nested depth levels deep ({} is one level), built without recursion."""
    value: dict[str, Any] = {}
    for _ in range(depth - 1):
        value = {"k": value}
    return value


def nested_list_text(depth: int) -> str:
    """Return JSON text of a list nested depth levels deep."""
    return "[" * depth + "]" * depth


def nested_dict_text(depth: int) -> str:
    """Return JSON text of an object nested depth levels deep."""
    return '{"k":' * (depth - 1) + "{}" + "}" * (depth - 1)


def test_max_nesting_defaults_to_the_documented_option() -> None:
    """Allow 64 levels by default, and refuse a MAX_NESTING above what the codec can read back."""
    from conveyor import options

    assert options.DEFAULT_MAX_NESTING == 64
    assert options.MAX_NESTING_CEILING == CEILING


@pytest.mark.parametrize(
    ("args", "kwargs"),
    [
        ([nested_list(3)], {}),
        ([], {"k": nested_dict(3)}),
        ([1, [2, [3]], "[[[[[[", {"a": [{"b": 1}]}], {"x": "{{{{{{"}),
    ],
    ids=["list", "dict", "mixed-and-brackets-in-strings"],
)
def test_arguments_nested_up_to_max_nesting_are_stored(args: list[Any], kwargs: dict[str, Any]) -> None:
    """Store arguments whose values nest exactly MAX_NESTING levels (the args list itself not counted)."""
    args_json, kwargs_json = codec.encode_payload(args, kwargs, 10_000, max_nesting=3)

    assert (json.loads(args_json), json.loads(kwargs_json)) == (args, kwargs)


@pytest.mark.parametrize(
    ("args", "kwargs"),
    [
        ([nested_list(4)], {}),
        ([], {"k": nested_dict(4)}),
        ([1, "x", [[{"a": [1]}]]], {}),
        ([], {"ok": 1, "k": [{"a": {"b": []}}]}),
    ],
    ids=["list", "dict", "dict-in-lists", "lists-in-dicts"],
)
def test_arguments_nested_deeper_than_max_nesting_are_refused(
    args: list[Any], kwargs: dict[str, Any]
) -> None:
    """Refuse an argument nested one level deeper than MAX_NESTING with a TypeError saying so."""
    with pytest.raises(TypeError, match=r"^Task arguments are nested deeper than MAX_NESTING=3\."):
        codec.encode_payload(args, kwargs, 10_000, max_nesting=3)


@pytest.mark.parametrize("depth", [65, 1_500, 100_000])
def test_deep_arguments_are_refused_without_recursing(depth: int) -> None:
    """Refuse deep arguments under the default MAX_NESTING with TypeError, never RecursionError."""
    with pytest.raises(TypeError, match="nested deeper than MAX_NESTING=64"):
        codec.encode_payload([nested_list(depth)], {}, 10**7)
    with pytest.raises(TypeError, match="nested deeper than MAX_NESTING=64"):
        codec.encode_payload([], {"k": nested_dict(depth)}, 10**7)
    codec.encode_payload([nested_list(64)], {"k": nested_dict(64)}, 10**7)


def self_containing_list() -> list[Any]:
    """Return a list that contains itself (infinitely nested to a walker)."""
    loop: list[Any] = []
    loop.append(loop)
    return loop


@pytest.mark.parametrize(
    ("args", "kwargs"),
    [
        ((nested_list(4),), {}),
        ((nested_tuple(4),), {}),
        ((), {"k": nested_dict(4)}),
        ((MappingProxyType({"k": [[[]]]}),), {}),
        (({(((1,),),): 1},), {}),
        ((self_containing_list(),), {}),
        ((nested_list(100_000),), {}),
    ],
    ids=["list", "tuples", "dict", "mapping-proxy", "tuple-as-dict-key", "self-containing", "100000-deep"],
)
def test_raw_arguments_are_measured_before_django_normalises_them(
    args: tuple[Any, ...], kwargs: dict[str, Any]
) -> None:
    """Measure what Task.enqueue() hands over the way normalize_json() walks it, without recursing."""
    with pytest.raises(TypeError, match=r"^Task arguments are nested deeper than MAX_NESTING=3\."):
        codec.check_nesting(args, kwargs, 3)


@pytest.mark.parametrize(
    ("args", "kwargs"),
    [
        ((nested_list(3), nested_tuple(3)), {}),
        ((b"[[[[[[", "{{{{{{", 1, 2.5, None, True), {"k": ["[[[[[["]}),
        ((MappingProxyType({"k": [[]]}),), {"deep": {"a": {"b": 1}}}),
        ((), {}),
    ],
    ids=["at-the-limit", "scalars-and-text", "mappings", "empty"],
)
def test_raw_arguments_within_max_nesting_pass(args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    """Let arguments nested no deeper than MAX_NESTING through (text and bytes are not containers)."""
    codec.check_nesting(args, kwargs, 3)


@pytest.mark.parametrize("depth", [65, 1_500, 100_000])
def test_deep_return_values_are_refused_without_recursing(depth: int) -> None:
    """Refuse a return value deeper than MAX_NESTING with TypeError, which the worker records as a failure."""
    with pytest.raises(TypeError, match=r"^Task return value cannot be stored as JSON: .*MAX_NESTING=64"):
        codec.encode_return_value(nested_list(depth))
    with pytest.raises(TypeError, match="MAX_NESTING=64"):
        codec.encode_return_value({"k": nested_dict(depth)})


def test_return_values_up_to_max_nesting_are_stored() -> None:
    """Store a return value nested exactly MAX_NESTING levels, and refuse one level more."""
    value, text = codec.encode_return_value(nested_tuple(3), max_nesting=3)

    assert (value, text) == ([[[1]]], "[[[1]]]")
    assert codec.encode_return_value(nested_list(64))[1] == nested_list_text(64)
    with pytest.raises(TypeError, match="MAX_NESTING=2"):
        codec.encode_return_value(value, max_nesting=2)
    with pytest.raises(TypeError, match="MAX_NESTING=3"):
        codec.encode_return_value(self_containing_list(), max_nesting=3)


DEEP_FIELDS: dict[str, Callable[[int], str]] = {
    "args": nested_list_text,
    "kwargs": nested_dict_text,
    "result": nested_list_text,
    "errors": nested_list_text,
    "worker_ids": nested_list_text,
}


@pytest.mark.parametrize("depth", [CEILING + 2, 1_500, 100_000])
@pytest.mark.parametrize("name", DEEP_FIELDS)
def test_fields_nested_too_deep_are_corrupt(name: str, depth: int) -> None:
    """Raise CorruptRecord naming the field for JSON nested deeper than the codec ever writes."""
    fields = claimed_fields(**{name: DEEP_FIELDS[name](depth)})

    assert codec._decode_plain("abc", fields) is None
    with pytest.raises(CorruptRecord, match=f"field '{name}' is nested deeper than"):
        codec.decode("abc", fields)
    with pytest.raises(CorruptRecord, match=f"field '{name}' is nested deeper than"):
        codec.decode("abc", {k.decode(): v.decode() for k, v in fields.items()})


@pytest.mark.parametrize(
    "text",
    ["[" * 100_000, "[" * 100_000 + "]", '{"a":' * 100_000, "[" * 100_000 + '"' + "]" * 100_000],
    ids=["opened-only", "one-closed", "object-keys-only", "unterminated-string-inside"],
)
def test_malformed_deep_text_is_corrupt(text: str) -> None:
    """Refuse truncated deep text before the parser would recurse into it."""
    with pytest.raises(CorruptRecord, match="field 'args' is nested deeper than"):
        codec.decode("abc", claimed_fields(args=text))


def test_fields_nested_as_deep_as_the_codec_writes_decode() -> None:
    """Decode arguments and results nested as deep as the largest MAX_NESTING allows, on the cheap path."""
    fields = claimed_fields(
        args=f"[{nested_list_text(CEILING)}]",
        kwargs=f'{{"k":{nested_dict_text(CEILING)}}}',
        status="SUCCESSFUL",
        result=nested_list_text(CEILING),
    )

    plain = codec._decode_plain("abc", fields)
    result = codec.to_task_result(codec.decode("abc", fields), tasks.noop_task)

    assert plain is not None
    assert plain == codec._decode_checked("abc", fields)
    assert result.args == [nested_list(CEILING)]
    assert result.kwargs == {"k": nested_dict(CEILING)}
    assert result.return_value == nested_list(CEILING)


@pytest.mark.parametrize(
    "args",
    [
        '["' + "[" * 100_000 + '"]',
        '["\\"' + "[{" * 50_000 + '\\\\"]',
        '[{"' + "{" * 1_000 + '":"' + "[" * 1_000 + '"}]',
        json.dumps([[i, [str(i)]] for i in range(20_000)]),
    ],
    ids=["brackets-in-a-string", "after-an-escaped-quote", "in-keys-and-values", "long-but-shallow"],
)
def test_brackets_in_strings_and_long_shallow_fields_decode(args: str) -> None:
    """Count only brackets outside strings, so long text and long shallow lists still decode."""
    fields = claimed_fields(args=args)

    plain = codec._decode_plain("abc", fields)

    assert plain is not None
    assert plain.args == json.loads(args)
    assert plain == codec._decode_checked("abc", fields)


def test_pathological_strings_are_scanned_in_linear_time() -> None:
    """Scan a long run of escaped quotes after an unterminated string once, not once per quote."""
    text = "[" * CEILING + '"' + '\\"[' * 300_000

    with pytest.raises(CorruptRecord, match="field 'args' is not valid JSON"):
        codec.decode("abc", claimed_fields(args=text))


def structure_depth(value: Any) -> int:
    """Return how deep lists and dicts nest in a decoded JSON value, without recursing."""
    deepest, stack = 0, [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, (list, dict)):
            deepest = max(deepest, depth + 1)
            stack.extend((child, depth + 1) for child in (item.values() if isinstance(item, dict) else item))
    return deepest


def scanned_depth(text: str) -> int:
    """Return the deepest bracket level outside strings, char by char, up to where a parser must stop."""
    depth = deepest = 0
    in_string = escaped = False
    for char in text:
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char == "\\":
            break  # no JSON parser reads past a backslash outside a string
        elif char in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif char in "]}":
            depth -= 1
    return deepest


def random_value(rng: random.Random, depth: int) -> Any:
    """Return a random JSON value nested at most depth levels, with brackets, quotes and escapes in text."""
    alphabet = '[]{}"\\é \n,:ab'
    kind = rng.choice(["list", "dict", "text", "number"] if depth else ["text", "number"])
    if kind == "list":
        return [random_value(rng, depth - 1) for _ in range(rng.randint(0, 3))]
    if kind == "dict":
        keys = ("".join(rng.choices(alphabet, k=rng.randint(0, 4))) for _ in range(rng.randint(0, 3)))
        return {key: random_value(rng, depth - 1) for key in keys}
    if kind == "text":
        return "".join(rng.choices(alphabet, k=rng.randint(0, 12)))
    return rng.randint(-5, 10**6)


def test_bracket_count_matches_the_structure_of_random_json() -> None:
    """Measure random valid JSON (brackets, quotes, backslashes in its strings) exactly as deep as it is."""
    rng = random.Random(11)
    for _ in range(400):
        value = random_value(rng, rng.randint(1, 25))
        for text in (json.dumps(value), json.dumps(value, ensure_ascii=False, indent=rng.choice([None, 1]))):
            depth = structure_depth(value)
            for limit in {max(depth - 2, 0), max(depth - 1, 0), depth}:
                assert codec._text_deeper_than(text.encode(), limit) == (
                    depth > limit and len(text) > limit and text.count("[") + text.count("{") > limit
                ), (text, limit)


def test_bracket_count_never_misses_depth_in_random_text() -> None:
    """Never measure malformed text shallower than the brackets a parser could reach in it."""
    rng = random.Random(12)
    for _ in range(3000):
        text = "".join(rng.choices('[[[{{]]}}"\\a,é', k=rng.randint(0, 400)))
        for limit in (1, 3, 10, 40):
            if scanned_depth(text) > limit:
                assert codec._text_deeper_than(text.encode(), limit), (text, limit)


PLAIN_PAYLOADS: list[tuple[Any, Any]] = [
    ((), {}),
    ((1, "two"), {"three": [3, 4], "five": None}),
    ([1.5, -0.0, 10**30, True, False, None], {"é": "ünïcode ✓", "nested": {"a": [[1, 2], {"b": []}]}}),
    (("x" * 500,), {"deep": [[[[[[1]]]]]]}),
]


@pytest.mark.parametrize(("args", "kwargs"), PLAIN_PAYLOADS)
def test_plain_payload_fast_path_matches_the_checked_path(args: Any, kwargs: Any) -> None:
    from django.utils.json import normalize_json

    fast = codec.encode_plain_payload(args, kwargs, 1 << 20)

    assert fast is not None
    norm_args, norm_kwargs = normalize_json(args), normalize_json(kwargs)
    assert (fast[0], fast[1]) == (norm_args, norm_kwargs)
    assert type(fast[0]) is list and type(fast[1]) is dict
    assert (fast[2], fast[3]) == codec.encode_payload(norm_args, norm_kwargs, 1 << 20)


@pytest.mark.parametrize(
    ("args", "kwargs"),
    [
        ((b"bytes",), {}),
        ((MappingProxyType({"a": 1}),), {}),
        ((), {"d": {1: "int key"}}),
        ((range(3),), {}),
        ((datetime.now(UTC),), {}),
        ([[[[1]]]], {}),
    ],
)
def test_plain_payload_leaves_everything_else_to_the_checked_path(args: Any, kwargs: Any) -> None:
    assert codec.encode_plain_payload(args, kwargs, 1 << 20, max_nesting=2) is None


def test_plain_payload_refuses_nan_and_oversized_arguments() -> None:
    with pytest.raises(TypeError, match="Unsupported value"):
        codec.encode_plain_payload((math.nan,), {}, 1 << 20)
    with pytest.raises(PayloadTooLarge):
        codec.encode_plain_payload(("é" * 60,), {}, 100)  # 120 bytes of UTF-8, 60 characters


def test_ready_result_equals_the_constructed_one() -> None:
    moment = datetime(2026, 11, 30, tzinfo=UTC)
    built = codec.ready_result(tasks.noop_task, "an-id", moment, [1], {"a": 2}, "default")

    assert built == TaskResult(
        task=tasks.noop_task,
        id="an-id",
        status=TaskResultStatus.READY,
        enqueued_at=moment,
        started_at=None,
        finished_at=None,
        last_attempted_at=None,
        args=[1],
        kwargs={"a": 2},
        backend="default",
        errors=[],
        worker_ids=[],
    )
    assert codec._FAST_READY


def test_unique_digest_ignores_keyword_order_and_separates_keys_from_arguments() -> None:
    path = tasks.noop_task.module_path
    one = codec.unique_digest(path, "q", [1], {"a": 1, "b": 2})

    assert one == codec.unique_digest(path, "q", [1], {"b": 2, "a": 1})
    assert one != codec.unique_digest(path, "other", [1], {"a": 1, "b": 2})
    assert codec.unique_digest(path, "q", [], {}, "k") == codec.unique_digest(path, "other", [9], {}, "k")
    assert len(one) == 64
