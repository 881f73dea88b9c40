"""`manage.py conveyor <subcommand>`: status, list, show, retry, cancel, pause, resume, purge.

Thin on purpose: parse the arguments, call conveyor.ops.Operator, and print its answer as an
aligned table for people or as one JSON document (--json) for scripts.
"""

from __future__ import annotations

import argparse
import json
import re
import shlex
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields, is_dataclass
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any, NoReturn

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.tasks import task_backends
from django.tasks.exceptions import InvalidTaskBackend
from django.utils import timezone
from django.utils.dateparse import parse_datetime

from ...backend import RedisBackend
from ...exceptions import ConveyorError, UnknownTask
from ...ops import (
    STATUS_NAMES,
    CancelOutcome,
    Operator,
    RetryOutcome,
    Status,
    TaskDetail,
    TaskSummary,
    check_task_id,
)

FINISHED_STATUS_NAMES = ("SUCCESSFUL", "FAILED")
DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 1000
DEFAULT_BATCH = 1000
ID_HELP = "task id (put ids after '--' if one starts with '-')"
_AGE_RE = re.compile(r"^(\d+(?:\.\d+)?)([smhd])$")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}

RETRY_LABELS: dict[RetryOutcome, str] = {
    "retried": "retried",
    "not_failed": "not FAILED: left as it is",
    "missing": "no such task",
}
RETRY_DRY_RUN_LABELS: dict[RetryOutcome, str] = {
    "retried": "would be retried",
    "not_failed": "not FAILED: would be left as it is",
    "missing": "no such task",
}
CANCEL_LABELS: dict[CancelOutcome, str] = {
    "cancelled": "cancelled: it will not run (FAILED with TaskCancelled)",
    "requested": "running: its worker was asked to stop it",
    "finished": "already finished: left as it is",
    "missing": "no such task",
}


@dataclass(frozen=True, slots=True, kw_only=True)
class Age:
    """A length of time given as a number and a unit (30s, 15m, 12h, 7d)."""

    text: str
    seconds: float

    @classmethod
    def parse(cls, text: str) -> Age:
        """Parse an age; raise ArgumentTypeError (argparse's usage error) when it is not one."""
        match = _AGE_RE.match(text.strip())
        if not match:
            raise argparse.ArgumentTypeError(
                f"{text!r} is not an age: give a number and a unit, e.g. 30s, 15m, 12h or 7d"
            )
        return cls(text=text.strip(), seconds=float(match[1]) * _UNIT_SECONDS[match[2]])


def parse_since(text: str) -> datetime:
    """Return the moment an age (2h: two hours ago) or an ISO-8601 time names; naive times are local."""
    if _AGE_RE.match(text.strip()):
        return datetime.now(UTC) - timedelta(seconds=Age.parse(text).seconds)
    try:
        moment = parse_datetime(text.strip())
    except ValueError:
        moment = None
    if moment is None:
        raise argparse.ArgumentTypeError(
            f"{text!r} is neither an age (30s, 15m, 12h, 7d) nor an ISO-8601 time (2025-01-31T08:00:00Z)"
        )
    aware: datetime = timezone.make_aware(moment) if timezone.is_naive(moment) else moment
    return aware


def explain_dashed_ids(report: Callable[[str], NoReturn]) -> Callable[[str], NoReturn]:
    """Wrap a parser's error() to explain that a task id starting with '-' goes after '--'."""

    def error(message: str) -> NoReturn:
        if "unrecognized arguments: -" in message or "required: ID" in message:
            message += "; a task id that starts with '-' goes after '--', e.g. conveyor show -- -AbC..."
        report(message)

    return error


def page_size(text: str) -> int:
    """Parse a --limit between 1 and MAX_PAGE_SIZE."""
    if not text.isdigit() or not 1 <= int(text) <= MAX_PAGE_SIZE:
        raise argparse.ArgumentTypeError(f"give a whole number from 1 to {MAX_PAGE_SIZE}, not {text!r}")
    return int(text)


def batch_size(text: str) -> int:
    """Parse a --batch of at least 1."""
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"give a whole number of at least 1, not {text!r}")
    return int(text)


# -- formatting -------------------------------------------------------------------


def format_age(seconds: float) -> str:
    """Return a length of time in its largest whole unit: 45s, 12m, 5h, 3d."""
    seconds = max(0.0, seconds)
    for unit in ("d", "h", "m"):
        if seconds >= _UNIT_SECONDS[unit]:
            return f"{int(seconds // _UNIT_SECONDS[unit])}{unit}"
    return f"{int(seconds)}s"


def format_when(moment: datetime | None, now: datetime) -> str:
    """Return a moment relative to now ("3m ago", "in 5m"), or "-" for none."""
    if moment is None:
        return "-"
    delta = (now - moment).total_seconds()
    return f"{format_age(delta)} ago" if delta >= 0 else f"in {format_age(-delta)}"


def format_moment(moment: datetime | None, now: datetime) -> str:
    """Return a moment as ISO-8601 with its age ("2025-01-31T08:00:00+00:00 (3m ago)"), or "-"."""
    return "-" if moment is None else f"{moment.isoformat()} ({format_when(moment, now)})"


def table(headers: Sequence[str], rows: Sequence[Sequence[str | int]]) -> list[str]:
    """Return rows under headers as aligned lines; columns of whole numbers align right."""
    numeric = [all(isinstance(row[i], int) for row in rows) for i in range(len(headers))]
    cells = [list(headers), *([str(cell) for cell in row] for row in rows)]
    widths = [max(len(line[i]) for line in cells) for i in range(len(headers))]
    return [
        "  ".join(
            cell.rjust(width) if right else cell.ljust(width)
            for cell, width, right in zip(line, widths, numeric, strict=True)
        ).rstrip()
        for line in cells
    ]


def to_json(value: Any) -> Any:
    """Return value as JSON-ready data: dataclasses as objects by field name, times as ISO-8601."""
    if is_dataclass(value) and not isinstance(value, type):
        return {f.name: to_json(getattr(value, f.name)) for f in fields(value)}
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, (list, tuple)):
        return [to_json(item) for item in value]
    if isinstance(value, dict):
        return {str(key): to_json(item) for key, item in value.items()}
    return value


def detail_json(detail: TaskDetail) -> dict[str, Any]:
    """Return one task in full as a flat JSON object (the summary's fields first)."""
    document = to_json(detail.summary)
    for f in fields(detail):
        if f.name != "summary":
            document[f.name] = to_json(getattr(detail, f.name))
    document["errors"] = [{"exception_class_path": path, "traceback": trace} for path, trace in detail.errors]
    return dict(document)


def status_label(summary: TaskSummary) -> str:
    """Return a task's status, marked while it runs after a stop was asked for."""
    return (
        "RUNNING (cancelling)" if summary.status == "RUNNING" and summary.cancel_requested else summary.status
    )


# -- the command ------------------------------------------------------------------


class Command(BaseCommand):
    """Operate one conveyor backend's tasks, queues and workers."""

    help = (
        "Operate conveyor: status, schedules, list, show, retry, cancel, pause, resume, purge. "
        "Run `conveyor SUBCOMMAND --help` for each one's options."
    )
    requires_system_checks: list[str] = []  # run even when Redis is down, to say so plainly
    stealth_options = ("stdin",)  # tests hand purge's prompt its own input

    def add_arguments(self, parser: CommandParser) -> None:
        """Add one subparser per subcommand; each takes --backend."""
        parser.error = explain_dashed_ids(parser.error)
        subs = parser.add_subparsers(dest="subcommand", required=True, metavar="SUBCOMMAND")

        def sub(name: str, help_text: str, *, json_output: bool = False) -> Any:
            p = subs.add_parser(name, help=help_text, description=help_text)
            p.error = explain_dashed_ids(p.error)
            p.add_argument("--backend", default="default", help="alias in TASKS (default: %(default)s)")
            if json_output:
                p.add_argument("--json", action="store_true", help="print one JSON document")
            return p

        sub("status", "Show each queue's counts and the live workers.", json_output=True)
        sub("schedules", "List periodic tasks: next run, last task enqueued.", json_output=True)

        p = sub("list", "List tasks, newest first, a page at a time.", json_output=True)
        p.add_argument("--queue", help="only this queue")
        p.add_argument("--status", type=str.upper, choices=STATUS_NAMES, help="only this status")
        p.add_argument("--task", metavar="PATH", help="only this task path (module.function)")
        p.add_argument("--cursor", help="continue from a page's next cursor")
        p.add_argument(
            "--limit",
            type=page_size,
            default=DEFAULT_PAGE_SIZE,
            help=f"rows per page, 1 to {MAX_PAGE_SIZE} (default: %(default)s)",
        )

        p = sub("show", "Show one task in full.", json_output=True)
        p.add_argument("task_id", metavar="ID", help=ID_HELP)
        p.add_argument(
            "--with-args", action="store_true", help="show arguments and return value (may be personal data)"
        )

        p = sub("retry", "Put FAILED tasks back in their queue, by id or by filter.", json_output=True)
        p.add_argument("task_ids", nargs="*", metavar="ID", help=ID_HELP)
        p.add_argument("--queue", help="every FAILED task of this queue")
        p.add_argument("--task", metavar="PATH", help="every FAILED task with this path")
        p.add_argument(
            "--since",
            type=parse_since,
            help="every FAILED task finished since then: an age (2h) or an ISO-8601 time",
        )
        p.add_argument("--dry-run", action="store_true", help="count, change nothing")

        p = sub("cancel", "Cancel tasks: a READY one never starts, a RUNNING one stops.", json_output=True)
        p.add_argument("task_ids", nargs="+", metavar="ID", help=ID_HELP)

        p = sub("pause", "Stop workers claiming from a queue (tasks keep arriving).")
        p.add_argument("queue", metavar="QUEUE")
        p = sub("resume", "Let workers claim from a paused queue again.")
        p.add_argument("queue", metavar="QUEUE")

        p = sub("purge", "Delete finished results by age, or a queue's READY tasks, in batches.")
        p.add_argument(
            "--older-than", type=Age.parse, metavar="AGE", help="results older than: 30s, 15m, 12h, 7d"
        )
        p.add_argument("--status", type=str.upper, choices=FINISHED_STATUS_NAMES, help="only this status")
        p.add_argument("--queue", help="only this queue (needed with --ready)")
        p.add_argument("--ready", action="store_true", help="delete the queue's READY tasks, not results")
        p.add_argument("--dry-run", action="store_true", help="count, delete nothing")
        p.add_argument("--yes", action="store_true", help="do not ask for confirmation")
        p.add_argument(
            "--batch",
            type=batch_size,
            default=DEFAULT_BATCH,
            help="tasks per Redis call (default: %(default)s)",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        """Run one subcommand; conveyor's errors become a CommandError (exit 1, no traceback)."""
        self.stdin = options.get("stdin") or sys.stdin
        operator = Operator(self.backend(options["backend"]))
        subcommands: dict[str, Callable[[Operator, dict[str, Any]], None]] = {
            "status": self.run_status,
            "schedules": self.run_schedules,
            "list": self.run_list,
            "show": self.run_show,
            "retry": self.run_retry,
            "cancel": self.run_cancel,
            "pause": self.run_pause,
            "resume": self.run_resume,
            "purge": self.run_purge,
        }
        try:
            subcommands[options["subcommand"]](operator, options)
        except ConveyorError as exc:
            raise CommandError(str(exc) or type(exc).__name__) from exc

    def backend(self, alias: str) -> RedisBackend:
        """Return the conveyor backend named alias, or explain why there is none."""
        try:
            backend = task_backends[alias]
        except InvalidTaskBackend as exc:
            raise CommandError(str(exc)) from exc
        if not isinstance(backend, RedisBackend):
            raise CommandError(
                f"TASKS[{alias!r}] is {type(backend).__module__}.{type(backend).__qualname__}, "
                "not conveyor.RedisBackend; name a conveyor backend with --backend"
            )
        if backend.problems:
            listed = "; ".join(f"{p.setting}: {p.message}" for p in backend.problems)
            raise CommandError(f"TASKS[{alias!r}] is misconfigured: {listed}")
        return backend

    def write_json(self, document: Any) -> None:
        """Print one JSON document."""
        self.stdout.write(json.dumps(document, indent=2, default=str))

    def write_lines(self, lines: Sequence[str]) -> None:
        """Print lines."""
        for line in lines:
            self.stdout.write(line)

    @staticmethod
    def checked_ids(task_ids: Sequence[str]) -> list[str]:
        """Return the ids once each, in order; a CommandError names any that cannot be an id."""
        for task_id in task_ids:
            try:
                check_task_id(task_id)
            except UnknownTask:
                raise CommandError(
                    f"{task_id!r} is not a task id (ids are 1 to 64 letters, digits, '-' and '_')"
                ) from None
        return list(dict.fromkeys(task_ids))

    # -- subcommands ---------------------------------------------------------------

    def run_status(self, operator: Operator, options: dict[str, Any]) -> None:
        """Print each queue's counts and the live workers."""
        status = operator.status()
        if options["json"]:
            self.write_json(to_json(status))
            return
        self.write_lines(self.status_lines(status))

    def run_schedules(self, operator: Operator, options: dict[str, Any]) -> None:
        """Print each periodic task with its next run and the last task it enqueued."""
        rows = operator.schedules()
        if options["json"]:
            self.write_json(to_json(rows))
            return
        if not rows:
            self.stdout.write("No periodic tasks (OPTIONS SCHEDULE is empty).")
            return
        now = timezone.now()
        self.write_lines(
            table(
                ["NAME", "TASK", "WHEN", "NEXT RUN", "LAST TASK", "LAST ENQUEUED", "SKIPPED"],
                [
                    [
                        r.name,
                        r.task or "(not declared: no worker fires it)",
                        f"{r.timing} ({r.timezone})" if r.timing else "-",
                        format_when(r.next_run, now) if r.declared else "-",
                        r.last_task_id or "-",
                        format_when(r.last_enqueued_at, now),
                        r.skipped,
                    ]
                    for r in rows
                ],
            )
        )

    @staticmethod
    def status_lines(status: Status) -> list[str]:
        """Return the status as two tables, queues then workers."""
        lines: list[str] = []
        if status.queues:
            headers = [
                "QUEUE",
                "READY",
                "SCHEDULED",
                "RUNNING",
                "FAILED",
                "SUCCEEDED",
                "OLDEST READY",
                "PAUSED",
            ]
            rows: list[list[str | int]] = [
                [
                    q.queue,
                    q.ready,
                    q.scheduled,
                    q.running,
                    q.failed,
                    q.succeeded,
                    "-" if q.oldest_ready_age is None else format_age(q.oldest_ready_age),
                    "yes" if q.paused else "no",
                ]
                for q in status.queues
            ]
            lines += table(headers, rows)
        else:
            lines.append("No queues yet (no task was ever enqueued).")
        lines.append("")
        if status.workers:
            headers = ["WORKER", "HOST", "PID", "QUEUES", "BUSY", "STATE", "STARTED", "SEEN", "VERSION"]
            rows = [
                [
                    w.id,
                    w.host,
                    w.pid,
                    ",".join(w.queues),
                    f"{w.busy}/{w.slots}",
                    w.state,
                    format_when(w.started_at, status.read_at),
                    format_when(w.seen_at, status.read_at),
                    w.version,
                ]
                for w in status.workers
            ]
            lines += table(headers, rows)
        else:
            lines.append("No live workers.")
        return lines

    def run_list(self, operator: Operator, options: dict[str, Any]) -> None:
        """Print one page of tasks and how to fetch the next."""
        page = operator.list(
            queue=options["queue"],
            status=options["status"],
            task=options["task"],
            cursor=options["cursor"],
            limit=options["limit"],
        )
        if options["json"]:
            self.write_json(to_json(page))
            return
        now = datetime.now(UTC)
        if page.items:
            headers = [
                "ID",
                "TASK",
                "QUEUE",
                "STATUS",
                "PRIORITY",
                "ATTEMPTS",
                "ENQUEUED",
                "FINISHED",
                "ERROR",
            ]
            rows: list[list[str | int]] = [
                [
                    s.id,
                    s.task_path,
                    s.queue,
                    status_label(s),
                    s.priority,
                    s.attempts,
                    format_when(s.enqueued_at, now),
                    format_when(s.finished_at, now),
                    s.last_error or "-",
                ]
                for s in page.items
            ]
            self.write_lines(table(headers, rows))
        else:
            self.stdout.write("No tasks on this page." if options["cursor"] else "No tasks.")
        if page.next_cursor:
            self.stdout.write(f"\nMore: {self.next_page_command(options, page.next_cursor)}")

    @staticmethod
    def next_page_command(options: dict[str, Any], cursor: str) -> str:
        """Return the command line that lists the next page with the same filters."""
        words = ["manage.py", "conveyor", "list"]
        if options["backend"] != "default":
            words += ["--backend", options["backend"]]
        for name in ("queue", "status", "task"):
            if options[name]:
                words += [f"--{name}", options[name]]
        if options["limit"] != DEFAULT_PAGE_SIZE:
            words += ["--limit", str(options["limit"])]
        if options["json"]:
            words.append("--json")
        return shlex.join([*words, "--cursor", cursor])

    def run_show(self, operator: Operator, options: dict[str, Any]) -> None:
        """Print one task in full."""
        [task_id] = self.checked_ids([options["task_id"]])
        detail = operator.show(task_id, with_args=options["with_args"])
        if options["json"]:
            self.write_json(detail_json(detail))
            return
        self.write_lines(self.detail_lines(detail, datetime.now(UTC)))

    @staticmethod
    def detail_lines(detail: TaskDetail, now: datetime) -> list[str]:
        """Return one task as aligned "name: value" lines, then its errors and arguments."""
        s = detail.summary
        pairs = [
            ("id", s.id),
            ("task", s.task_path),
            ("queue", s.queue),
            ("status", status_label(s)),
            ("priority", str(s.priority)),
            ("backend", detail.backend),
            ("attempts", str(s.attempts)),
            ("deliveries", str(detail.deliveries)),
            ("workers", ", ".join(detail.worker_ids) or "-"),
            ("enqueued", format_moment(s.enqueued_at, now)),
            ("run after", format_moment(detail.run_after, now)),
            ("scheduled for", format_moment(detail.scheduled_for, now)),
            ("started", format_moment(detail.started_at, now)),
            ("last attempted", format_moment(detail.last_attempted_at, now)),
            ("finished", format_moment(s.finished_at, now)),
            ("cancel requested", format_moment(detail.cancel_requested_at, now)),
        ]
        width = max(len(name) for name, _ in pairs) + 1
        lines = [f"{name + ':':<{width}} {value}" for name, value in pairs]
        for number, (path, trace) in enumerate(detail.errors, start=1):
            lines += ["", f"error {number} of {len(detail.errors)}: {path}", *trace.rstrip().splitlines()]
        if detail.with_args:
            lines += [
                "",
                f"args:   {json.dumps(detail.args, default=str)}",
                f"kwargs: {json.dumps(detail.kwargs, default=str)}",
                f"result: {json.dumps(detail.return_value, default=str)}",
            ]
        else:
            lines += ["", "(arguments and return value hidden: add --with-args to show them)"]
        return lines

    def run_retry(self, operator: Operator, options: dict[str, Any]) -> None:
        """Retry FAILED tasks by id, or every one matching the filters; exit 1 if an id is missing."""
        filters = {name: options[name] for name in ("queue", "task", "since") if options[name] is not None}
        if options["task_ids"] and filters:
            raise CommandError("give task ids or filters (--queue, --task, --since), not both")
        if not options["task_ids"] and not filters:
            raise CommandError("name task ids, or choose FAILED tasks with --queue, --task or --since")
        dry_run = options["dry_run"]
        if filters:
            count = operator.retry_matching(**filters, dry_run=dry_run)
            if options["json"]:
                self.write_json({"retried": count, "dry_run": dry_run})
            elif dry_run:
                self.stdout.write(f"Would retry {count} FAILED tasks (dry run: nothing changed).")
            else:
                self.stdout.write(f"Retried {count} FAILED tasks.")
            return
        task_ids = self.checked_ids(options["task_ids"])
        if dry_run:
            outcomes = {task_id: self.retry_preview(operator, task_id) for task_id in task_ids}
        else:
            outcomes = operator.retry(task_ids)
        retried = sum(outcome == "retried" for outcome in outcomes.values())
        if options["json"]:
            self.write_json({"outcomes": outcomes, "retried": retried, "dry_run": dry_run})
        else:
            labels = RETRY_DRY_RUN_LABELS if dry_run else RETRY_LABELS
            width = max(map(len, outcomes))
            self.write_lines(
                [f"{task_id:<{width}}  {labels[outcome]}" for task_id, outcome in outcomes.items()]
            )
            verb = "Would retry" if dry_run else "Retried"
            self.stdout.write(f"{verb} {retried} of {len(outcomes)} tasks.")
        self.fail_on_missing(outcomes)

    @staticmethod
    def retry_preview(operator: Operator, task_id: str) -> RetryOutcome:
        """Return what retry would do to one task now, changing nothing."""
        try:
            detail = operator.show(task_id)
        except UnknownTask:
            return "missing"
        return "retried" if detail.summary.status == "FAILED" else "not_failed"

    def run_cancel(self, operator: Operator, options: dict[str, Any]) -> None:
        """Cancel tasks by id; exit 1 if an id is missing."""
        outcomes = operator.cancel(self.checked_ids(options["task_ids"]))
        counts = {kind: sum(o == kind for o in outcomes.values()) for kind in ("cancelled", "requested")}
        if options["json"]:
            self.write_json({"outcomes": outcomes, **counts})
        else:
            width = max(map(len, outcomes))
            self.write_lines(
                [f"{task_id:<{width}}  {CANCEL_LABELS[outcome]}" for task_id, outcome in outcomes.items()]
            )
            self.stdout.write(
                f"Cancelled {counts['cancelled']} and asked {counts['requested']} to stop, "
                f"of {len(outcomes)} tasks."
            )
        self.fail_on_missing(outcomes)

    @staticmethod
    def fail_on_missing(outcomes: dict[str, Any]) -> None:
        """Exit 1 (after the work is done) when some ids named no task."""
        missing = [task_id for task_id, outcome in outcomes.items() if outcome == "missing"]
        if missing:
            raise CommandError(f"{len(missing)} of {len(outcomes)} task ids not found: {', '.join(missing)}")

    def run_pause(self, operator: Operator, options: dict[str, Any]) -> None:
        """Pause a queue."""
        operator.pause(options["queue"])
        self.stdout.write(
            f"Paused queue {options['queue']!r}: workers stop claiming from it within a second; "
            "tasks still arrive."
        )

    def run_resume(self, operator: Operator, options: dict[str, Any]) -> None:
        """Resume a queue."""
        operator.resume(options["queue"])
        self.stdout.write(f"Resumed queue {options['queue']!r}: workers claim from it again.")

    def run_purge(self, operator: Operator, options: dict[str, Any]) -> None:
        """Count what would go, ask unless --yes, then delete in batches and print how many went."""
        queue, batch = options["queue"], options["batch"]
        delete: Callable[..., int]
        if options["ready"]:
            if not queue:
                raise CommandError("purge --ready needs --queue QUEUE")
            if options["older_than"] or options["status"]:
                raise CommandError("--older-than and --status choose results; they do not go with --ready")
            what = f"READY tasks (ready and scheduled) of queue {queue!r}"
            delete = partial(operator.purge_ready, queue, batch=batch)
        else:
            older_than: Age | None = options["older_than"]
            if older_than is None:
                raise CommandError(
                    "purge needs --older-than AGE (finished results) or --ready --queue QUEUE (READY tasks)"
                )
            status = options["status"]
            where = f"in queue {queue!r}" if queue else "in every queue"
            what = f"{status or 'finished'} results older than {older_than.text} {where}"
            delete = partial(
                operator.purge_results, older_than=older_than.seconds, status=status, queue=queue, batch=batch
            )

        count = delete(dry_run=True)
        if options["dry_run"]:
            self.stdout.write(f"Would delete {count} {what} (dry run: nothing deleted).")
            return
        if count == 0:
            self.stdout.write(f"Nothing to delete: no {what}.")
            return
        if not options["yes"] and not self.confirm(f"Delete {count} {what}?"):
            self.stdout.write("Nothing deleted.")
            return
        # READY tasks keep arriving: delete no more than the count the operator agreed to.
        limit = {"limit": count} if options["ready"] else {}
        self.stdout.write(f"Deleted {delete(dry_run=False, **limit)} {what}.")

    def confirm(self, question: str) -> bool:
        """Ask a yes/no question on the terminal; refuse (CommandError) when there is none to ask on."""
        if not self.stdin.isatty():
            raise CommandError(
                f"{question[:-1]}: refusing without --yes, as stdin is not a terminal to ask on"
            )
        self.stdout.write(f"{question} [y/N] ", ending="")
        self.stdout.flush()
        return self.stdin.readline().strip().lower() in {"y", "yes"}
