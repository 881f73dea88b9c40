"""Periodic tasks: OPTIONS["SCHEDULE"] parsed into frozen entries, and when each entry next fires."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from cronsim import CronSim, CronSimError
from django.utils.json import normalize_json

CATCH_UP = ("once", "skip")
# A tick later than this, by the server clock, counts as missed (catch_up "skip" drops it).
LATE_AFTER_MS = 60_000
_NAME_RE = re.compile(r"^[A-Za-z0-9_.-]{1,100}$")
_FIELDS = frozenset(
    {"name", "task", "cron", "every", "args", "kwargs", "queue", "priority", "timezone", "catch_up",
     "skip_if_pending"}
)  # fmt: skip


@dataclass(frozen=True, slots=True, kw_only=True)
class EntryProblem:
    """Why one SCHEDULE entry is unusable (check() reports one per entry)."""

    entry: str  # its name, its position (#n) when it has none, "" for the whole list
    message: str


@dataclass(frozen=True, slots=True, kw_only=True)
class ScheduleEntry:
    """One periodic task as declared; task, queue and priority are resolved by whoever runs it."""

    name: str
    task: str  # module path of a django.tasks Task
    cron: str | None = None
    every: int | None = None  # seconds
    args: tuple[Any, ...] = ()
    kwargs: Mapping[str, Any] | None = None
    queue: str | None = None  # None: the task's own queue_name
    priority: int | None = None  # None: the task's own priority
    timezone: str = "UTC"
    catch_up: str = "once"
    skip_if_pending: bool = False

    def __hash__(self) -> int:  # args and kwargs may hold lists and dicts: hash by identity and timing
        return hash((self.name, self.task, self.fingerprint))

    @property
    def fingerprint(self) -> str:
        """Return what identifies the entry's timing: a change restarts it from now."""
        timing = f"cron={self.cron}" if self.cron is not None else f"every={self.every}"
        return hashlib.sha1(f"{timing};tz={self.timezone}".encode(), usedforsecurity=False).hexdigest()[:16]

    @property
    def describe(self) -> str:
        """Return the timing as an operator reads it."""
        return f"cron {self.cron}" if self.cron is not None else f"every {self.every}s"

    def first_after(self, now_ms: int) -> int | None:
        """Return the first tick after now (ms) for an entry seen for the first time, or None: never."""
        if self.every is not None:
            return now_ms + self.every * 1000
        return self._cron_after(now_ms)

    def next_after(self, due_ms: int, now_ms: int) -> int | None:
        """Return the first tick after now of the series that had a tick at due_ms, or None: never."""
        if self.every is not None:
            period = self.every * 1000
            return due_ms + ((now_ms - due_ms) // period + 1) * period
        return self._cron_after(now_ms)

    def _cron_after(self, after_ms: int) -> int | None:
        zone = ZoneInfo(self.timezone)
        start = datetime.fromtimestamp(after_ms // 1000, UTC).astimezone(zone)
        assert self.cron is not None
        for moment in CronSim(self.cron, start):  # tz-aware: Debian cron's DST rules (docs/periodic.md)
            tick_ms = int(moment.timestamp()) * 1000
            if tick_ms > after_ms:
                return tick_ms
        return None  # pragma: no cover - CronSim ends by StopIteration, caught by the caller

    def next_or_none(self, due_ms: int | None, now_ms: int) -> int | None:
        """Return next_after (first_after without a due tick); None when it never fires again."""
        try:
            return self.first_after(now_ms) if due_ms is None else self.next_after(due_ms, now_ms)
        except StopIteration:
            return None


def _entry_problems(raw: Mapping[Any, Any]) -> list[str]:
    """Return every reason one raw entry is unusable (empty when it is fine)."""
    reasons: list[str] = []
    unknown = sorted(str(k) for k in raw if k not in _FIELDS)
    if unknown:
        reasons.append(f"unknown field(s) {', '.join(unknown)} (known: {', '.join(sorted(_FIELDS))})")
    name = raw.get("name")
    if not isinstance(name, str) or not _NAME_RE.match(name):
        reasons.append("name must be 1-100 characters from A-Z a-z 0-9 _ . -")
    task = raw.get("task")
    if not isinstance(task, str) or not re.match(r"^[A-Za-z_][A-Za-z0-9_.]*\.[A-Za-z_][A-Za-z0-9_]*$", task):
        reasons.append("task must be the dotted path of a task, module.function")
    cron, every = raw.get("cron"), raw.get("every")
    if (cron is None) == (every is None):
        reasons.append("give exactly one of cron (an expression) or every (seconds)")
    elif cron is not None:
        if not isinstance(cron, str):
            reasons.append("cron must be a string such as '*/5 * * * *'")
        else:
            try:
                CronSim(cron, datetime(2026, 1, 1))
            except CronSimError as exc:
                reasons.append(f"cron {cron!r} is not a cron expression: {exc}")
    elif isinstance(every, bool) or not isinstance(every, int) or every < 1:
        reasons.append("every must be a whole number of seconds, at least 1")
    zone = raw.get("timezone", "UTC")
    try:
        if not isinstance(zone, str) or not zone:
            raise ValueError
        ZoneInfo(zone)
    except (ZoneInfoNotFoundError, ValueError):
        reasons.append(f"timezone {zone!r} is not an IANA time zone name (such as 'Europe/Paris')")
    if raw.get("catch_up", "once") not in CATCH_UP:
        reasons.append(f"catch_up must be one of {', '.join(CATCH_UP)}, not {raw.get('catch_up')!r}")
    if not isinstance(raw.get("skip_if_pending", False), bool):
        reasons.append("skip_if_pending must be True or False")
    priority = raw.get("priority")
    if priority is not None and (isinstance(priority, bool) or not isinstance(priority, int)):
        reasons.append("priority must be a whole number (-100..100)")
    queue = raw.get("queue")
    if queue is not None and not isinstance(queue, str):
        reasons.append("queue must be a queue name")
    args, kwargs = raw.get("args", ()), raw.get("kwargs", {})
    if not isinstance(args, (list, tuple)):
        reasons.append("args must be a list")
    elif not isinstance(kwargs, Mapping):
        reasons.append("kwargs must be a dict")
    else:
        try:
            normalize_json(list(args))
            normalize_json(dict(kwargs))
        except TypeError as exc:
            reasons.append(f"args and kwargs must be JSON: {exc}")
    return reasons


def parse_schedule(raw: Any) -> tuple[tuple[ScheduleEntry, ...], list[EntryProblem]]:
    """Parse OPTIONS["SCHEDULE"] (a list of dicts); return the usable entries and one problem per bad one."""
    if not isinstance(raw, Sequence) or isinstance(raw, (str, bytes)):
        return (), [EntryProblem(entry="", message="SCHEDULE must be a list of dicts")]
    entries: list[ScheduleEntry] = []
    problems: list[EntryProblem] = []
    seen: set[str] = set()
    for position, item in enumerate(raw):
        label = f"#{position}"
        if not isinstance(item, Mapping):
            problems.append(EntryProblem(entry=label, message="each entry must be a dict"))
            continue
        if isinstance(item.get("name"), str):
            label = item["name"]
        reasons = _entry_problems(item)
        if label in seen:
            reasons.append("another entry has this name")
        seen.add(label)
        if reasons:
            problems.append(EntryProblem(entry=label, message="; ".join(reasons)))
            continue
        entries.append(
            ScheduleEntry(
                name=item["name"],
                task=item["task"],
                cron=item.get("cron"),
                every=item.get("every"),
                args=tuple(normalize_json(list(item.get("args", ())))),
                kwargs=normalize_json(dict(item.get("kwargs", {}))),
                queue=item.get("queue"),
                priority=item.get("priority"),
                timezone=item.get("timezone", "UTC"),
                catch_up=item.get("catch_up", "once"),
                skip_if_pending=item.get("skip_if_pending", False),
            )
        )
    return tuple(entries), problems
