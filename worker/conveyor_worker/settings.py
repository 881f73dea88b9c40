"""Worker settings: environment variables and flags (flags win) parsed into one frozen dataclass."""

from __future__ import annotations

import argparse
import re
import secrets
import socket
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, NoReturn

from .timings import HEARTBEAT_EVERY, blocking_wait

WORKER_ID_RE = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


@dataclass(frozen=True, slots=True, kw_only=True)
class QueueSelection:
    """Which queues a worker consumes: named ones, or every queue but some."""

    names: tuple[str, ...] = ()
    all_queues: bool = True
    excluded: frozenset[str] = frozenset()

    def resolve(self, known: set[str]) -> list[str]:
        """Return the queues to consume given every queue Redis has seen."""
        chosen = known | set(self.names) if self.all_queues else set(self.names)
        return sorted(chosen - self.excluded)

    def as_given(self) -> list[str]:
        """Return the selection as --queues spells it: '*', names, '-excluded'."""
        every = ["*"] if self.all_queues else []
        return [*every, *self.names, *(f"-{name}" for name in sorted(self.excluded))]

    @classmethod
    def from_given(cls, parts: Sequence[str]) -> QueueSelection:
        """Return the selection as_given() spelled (a worker's heartbeat carries it); SettingError if bad."""
        return _queues(",".join(parts))

    def serves(self, queue: str) -> bool:
        """Tell whether this selection consumes a queue."""
        return (self.all_queues or queue in self.names) and queue not in self.excluded


@dataclass(frozen=True, slots=True, kw_only=True)
class WorkerSettings:
    """Everything the worker process is configured with."""

    backend: str = "default"
    queues: QueueSelection = QueueSelection()
    concurrency: int = 8
    worker_id: str = ""
    batch: bool = False
    max_tasks: int = 0
    shutdown_timeout: float = 25.0
    lease: float = 30.0
    health_port: int = 8080
    health_host: str = "0.0.0.0"
    log_format: str = "json"
    log_level: str = "INFO"
    allowed_task_modules: tuple[str, ...] | None = None  # None: derived from INSTALLED_APPS
    max_deliveries: int = 5
    metrics_only: bool = False
    pod_deletion_cost: bool = False
    # Not exposed: how long an idle worker blocks on Redis before it looks around again.
    block_seconds: float = 2.0
    # Not exposed: seconds between the worker's heartbeats in Redis (tests shorten it).
    heartbeat_every: float = HEARTBEAT_EVERY


class SettingError(ValueError):
    """A setting has a value the worker cannot use."""


def _int(minimum: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise SettingError(f"must be a whole number >= {minimum}, got {text!r}") from None
        if value < minimum:
            raise SettingError(f"must be a whole number >= {minimum}, got {text!r}")
        return value

    return parse


def _seconds(minimum: float) -> Callable[[str], float]:
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise SettingError(f"must be a number of seconds >= {minimum:g}, got {text!r}") from None
        if not value >= minimum or value == float("inf"):
            raise SettingError(f"must be a number of seconds >= {minimum:g}, got {text!r}")
        return value

    return parse


def _bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise SettingError(f"must be one of 1/true/yes/on or 0/false/no/off, got {text!r}")


def _choice(*choices: str) -> Callable[[str], str]:
    def parse(text: str) -> str:
        value = text.strip().lower() if choices[0].islower() else text.strip().upper()
        if value not in choices:
            raise SettingError(f"must be one of {', '.join(choices)}, got {text!r}")
        return value

    return parse


def _queues(text: str) -> QueueSelection:
    names, excluded, all_queues = [], set(), False
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        if part == "*":
            all_queues = True
        elif part.startswith("-") and len(part) > 1:
            excluded.add(part[1:])
        elif part.startswith("-"):
            raise SettingError("has an empty exclusion '-'")
        else:
            names.append(part)
    if not names and not all_queues:
        raise SettingError(f"names no queue to consume, got {text!r}")
    return QueueSelection(names=tuple(names), all_queues=all_queues, excluded=frozenset(excluded))


def _worker_id(text: str) -> str:
    if not WORKER_ID_RE.match(text):
        raise SettingError(f"must be 1-128 characters from A-Z a-z 0-9 . _ : -, got {text!r}")
    return text


def _modules(text: str) -> tuple[str, ...]:
    modules = tuple(m.strip() for m in text.split(",") if m.strip())
    for module in modules:
        if not re.match(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$", module):
            raise SettingError(f"has {module!r}, which is not a module path")
    if not modules:
        raise SettingError("is empty")
    return modules


def _port(text: str) -> int:
    value = _int(0)(text)
    if value > 65535:
        raise SettingError(f"must be a TCP port 0-65535, got {text!r}")
    return value


# field name, environment variable, flag, parser, is it a boolean flag
SPEC: tuple[tuple[str, str, str, Callable[[str], Any], bool], ...] = (
    ("backend", "CONVEYOR_BACKEND", "--backend", str.strip, False),
    ("queues", "CONVEYOR_QUEUES", "--queues", _queues, False),
    ("concurrency", "CONVEYOR_CONCURRENCY", "--concurrency", _int(1), False),
    ("worker_id", "CONVEYOR_WORKER_ID", "--worker-id", _worker_id, False),
    ("batch", "CONVEYOR_BATCH", "--batch", _bool, True),
    ("max_tasks", "CONVEYOR_MAX_TASKS", "--max-tasks", _int(0), False),
    ("shutdown_timeout", "CONVEYOR_SHUTDOWN_TIMEOUT", "--shutdown-timeout", _seconds(0), False),
    ("lease", "CONVEYOR_LEASE", "--lease", _seconds(1), False),
    ("health_port", "CONVEYOR_HEALTH_PORT", "--health-port", _port, False),
    ("health_host", "CONVEYOR_HEALTH_HOST", "--health-host", str.strip, False),
    ("log_format", "CONVEYOR_LOG_FORMAT", "--log-format", _choice("json", "text"), False),
    (
        "log_level",
        "CONVEYOR_LOG_LEVEL",
        "--log-level",
        _choice("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"),
        False,
    ),
    ("allowed_task_modules", "CONVEYOR_ALLOWED_TASK_MODULES", "--allowed-task-modules", _modules, False),
    ("max_deliveries", "CONVEYOR_MAX_DELIVERIES", "--max-deliveries", _int(1), False),
    ("metrics_only", "CONVEYOR_METRICS_ONLY", "--metrics-only", _bool, True),
    ("pod_deletion_cost", "CONVEYOR_POD_DELETION_COST", "--pod-deletion-cost", _bool, True),
)


def default_worker_id() -> str:
    """Return the host (pod) name plus a random suffix, cleaned to allowed characters."""
    host = re.sub(r"[^A-Za-z0-9._:-]", "-", socket.gethostname())[:100] or "worker"
    return f"{host}-{secrets.token_hex(3)}"


def build_parser() -> argparse.ArgumentParser:
    """Return the command-line parser; every flag defaults to 'not given'."""
    parser = argparse.ArgumentParser(
        prog="conveyor-worker",
        description="Run conveyor tasks from Redis. Each flag has a CONVEYOR_* environment "
        "variable; the flag wins.",
    )
    for name, env, flag, _, is_bool in SPEC:
        help_text = f"(env {env}, default {getattr(WorkerSettings(), name)!r})"
        if is_bool:
            parser.add_argument(
                flag, dest=name, action="store_const", const="1", default=None, help=help_text
            )
        else:
            parser.add_argument(flag, dest=name, default=None, help=help_text)
    return parser


def load_settings(argv: Sequence[str], environ: Mapping[str, str]) -> WorkerSettings:
    """Parse flags over environment over defaults; raise SettingError naming the setting."""
    given = vars(build_parser().parse_args(list(argv)))
    values: dict[str, Any] = {}
    for name, env, flag, parse, _ in SPEC:
        raw = given[name] if given[name] is not None else environ.get(env)
        if raw is None:
            continue
        try:
            values[name] = parse(raw)
        except SettingError as exc:
            raise SettingError(f"{env} ({flag}) {exc}") from None
    values.setdefault("worker_id", default_worker_id())
    settings = WorkerSettings(**values)
    # Block on Redis for at most a quarter lease, so renewals are never starved.
    return replace(settings, block_seconds=blocking_wait(settings.block_seconds, settings.lease))


def load_or_exit(argv: Sequence[str], environ: Mapping[str, str]) -> WorkerSettings:
    """Return the settings, or print one line naming the bad setting and exit 2."""
    try:
        return load_settings(argv, environ)
    except SettingError as exc:
        fail(str(exc))


def fail(message: str) -> NoReturn:
    """Print a one-line configuration error and exit with status 2."""
    print(f"conveyor-worker: {message}", file=sys.stderr)
    raise SystemExit(2)
