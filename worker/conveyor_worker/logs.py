"""Logging: one JSON object per line on stdout (or plain text for humans)."""

from __future__ import annotations

import json
import logging
import sys
import threading
import time
from datetime import UTC, datetime
from typing import Any, Protocol, TextIO

# Attributes a log call may attach with extra={...}; anything else is ignored.
FIELDS = (
    "event",
    "task_id",
    "task_path",
    "queue",
    "attempt",
    "worker_id",
    "duration_ms",
    "status",
    "error",
    "traceback",
    "queues",
    "concurrency",
    "exit_code",
    "reason",
    "delay_ms",
    "count",
    "health_port",
    "version",
    "state",
    "schedule",
)


ALLOWED = frozenset(FIELDS)


def record_fields(record: logging.LogRecord) -> dict[str, Any]:
    """Return the FIELDS a log call attached to a record with extra={...}."""
    attrs = record.__dict__  # extra={...} lands here; a dict lookup beats getattr's miss
    return {name: attrs[name] for name in FIELDS if attrs.get(name) is not None}


class FieldsFormatter(Protocol):
    """A formatter that can also format a line from its parts, without a LogRecord."""

    def format_fields(
        self, created: float, levelname: str, name: str, message: str, fields: dict[str, Any]
    ) -> str: ...


class JsonFormatter(logging.Formatter):
    """Format a record as one compact JSON object."""

    def __init__(self) -> None:
        super().__init__()
        # json.dumps() with options builds an encoder per call; two lines per task make that show.
        self._encoder = json.JSONEncoder(default=str, ensure_ascii=False)
        self._second = -1
        self._second_text = ""

    def _timestamp(self, created: float) -> str:
        """Return an ISO 8601 UTC time with milliseconds, formatting each second only once."""
        second = int(created)
        if second != self._second:
            self._second_text = datetime.fromtimestamp(second, UTC).strftime("%Y-%m-%dT%H:%M:%S")
            self._second = second
        return f"{self._second_text}.{int((created - second) * 1000):03d}+00:00"

    def format(self, record: logging.LogRecord) -> str:
        """Return the JSON line for a record."""
        fields = record_fields(record)
        if record.exc_info and "traceback" not in fields:
            fields["traceback"] = self.formatException(record.exc_info)
        return self.format_fields(record.created, record.levelname, record.name, record.getMessage(), fields)

    def format_fields(
        self, created: float, levelname: str, name: str, message: str, fields: dict[str, Any]
    ) -> str:
        """Return the JSON line for a message and its fields (None values and unknown names left out)."""
        line: dict[str, Any] = {
            "ts": self._timestamp(created),
            "level": levelname.lower(),
            "logger": name,
            "message": message,
        }
        for key, value in fields.items():
            if value is not None and key in ALLOWED:
                line[key] = value
        return self._encoder.encode(line)


class TextFormatter(logging.Formatter):
    """Format a record as a readable line with its task fields."""

    def format(self, record: logging.LogRecord) -> str:
        """Return the text line for a record."""
        text = self.format_fields(
            record.created, record.levelname, record.name, record.getMessage(), record_fields(record)
        )
        if record.exc_info and not getattr(record, "traceback", None):
            text += "\n" + self.formatException(record.exc_info)
        return text

    def format_fields(
        self, created: float, levelname: str, name: str, message: str, fields: dict[str, Any]
    ) -> str:
        """Return the text line for a message and its fields."""
        stamp = datetime.fromtimestamp(created, UTC).strftime("%H:%M:%S.%f")[:-3]
        parts = [f"{stamp} {levelname:<7} {message}"]
        for key, value in fields.items():
            if value is not None and key in ALLOWED and key not in ("event", "traceback"):
                parts.append(f"{key}={value}")
        text = " ".join(parts)
        tb = fields.get("traceback")
        if tb:
            text += "\n" + str(tb).rstrip()
        return text


class BatchingHandler(logging.Handler):
    """Format records at once but write them in batches from a background thread.

    One write and flush per line cost more than running a no-op task; lines are
    written at least every `interval` seconds, when `max_pending` are waiting, and
    on flush()/close() (logging.shutdown() at exit). A SIGKILL can lose the last
    interval of lines, never a task.
    """

    def __init__(self, stream: TextIO, interval: float = 0.05, max_pending: int = 1000) -> None:
        super().__init__()
        self.stream = stream
        self.interval = interval
        self.max_pending = max_pending
        self._pending: list[str] = []
        self._wake = threading.Event()
        self._closed = False
        self._writer = threading.Thread(target=self._run, name="conveyor-log-writer", daemon=True)
        self._writer.start()

    def emit(self, record: logging.LogRecord) -> None:
        """Queue one formatted line."""
        try:
            line = self.format(record) + "\n"
        except Exception:
            self.handleError(record)
            return
        with self.lock:  # type: ignore[union-attr]
            self._pending.append(line)
            full = len(self._pending) >= self.max_pending
        if full or record.levelno >= logging.ERROR:
            self._wake.set()

    def emit_fields(self, levelname: str, name: str, message: str, fields: dict[str, Any]) -> None:
        """Queue one line built from its parts, skipping LogRecord (see TaskLines)."""
        formatter: FieldsFormatter = self.formatter  # type: ignore[assignment]
        line = formatter.format_fields(time.time(), levelname, name, message, fields) + "\n"
        with self.lock:  # type: ignore[union-attr]
            self._pending.append(line)

    def flush(self) -> None:
        """Write every waiting line now."""
        with self.lock:  # type: ignore[union-attr]
            lines, self._pending = self._pending, []
        if lines:
            try:
                self.stream.write("".join(lines))
                self.stream.flush()
            except (OSError, ValueError):
                pass  # stdout closed or broken: nothing sensible to do with log lines

    def close(self) -> None:
        """Write what is left and stop the writer."""
        self._closed = True
        self._wake.set()
        self.flush()
        super().close()

    def _run(self) -> None:
        while not self._closed:
            self._wake.wait(self.interval)
            self._wake.clear()
            self.flush()


class TaskLines:
    """Write the worker's two INFO lines per task as cheaply as logging allows.

    logging's LogRecord and handler chain cost about 20 us a line, as much as a no-op
    task; when conveyor's own BatchingHandler is the only handler a record of this
    logger would reach (no filters on the way), the line goes to it directly, in the
    same format and order. Otherwise (tests, a project's own LOGGING) it goes through
    logging as any other record.
    """

    def __init__(self, logger: logging.Logger) -> None:
        self._logger = logger
        self._direct = _sole_batching_handler(logger)

    def info(self, message: str, fields: dict[str, Any]) -> None:
        """Log message at INFO with its fields."""
        direct = self._direct
        if direct is not None and self._logger.isEnabledFor(logging.INFO):
            direct.emit_fields("INFO", self._logger.name, message, fields)
        else:
            self._logger.info(message, extra=fields)


def _sole_batching_handler(logger: logging.Logger) -> BatchingHandler | None:
    """Return the BatchingHandler that alone receives INFO records of logger, if so."""
    handlers: list[logging.Handler] = []
    node: logging.Logger | None = logger
    while node is not None:
        if node.filters:
            return None
        handlers += node.handlers
        node = node.parent if node.propagate else None
    if len(handlers) != 1:
        return None
    handler = handlers[0]
    fits = isinstance(handler, BatchingHandler) and not handler.filters and handler.level <= logging.INFO
    if not fits or not hasattr(handler.formatter, "format_fields"):
        return None
    return handler  # type: ignore[return-value]


def configure_logging(log_format: str, level: str) -> None:
    """Send every log record to stdout in the chosen format."""
    # Two lines per task: skip the stack walk and thread/process lookups no formatter here uses.
    logging._srcfile = None  # type: ignore[attr-defined]
    logging.logThreads = logging.logProcesses = logging.logMultiprocessing = False
    handler = BatchingHandler(sys.stdout)
    handler.setFormatter(JsonFormatter() if log_format == "json" else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # Django's own task signal receivers log every start and finish too; the worker's
    # task lines carry the same facts with more fields, so Django's are shown at DEBUG only.
    logging.getLogger("django.tasks").setLevel(logging.DEBUG if level == "DEBUG" else logging.CRITICAL)
