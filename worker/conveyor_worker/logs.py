"""Logging: one JSON object per line on stdout (or plain text for humans)."""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import Any

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
)


class JsonFormatter(logging.Formatter):
    """Format a record as one compact JSON object."""

    def format(self, record: logging.LogRecord) -> str:
        """Return the JSON line for a record."""
        line: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name in FIELDS:
            value = getattr(record, name, None)
            if value is not None:
                line[name] = value
        if record.exc_info and "traceback" not in line:
            line["traceback"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    """Format a record as a readable line with its task fields."""

    def format(self, record: logging.LogRecord) -> str:
        """Return the text line for a record."""
        stamp = datetime.fromtimestamp(record.created, UTC).strftime("%H:%M:%S.%f")[:-3]
        parts = [f"{stamp} {record.levelname:<7} {record.getMessage()}"]
        for name in FIELDS:
            value = getattr(record, name, None)
            if value is not None and name not in ("event", "traceback"):
                parts.append(f"{name}={value}")
        text = " ".join(parts)
        tb = getattr(record, "traceback", None)
        if tb:
            text += "\n" + str(tb).rstrip()
        elif record.exc_info:
            text += "\n" + self.formatException(record.exc_info)
        return text


def configure_logging(log_format: str, level: str) -> None:
    """Send every log record to stdout in the chosen format."""
    # Two lines per task: skip the stack walk and thread/process lookups no formatter here uses.
    logging._srcfile = None  # type: ignore[attr-defined]
    logging.logThreads = logging.logProcesses = logging.logMultiprocessing = False
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(JsonFormatter() if log_format == "json" else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # Django's own task signal receivers log every start and finish too; the worker's
    # task lines carry the same facts with more fields, so Django's are shown at DEBUG only.
    logging.getLogger("django.tasks").setLevel(logging.DEBUG if level == "DEBUG" else logging.CRITICAL)
