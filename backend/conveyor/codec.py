"""The only place task records become bytes and back: JSON fields in a Redis hash, versioned."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from dataclasses import fields as dataclass_fields
from datetime import UTC, datetime, timedelta
from itertools import accumulate, chain
from typing import Any, Protocol

from django.tasks.base import Task, TaskError, TaskResult, TaskResultStatus
from django.utils.json import normalize_json

from .exceptions import CorruptRecord, PayloadTooLarge
from .options import DEFAULT_MAX_NESTING, MAX_NESTING_CEILING

VERSION = "1"
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
ONE_MICROSECOND = timedelta(microseconds=1)
STATUSES = frozenset({"READY", "RUNNING", "FAILED", "SUCCESSFUL"})
PRIORITY_STEP = 2**44  # ready scores of one priority step apart; the sequence stays below it


def ready_score(priority: int, seq: int) -> int:
    """Return a ready task's score: lowest first is highest priority, then oldest (as _lib.lua)."""
    return (100 - priority) * PRIORITY_STEP + seq


@dataclass(frozen=True, slots=True, kw_only=True)
class ErrorRecord:
    """One failed attempt: the exception's class path and its formatted traceback."""

    exception_class_path: str
    traceback: str


class AnError(Protocol):
    """Anything shaped like an error record (ours, or Django's TaskError)."""

    @property
    def exception_class_path(self) -> str: ...

    @property
    def traceback(self) -> str: ...


@dataclass(frozen=True, slots=True, kw_only=True)
class TaskRecord:
    """A task as stored in Redis, decoded and checked."""

    id: str
    task_path: str
    queue: str
    priority: int
    backend: str
    run_after: datetime | None
    args: list[Any]
    kwargs: dict[str, Any]
    status: str
    enqueued_at: datetime | None
    started_at: datetime | None
    finished_at: datetime | None
    last_attempted_at: datetime | None
    worker_ids: tuple[str, ...]
    errors: tuple[ErrorRecord, ...]
    return_value: Any
    deliveries: int


# json.dumps() with non-default options builds a new encoder per call; build it once.
_ENCODER = json.JSONEncoder(separators=(",", ":"), allow_nan=False, ensure_ascii=False)


def dumps(value: Any) -> str:
    """Encode JSON compactly; NaN and infinities are refused."""
    return _ENCODER.encode(value)


def to_micros(moment: datetime) -> int:
    """Return microseconds since the epoch for an aware (or local naive) datetime."""
    if moment.tzinfo is None:
        moment = moment.astimezone()
    return (moment - EPOCH) // ONE_MICROSECOND


def from_micros(micros: int) -> datetime:
    """Return the aware UTC datetime for microseconds since the epoch."""
    return EPOCH + timedelta(0, 0, micros)  # days, seconds, microseconds: cheaper than keywords


# -- nesting -----------------------------------------------------------------------
# Encoding, decoding and Django's normalize_json() recurse once per level of lists and
# dicts, so a value nested thousands deep raises RecursionError wherever it goes. Values
# are measured without recursing before any of them run: Python values by walking them
# with a stack, stored JSON by counting brackets outside strings.

_LEAVES = frozenset({str, int, float, bool, type(None), bytes})


def _nested_deeper_than(value: Any, limit: int) -> bool:
    """Tell whether lists and dicts nest over limit levels in value, walked the way normalize_json() does."""
    stack: list[tuple[Any, int]] = [(value, 0)]  # (a value, how many containers hold it)
    pop, push = stack.pop, stack.append
    while stack:
        item, depth = pop()
        kind = type(item)
        if kind is list or kind is tuple:
            children: Any = item
        elif kind is dict or isinstance(item, Mapping):
            children = chain(item.keys(), item.values())  # normalize_json() walks keys too
        elif isinstance(item, Sequence) and not isinstance(item, (str, bytes)):
            children = item
        else:
            continue  # a scalar, or a type normalize_json() refuses with its own error
        if depth == limit:
            return True  # a container below limit containers is one level too many
        depth += 1
        for child in children:
            if type(child) not in _LEAVES:
                push((child, depth))
    return False


def check_nesting(args: Any, kwargs: Any, max_nesting: int) -> None:
    """Raise TypeError if an argument nests deeper than max_nesting (raw or normalised, never recursing)."""
    # args and kwargs themselves are the one level above the arguments.
    if _nested_deeper_than(args, max_nesting + 1) or _nested_deeper_than(kwargs, max_nesting + 1):
        raise TypeError(f"Task arguments are nested deeper than MAX_NESTING={max_nesting}.")


# A field holds its own list or dict around values nested up to the largest MAX_NESTING;
# anything deeper was not written by conveyor and is refused before it is parsed.
_READ_NESTING = MAX_NESTING_CEILING + 1
_NOT_MARKS = bytes(sorted(set(range(256)) - set(b'"[]{}')))  # all but quotes and brackets
_TO_PARENS = bytes.maketrans(b"[{]}", b"(())")
_STEP = {ord("("): 1, ord(")"): -1}


def _text_deeper_than(raw: bytes, limit: int) -> bool:
    """Tell whether JSON text nests more than limit levels, counting brackets outside strings."""
    if len(raw) <= limit:
        return False
    marks = raw.translate(None, _NOT_MARKS)
    # Each level needs an opening bracket; counting them rules out nearly every text at once.
    if marks.count(b"[") + marks.count(b"{") <= limit:
        return False
    if b"\\" in raw:  # escapes occur only inside strings; drop \\ and \" so quotes pair up
        marks = raw.replace(b"\\\\", b"").replace(b'\\"', b"").translate(None, _NOT_MARKS)
    # Dropping "" (a string without brackets, or the quotes between two strings) keeps every
    # bracket on its side of a string; split off what strings remain.
    marks = marks.replace(b'""', b"")
    if b'"' in marks:
        marks = b"".join(marks.split(b'"')[::2])  # a string left open runs to the end
    parens = marks.translate(_TO_PARENS)
    # Walk in pieces: one whose openers cannot lift the depth it starts at past limit is
    # only counted; a smaller piece that might is summed bracket by bracket.
    count = parens.count
    depth, start, size = 0, 0, 4096
    while start < len(parens):
        stop = min(start + size, len(parens))
        opened = count(b"(", start, stop)
        if depth + opened > limit:
            if size > max(limit, 1):
                size //= 2
                continue
            if depth + max(accumulate(map(_STEP.__getitem__, parens[start:stop]))) > limit:
                return True
        else:
            size *= 2
        depth += 2 * opened - (stop - start)  # the rest of the piece closes
        start = stop
    return False


def _parse_field(name: str, text: str) -> Any:
    """Parse one JSON field, refusing text nested deeper than conveyor writes before parsing it."""
    if len(text) > _READ_NESTING and _text_deeper_than(text.encode(errors="surrogatepass"), _READ_NESTING):
        raise CorruptRecord(f"field {name!r} is nested deeper than {_READ_NESTING} levels")
    return json.loads(text)


# -- encoding ------------------------------------------------------------------------


def encode_payload(
    args: Any, kwargs: Any, limit: int, *, max_nesting: int = DEFAULT_MAX_NESTING
) -> tuple[str, str]:
    """Encode already-normalised args and kwargs; refuse what JSON cannot round-trip or nests too deep."""
    check_nesting(args, kwargs, max_nesting)
    try:
        args_json, kwargs_json = dumps(args), dumps(kwargs)
    except ValueError as exc:
        raise TypeError(f"Unsupported value in task arguments: {exc}") from exc
    size = len(args_json.encode()) + len(kwargs_json.encode())
    if size > limit:
        raise PayloadTooLarge(f"Task arguments are {size} bytes encoded, over MAX_PAYLOAD_BYTES={limit}.")
    if not _only_string_keys(args_json, kwargs_json, kwargs) and (
        json.loads(args_json) != args or json.loads(kwargs_json) != kwargs
    ):
        raise TypeError(
            "Unsupported value in task arguments: dictionary keys must be strings so "
            "they survive the JSON round trip."
        )
    return args_json, kwargs_json


class _NotPlain(Exception):
    """Raised by the fast path's encoder for a value JSON has no type for."""


def _not_plain(value: Any) -> Any:
    raise _NotPlain


# The fast path encodes and copies with json's C encoder and scanner made once (json.dumps()
# and json.loads() make them per call). The encoder skips json's cycle check: a cycle
# recurses until RecursionError, which sends the value to the checked path like any
# value nested too deep.
try:
    from json.encoder import c_make_encoder, encode_basestring  # type: ignore[attr-defined]
    from json.scanner import c_make_scanner  # type: ignore[attr-defined]
except ImportError:  # a Python without the _json accelerator
    _encode_c: Any = None
else:
    _encode_c = c_make_encoder(None, _not_plain, encode_basestring, None, ":", ",", False, False, False)
    _scan_c = c_make_scanner(json.JSONDecoder())


def encode_plain_payload(
    args: Any, kwargs: Any, limit: int, *, max_nesting: int = DEFAULT_MAX_NESTING
) -> tuple[list[Any], dict[str, Any], str, str] | None:
    """Encode arguments JSON carries unchanged without normalize_json(); None when they need the checked path.

    Returns the normalised args and kwargs (equal to what normalize_json() gives: a JSON copy)
    and their JSON. Bytes, Mappings and Sequences JSON has no type for, keys that are not
    str and anything nested deeper than max_nesting go the checked way, which normalises,
    refuses or names the problem as before.
    """
    if _encode_c is None or (type(args) is not tuple and type(args) is not list) or type(kwargs) is not dict:
        return None
    try:
        args_json, kwargs_json = "".join(_encode_c(args, 0)), "".join(_encode_c(kwargs, 0))
    except (_NotPlain, RecursionError):
        return None
    except ValueError as exc:
        raise TypeError(f"Unsupported value in task arguments: {exc}") from exc
    # args and kwargs are one level themselves, so their text may nest max_nesting + 1 deep.
    for text in (args_json, kwargs_json):
        if len(text) > max_nesting + 1 and _text_deeper_than(
            text.encode(errors="surrogatepass"), max_nesting + 1
        ):
            return None
    # str.isascii() reads a flag: an ASCII text is as long in UTF-8 as in characters.
    size = (len(args_json) if args_json.isascii() else len(args_json.encode())) + (
        len(kwargs_json) if kwargs_json.isascii() else len(kwargs_json.encode())
    )
    if size > limit:
        raise PayloadTooLarge(f"Task arguments are {size} bytes encoded, over MAX_PAYLOAD_BYTES={limit}.")
    # A JSON round trip copies what JSON carries unchanged as normalize_json() does.
    norm_args, norm_kwargs = _scan_c(f"[{args_json},{kwargs_json}]", 0)[0]
    # JSON turns keys that are not str (1, True, None) into text, where normalize_json()
    # keeps them and the checked path refuses them. When kwargs' own "{" is the only one,
    # there is no other dict and checking kwargs' keys suffices; otherwise the copy must
    # equal the arguments (a tuple inside them compares unequal too: checked path, same outcome).
    if "{" in args_json or kwargs_json.count("{") != 1:
        if norm_args != list(args) or norm_kwargs != kwargs:
            return None
    elif not all(type(key) is str for key in kwargs):
        return None
    return norm_args, norm_kwargs, args_json, kwargs_json


# Canonical JSON for unique-task digests: sorted keys, so equal arguments give equal text.
_CANONICAL = json.JSONEncoder(separators=(",", ":"), allow_nan=False, ensure_ascii=False, sort_keys=True)


def unique_digest(task_path: str, queue: str, args: Any, kwargs: Any, key: str | None = None) -> str:
    """Return the hex SHA-256 naming a unique task's lock: task path and queue with its
    normalised arguments, or task path and the task's own key when it has a key function."""
    parts = [task_path, queue, args, kwargs] if key is None else [task_path, {"key": key}]
    try:
        text = _CANONICAL.encode(parts)
    except ValueError as exc:
        raise TypeError(f"Unsupported value in task arguments: {exc}") from exc
    return hashlib.sha256(text.encode(errors="surrogatepass")).hexdigest()


def _only_string_keys(args_json: str, kwargs_json: str, kwargs: Any) -> bool:
    """Tell, without decoding, that JSON kept every dict key as it was."""
    # JSON turns 1, True and None keys into text. When the only "{" in both texts is
    # kwargs' own, there is no other dict anywhere and checking kwargs' keys suffices;
    # anything else (a nested dict, a "{" inside a string) takes the decode-and-compare path.
    return (
        "{" not in args_json
        and kwargs_json.count("{") == 1
        and type(kwargs) is dict
        and all(type(key) is str for key in kwargs)
    )


def encode_return_value(value: Any, *, max_nesting: int = DEFAULT_MAX_NESTING) -> tuple[Any, str]:
    """Normalise and encode a task's return value; raise TypeError if JSON cannot hold it."""
    if _nested_deeper_than(value, max_nesting):
        raise TypeError(
            f"Task return value cannot be stored as JSON: it is nested deeper than MAX_NESTING={max_nesting}."
        )
    try:
        normalized = normalize_json(value)
        return normalized, dumps(normalized)
    except ValueError as exc:
        raise TypeError(f"Task return value cannot be stored as JSON: {exc}") from exc


def encode_errors(errors: Sequence[AnError]) -> str:
    """Encode the list of errors of a task."""
    return dumps([{"exception_class_path": e.exception_class_path, "traceback": e.traceback} for e in errors])


# -- the record schema ------------------------------------------------------------------
# A task is one hash; times in it are microseconds since the epoch (µs, as text). The
# sorted sets that index tasks score them in milliseconds (due time, lease deadline, when
# a task became ready), except a queue's ready set, scored by ready_score(). Lua scripts
# (scripts/*.lua, one per transition) and the functions below are the only writers.


@dataclass(frozen=True, slots=True, kw_only=True)
class Field:
    """One field of a task hash: what it holds, in what form, and which transitions write it."""

    name: str
    form: str
    written_by: tuple[str, ...]
    meaning: str


SCHEMA: tuple[Field, ...] = (
    Field(name="v", form="text", written_by=("enqueue",), meaning="record format version"),
    Field(name="task", form="text", written_by=("enqueue",), meaning="task path, module.function"),
    Field(name="queue", form="text", written_by=("enqueue",), meaning="queue name"),
    Field(name="priority", form="integer", written_by=("enqueue",), meaning="-100..100, higher first"),
    Field(name="backend", form="text", written_by=("enqueue",), meaning="alias in TASKS"),
    Field(name="args", form="JSON list", written_by=("enqueue",), meaning="positional arguments"),
    Field(name="kwargs", form="JSON object", written_by=("enqueue",), meaning="keyword arguments"),
    Field(
        name="status",
        form="READY, RUNNING, SUCCESSFUL or FAILED",
        written_by=(
            "enqueue",
            "claim",
            "finish",
            "retry",
            "release",
            "postpone",
            "reclaim",
            "cancel",
            "requeue",
        ),
        meaning="where the task is",
    ),
    Field(name="enqueued_at", form="µs", written_by=("enqueue",), meaning="when it was enqueued"),
    Field(name="run_after", form="µs", written_by=("enqueue",), meaning="not before then (absent: now)"),
    Field(
        name="trace",
        form="JSON object, W3C traceparent (and tracestate)",
        written_by=("enqueue",),
        meaning="the send span's context when tracing is on (docs/tracing.md); absent: none",
    ),
    Field(
        name="started_at",
        form="µs",
        written_by=("claim", "release", "postpone"),
        meaning="first attempt's start (removed again when that delivery goes back unrun)",
    ),
    Field(
        name="last_attempted_at",
        form="µs",
        written_by=("claim", "release", "postpone"),
        meaning="latest attempt's start",
    ),
    Field(
        name="finished_at",
        form="µs",
        written_by=("finish", "reclaim", "cancel", "requeue"),
        meaning="when it ended",
    ),
    Field(
        name="worker_ids",
        form="JSON list of text",
        written_by=("claim", "release", "postpone"),
        meaning="one per attempt: claim appends, a delivery given back unrun drops its own",
    ),
    Field(
        name="errors",
        form="JSON list of {exception_class_path, traceback}",
        written_by=("finish", "retry", "reclaim", "cancel"),
        meaning="one per failed attempt; reclaim appends WorkerLost",
    ),
    Field(
        name="result", form="JSON", written_by=("finish", "requeue"), meaning="the return value of a success"
    ),
    Field(
        name="deliveries",
        form="integer",
        written_by=("claim", "release", "postpone", "requeue"),
        meaning="claims that counted (one given back unrun does not)",
    ),
    Field(name="fence", form="integer", written_by=("claim",), meaning="claims so far"),
    Field(
        name="owner",
        form="text, <worker id>#<fence>",
        written_by=("claim", "finish", "retry", "release", "postpone", "reclaim"),
        meaning="the current delivery's token; removed when the delivery ends",
    ),
    Field(
        name="lost",
        form="integer",
        written_by=("reclaim", "finish", "retry", "requeue"),
        meaning="deliveries lost since the last completed attempt: the next runs alone",
    ),
    Field(
        name="done_by",
        form="text, a token",
        written_by=("finish", "retry", "release", "postpone"),
        meaning="the token that last ended a delivery, so a replayed call is recognised",
    ),
    Field(
        name="unknown_since",
        form="µs",
        written_by=("postpone", "requeue"),
        meaning="first put back because its path did not import here",
    ),
    Field(
        name="score",
        form="integer, ready_score()",
        written_by=("enqueue", "promote", "requeue"),
        meaning="its ready score",
    ),
    Field(
        name="cancel",
        form="µs",
        written_by=("cancel", "requeue"),
        meaning="when an operator cancelled it; a worker stops it, a claim fails it unstarted",
    ),
    Field(
        name="waited",
        form="µs",
        written_by=("wait",),
        meaning="when a waiter last looked at it unfinished: the script that finishes it then notifies",
    ),
)
SCHEMA_BY_NAME = {f.name: f for f in SCHEMA}


def schema_table() -> str:
    """Return SCHEMA as the Markdown table the README shows."""
    rows = ["| field | form | written by | holds |", "|---|---|---|---|"]
    rows += [f"| `{f.name}` | {f.form} | {', '.join(f.written_by)} | {f.meaning} |" for f in SCHEMA]
    return "\n".join(rows)


def success_fields(finished_at: datetime | None, return_json: str | None) -> dict[str, str]:
    """Return the fields finish.lua sets for a SUCCESSFUL attempt."""
    fields = {"finished_at": str(to_micros(finished_at))} if finished_at else {}
    fields["result"] = return_json or "null"
    return fields


def failure_fields(finished_at: datetime | None, errors: Sequence[AnError]) -> dict[str, str]:
    """Return the fields finish.lua sets for a FAILED attempt."""
    fields = {"finished_at": str(to_micros(finished_at))} if finished_at else {}
    fields["errors"] = encode_errors(errors) if errors else "[]"
    return fields


def retry_fields(errors: Sequence[AnError]) -> dict[str, str]:
    """Return the fields retry.lua sets for an attempt that will be tried again."""
    return {"errors": encode_errors(errors) if errors else "[]"}


TRACE_FIELD = "trace"
TRACE_MAX = 1024  # bytes: a traceparent is 55, a W3C tracestate at most 512


def encode_trace(carrier: Mapping[str, str]) -> str:
    """Encode a W3C trace context carrier (traceparent, tracestate) as the record's trace field."""
    return dumps(dict(carrier))


def trace_carrier(raw: Mapping[bytes, bytes]) -> dict[str, str] | None:
    """Return the trace context a raw task hash carries; None when absent or unreadable (never raises)."""
    text = raw.get(b"trace")
    if not text or len(text) > TRACE_MAX:
        return None
    try:
        value = json.loads(text)
    except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
        return None
    if type(value) is not dict or not all(type(v) is str for v in value.values()):
        return None
    return value


def shared_fields(
    *,
    task_path: str,
    queue: str,
    priority: int,
    backend: str,
    run_after: datetime | None,
    enqueued_micros: int,
) -> dict[str, str]:
    """Return the hash fields every task of one enqueue_many() chunk shares (all but args and kwargs)."""
    fields = {
        "v": VERSION,
        "task": task_path,
        "queue": queue,
        "priority": str(priority),
        "backend": backend,
        "status": "READY",
        "enqueued_at": str(enqueued_micros),
    }
    if run_after is not None:
        fields["run_after"] = str(to_micros(run_after))
    return fields


def new_record(
    *,
    task_path: str,
    queue: str,
    priority: int,
    backend: str,
    run_after: datetime | None,
    args_json: str,
    kwargs_json: str,
    enqueued_at: datetime,
) -> dict[str, str]:
    """Return the hash fields of a freshly enqueued task."""
    fields = shared_fields(
        task_path=task_path,
        queue=queue,
        priority=priority,
        backend=backend,
        run_after=run_after,
        enqueued_micros=to_micros(enqueued_at),
    )
    fields["args"], fields["kwargs"] = args_json, kwargs_json
    # started_at, finished_at, last_attempted_at, worker_ids, errors, result and
    # deliveries are absent until a worker writes them; decode() supplies defaults.
    return fields


def _text(fields: Mapping[str, str], name: str, *, required: bool = True) -> str:
    """Return one field as text."""
    raw = fields.get(name)
    if raw is None:
        if required:
            raise CorruptRecord(f"field {name!r} is missing")
        return ""
    return raw


def _moment(fields: Mapping[str, str], name: str) -> datetime | None:
    """Return a timestamp field, or None when empty."""
    text = _text(fields, name, required=False)
    if not text:
        return None
    try:
        return from_micros(int(text))
    except (ValueError, OverflowError) as exc:
        raise CorruptRecord(f"field {name!r} is not a timestamp") from exc


def _json(fields: Mapping[str, str], name: str, kind: type, default: str | None = None) -> Any:
    """Return a JSON field, checking the type of its top level."""
    text = _text(fields, name, required=default is None) or default or ""
    try:
        value = _parse_field(name, text)
    except json.JSONDecodeError as exc:
        raise CorruptRecord(f"field {name!r} is not valid JSON") from exc
    if not isinstance(value, kind):
        raise CorruptRecord(f"field {name!r} is not a JSON {kind.__name__}")
    return value


def _error_records(items: list[Any]) -> tuple[ErrorRecord, ...]:
    """Return the error records of a decoded "errors" list."""
    errors = []
    for item in items:
        if not isinstance(item, dict):
            raise CorruptRecord("an error entry is not an object")
        errors.append(
            ErrorRecord(
                exception_class_path=str(item.get("exception_class_path", "")),
                traceback=str(item.get("traceback", "")),
            )
        )
    return tuple(errors)


def decode(task_id: str, raw: Mapping[Any, Any]) -> TaskRecord:
    """Decode a task hash into a TaskRecord; raise CorruptRecord on anything unexpected."""
    record = _decode_plain(task_id, raw)
    if record is None:
        record = _decode_checked(task_id, raw)
    return record


# What _decode_plain() needs to read a hash without decoding all of it first.
_VERSION_BYTES = VERSION.encode()
_STATUS_BY_BYTES = {status.encode(): status for status in STATUSES}
_DECODER = json.JSONDecoder()


def _decode_plain(task_id: str, raw: Mapping[Any, Any]) -> TaskRecord | None:
    """Decode a well-formed hash as Redis returns it (bytes); return None for anything else."""
    # The worker calls this for every task it claims, so it reads only the fields it
    # needs, as bytes. It returns a record only where _decode_checked() returns an equal
    # one, and None wherever that one might raise or differ (str keys, a missing or
    # malformed field, bytes that are not UTF-8): _decode_checked() then decides and
    # names the problem, so the two never disagree on what a record means.
    get = raw.get
    try:
        if raw[b"v"] != _VERSION_BYTES:
            return None
        # _decode_checked() decodes every key and value. With an ASCII byte between them
        # they decode as a whole exactly when each decodes alone; ASCII needs no decoding.
        joined = b"\n".join([*raw, *raw.values()])
        if not joined.isascii():
            joined.decode()
        status = _STATUS_BY_BYTES.get(raw[b"status"])
        args, kwargs = raw[b"args"], raw[b"kwargs"]
        args = [] if args == b"[]" else _plain_json(args)
        kwargs = {} if kwargs == b"{}" else _plain_json(kwargs)
        worker_ids = get(b"worker_ids")
        worker_ids = [] if not worker_ids or worker_ids == b"[]" else _plain_json(worker_ids)
        errors = get(b"errors")
        errors = [] if not errors or errors == b"[]" else _plain_json(errors)
        if status is None or type(args) is not list or type(kwargs) is not dict:
            return None
        if type(worker_ids) is not list or type(errors) is not list:
            return None
        started_at = get(b"started_at")
        started = _plain_moment(started_at)
        last_attempted_at = get(b"last_attempted_at")
        # The claim writes one clock reading to both; a datetime is immutable, so share it.
        last_attempted = started if last_attempted_at == started_at else _plain_moment(last_attempted_at)
        result = get(b"result")
        return TaskRecord(
            id=task_id,
            task_path=raw[b"task"].decode(),
            queue=raw[b"queue"].decode(),
            priority=int(raw[b"priority"]),
            backend=raw[b"backend"].decode(),
            run_after=_plain_moment(get(b"run_after")),
            args=args,
            kwargs=kwargs,
            status=status,
            enqueued_at=_plain_moment(get(b"enqueued_at")),
            started_at=started,
            finished_at=_plain_moment(get(b"finished_at")),
            last_attempted_at=last_attempted,
            worker_ids=tuple(map(str, worker_ids)),
            errors=_error_records(errors) if errors else (),
            return_value=_plain_json(result) if result else None,
            deliveries=int(get(b"deliveries") or 0),
        )
    except (KeyError, CorruptRecord, ValueError, TypeError, AttributeError, OverflowError):
        return None


def _plain_json(raw: bytes) -> Any:
    """Parse JSON text that json.loads() reads the same way; raise ValueError for any other."""
    # json.loads() skips surrounding whitespace around raw_decode(), which costs more than
    # parsing a short text; text with leading or trailing whitespace is refused instead.
    if len(raw) > _READ_NESTING and _text_deeper_than(raw, _READ_NESTING):
        raise ValueError("nested too deep")  # the checked path names the field
    text = raw.decode()
    value, end = _DECODER.raw_decode(text)
    if end != len(text):
        raise ValueError("not plain JSON")
    return value


def _plain_moment(raw: bytes | None) -> datetime | None:
    """Return the datetime of a timestamp field's bytes, or None when absent or empty."""
    return EPOCH + timedelta(0, 0, int(raw)) if raw else None  # days, seconds, microseconds


def _decode_checked(task_id: str, raw: Mapping[Any, Any]) -> TaskRecord:
    """Decode any mapping field by field, raising CorruptRecord that names what is wrong."""
    try:
        try:  # what Redis returns: bytes keys and values
            fields = {k.decode(): v.decode() for k, v in raw.items()}
        except AttributeError:
            fields = {
                (k.decode() if isinstance(k, bytes) else str(k)): (
                    v.decode() if isinstance(v, bytes) else str(v)
                )
                for k, v in raw.items()
            }
        version = _text(fields, "v")
        if version != VERSION:
            raise CorruptRecord(f"unknown record version {version!r}")
        status = _text(fields, "status")
        if status not in STATUSES:
            raise CorruptRecord(f"unknown status {status!r}")
        errors = _error_records(_json(fields, "errors", list, "[]"))
        worker_ids = _json(fields, "worker_ids", list, "[]")
        result_text = _text(fields, "result", required=False)
        return TaskRecord(
            id=task_id,
            task_path=_text(fields, "task"),
            queue=_text(fields, "queue"),
            priority=int(_text(fields, "priority")),
            backend=_text(fields, "backend"),
            run_after=_moment(fields, "run_after"),
            args=_json(fields, "args", list),
            kwargs=_json(fields, "kwargs", dict),
            status=status,
            enqueued_at=_moment(fields, "enqueued_at"),
            started_at=_moment(fields, "started_at"),
            finished_at=_moment(fields, "finished_at"),
            last_attempted_at=_moment(fields, "last_attempted_at"),
            worker_ids=tuple(str(w) for w in worker_ids),
            errors=errors,
            return_value=_parse_field("result", result_text) if result_text else None,
            deliveries=int(_text(fields, "deliveries", required=False) or 0),
        )
    except CorruptRecord:
        raise
    except (ValueError, UnicodeDecodeError) as exc:
        raise CorruptRecord(f"record {task_id!r} cannot be decoded: {exc}") from exc


_RESULT_STATUS = {status: TaskResultStatus(status) for status in STATUSES}
_READY_FIELDS = (
    "task",
    "id",
    "status",
    "enqueued_at",
    "started_at",
    "finished_at",
    "last_attempted_at",
    "args",
    "kwargs",
    "backend",
    "errors",
    "worker_ids",
    "_return_value",
)
# ready_result() fills these fields itself; on a Django whose TaskResult has others it
# takes the constructor instead.
_FAST_READY = tuple(f.name for f in dataclass_fields(TaskResult)) == _READY_FIELDS


def ready_result(
    task: Task, task_id: str, enqueued_at: datetime, args: list[Any], kwargs: dict[str, Any], backend: str
) -> TaskResult:
    """Return the READY TaskResult of a new task whose args and kwargs are normalised already."""
    if not _FAST_READY:
        return TaskResult(
            task=task,
            id=task_id,
            status=TaskResultStatus.READY,
            enqueued_at=enqueued_at,
            started_at=None,
            finished_at=None,
            last_attempted_at=None,
            args=args,
            kwargs=kwargs,
            backend=backend,
            errors=[],
            worker_ids=[],
        )
    # TaskResult.__post_init__ only runs normalize_json() over args and kwargs again.
    result = object.__new__(TaskResult)
    put = object.__setattr__
    put(result, "task", task)
    put(result, "id", task_id)
    put(result, "status", TaskResultStatus.READY)
    put(result, "enqueued_at", enqueued_at)
    put(result, "started_at", None)
    put(result, "finished_at", None)
    put(result, "last_attempted_at", None)
    put(result, "args", args)
    put(result, "kwargs", kwargs)
    put(result, "backend", backend)
    put(result, "errors", [])
    put(result, "worker_ids", [])
    put(result, "_return_value", None)
    return result


def to_task_result(record: TaskRecord, task: Task) -> TaskResult:
    """Build Django's TaskResult for a decoded record and its resolved Task."""
    result = TaskResult(
        task=task,
        id=record.id,
        status=_RESULT_STATUS.get(record.status) or TaskResultStatus(record.status),
        enqueued_at=record.enqueued_at,
        started_at=record.started_at,
        finished_at=record.finished_at,
        last_attempted_at=record.last_attempted_at,
        args=record.args,
        kwargs=record.kwargs,
        backend=record.backend,
        errors=[
            TaskError(exception_class_path=e.exception_class_path, traceback=e.traceback)
            for e in record.errors
        ],
        worker_ids=list(record.worker_ids),
    )
    if record.return_value is not None:  # TaskResult starts out with None
        object.__setattr__(result, "_return_value", record.return_value)
    return result
