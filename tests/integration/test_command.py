"""`manage.py conveyor`: every subcommand against a real Redis, its JSON, its prompts and its errors."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from conveyor import RedisBackend, codec
from django.apps import apps
from django.core.management import call_command, get_commands
from django.core.management.base import CommandError
from django.tasks import TaskResultStatus
from django.tasks.base import Task
from django.tasks.exceptions import TaskResultDoesNotExist
from django.test import override_settings

from tests import tasks
from tests.conftest import ROOT

LONG_LEASE_MS = 60_000
MISSING_ID = "no-such-task-0000000000000000000"


class Terminal(io.StringIO):
    """Standard input that says it is a terminal and holds what the operator types."""

    def isatty(self) -> bool:
        return True


def conveyor(*args: str, stdin: io.StringIO | None = None) -> str:
    """Run `manage.py conveyor ARGS` in this process; return what it printed."""
    out = io.StringIO()
    extra: dict[str, Any] = {} if stdin is None else {"stdin": stdin}
    call_command("conveyor", *args, stdout=out, stderr=io.StringIO(), **extra)
    return out.getvalue()


def conveyor_json(*args: str) -> Any:
    """Run a subcommand with --json (before any "--") and return the one document it printed."""
    return json.loads(conveyor(args[0], "--json", *args[1:]))


def finish(
    backend: RedisBackend, task: Task, status: str, *, queue: str = "default", count: int = 1
) -> list[str]:
    """Enqueue count tasks to an otherwise empty queue, claim them and record status; return their ids."""
    ids = [task.using(queue_name=queue).enqueue().id for _ in range(count)]
    claimed = backend.store.claim([queue], "worker-t", LONG_LEASE_MS, count)
    assert sorted(c.task_id for c in claimed) == sorted(ids)
    now = datetime.now(UTC)
    for c in claimed:
        if status == "FAILED":
            error = codec.ErrorRecord(
                exception_class_path="builtins.ValueError", traceback="Traceback ...\nValueError: boom\n"
            )
            fields, ttl = codec.failure_fields(now, [error]), backend.settings.failed_result_ttl
        else:
            fields, ttl = codec.success_fields(now, "42"), backend.settings.result_ttl
        assert backend.store.finish(c.task_id, queue, c.token, status, ttl, fields)
    return ids


def status_of(backend: RedisBackend, task_id: str) -> TaskResultStatus:
    """Return a task's status as Django reads it."""
    return backend.get_result(task_id).status


def queue_row(document: dict[str, Any], queue: str) -> dict[str, Any]:
    """Return one queue's entry of `status --json`."""
    [row] = [q for q in document["queues"] if q["queue"] == queue]
    return row


# -- the app and the command ------------------------------------------------------


def test_the_app_installs_the_command() -> None:
    """INSTALLED_APPS += ["conveyor"] loads conveyor's AppConfig and gives `manage.py conveyor`."""
    config = apps.get_app_config("conveyor")

    assert (config.name, type(config).__name__) == ("conveyor", "ConveyorConfig")
    assert get_commands()["conveyor"] == "conveyor"


# -- status -----------------------------------------------------------------------


def test_status_counts_each_queue(backend: RedisBackend) -> None:
    """Count ready, scheduled, running, failed and succeeded per queue, as a table and as JSON."""
    finish(backend, tasks.noop_task, "FAILED", queue="emails", count=2)
    finish(backend, tasks.noop_task, "SUCCESSFUL", queue="emails")
    tasks.noop_task.using(queue_name="emails").enqueue()
    backend.store.claim(["emails"], "worker-t", LONG_LEASE_MS, 1)  # one RUNNING
    for _ in range(3):
        tasks.noop_task.enqueue()
    tasks.noop_task.using(run_after=datetime.now(UTC) + timedelta(hours=1)).enqueue()

    document = conveyor_json("status")

    assert queue_row(document, "default") | {"oldest_ready_age": None} == {
        "queue": "default",
        "ready": 3,
        "scheduled": 1,
        "running": 0,
        "failed": 0,
        "succeeded": 0,
        "oldest_ready_age": None,
        "paused": False,
    }
    assert queue_row(document, "default")["oldest_ready_age"] >= 0
    emails = queue_row(document, "emails")
    assert (emails["ready"], emails["running"], emails["failed"], emails["succeeded"]) == (0, 1, 2, 1)
    assert emails["oldest_ready_age"] is None
    assert datetime.fromisoformat(document["read_at"]).tzinfo is not None
    assert document["workers"] == []

    lines = conveyor("status").splitlines()
    header = lines[0]
    assert header.split() == [
        "QUEUE", "READY", "SCHEDULED", "RUNNING", "FAILED", "SUCCEEDED", "OLDEST", "READY", "PAUSED"
    ]  # fmt: skip
    [default_line] = [line for line in lines if line.startswith("default ")]
    assert default_line.split()[:6] == ["default", "3", "1", "0", "0", "0"]
    # Right-aligned counts end where their header ends.
    assert default_line.index("3") + 1 == header.index("READY") + len("READY")
    assert "No live workers." in lines


def test_status_lists_live_workers_with_their_last_heartbeat(backend: RedisBackend) -> None:
    """Show each live worker as its registry describes it; SEEN is its latest heartbeat, not its start."""
    # Given: a worker that started ten minutes ago and has just sent a heartbeat (the registry's JSON).
    started = datetime.now(UTC) - timedelta(minutes=10)
    description = {
        "id": "web-1-ab12",
        "host": "web-1",
        "pid": 17,
        "queues": ["*"],
        "slots": 8,
        "started_at": started.isoformat(),
        "version": "0.1.0",
        "busy": 2,
        "state": "ready",
    }
    tasks.noop_task.enqueue()
    before = datetime.now(UTC) - timedelta(seconds=1)
    backend.store.heartbeat("web-1-ab12", json.dumps(description), 30_000)

    [worker] = conveyor_json("status")["workers"]
    lines = conveyor("status").splitlines()

    assert {k: worker[k] for k in description if k not in ("started_at",)} == {
        k: v for k, v in description.items() if k != "started_at"
    }
    assert datetime.fromisoformat(worker["started_at"]) == started
    [line] = [line for line in lines if line.startswith("web-1-ab12 ")]
    assert line.split()[:7] == ["web-1-ab12", "web-1", "17", "*", "2/8", "ready", "10m"]
    assert datetime.fromisoformat(worker["seen_at"]) >= before


def test_status_with_no_queue_says_so(backend: RedisBackend) -> None:
    """Say there is nothing yet rather than print an empty table."""
    assert conveyor("status").splitlines()[0] == "No queues yet (no task was ever enqueued)."
    assert conveyor_json("status")["queues"] == []


# -- list and show ----------------------------------------------------------------


def test_list_pages_walk_every_row_exactly_once(backend: RedisBackend) -> None:
    """Follow next_cursor page by page: every task once, newest first, then no cursor."""
    ids = []
    for _ in range(7):
        ids.append(tasks.noop_task.enqueue().id)
        time.sleep(0.002)  # one task per millisecond: "newest first" has one answer
    seen: list[str] = []
    cursor: str | None = None
    pages = 0

    while True:
        page = conveyor_json("list", "--limit", "3", *(["--cursor", cursor] if cursor else []))
        seen += [item["id"] for item in page["items"]]
        pages += 1
        cursor = page["next_cursor"]
        if cursor is None:
            break
        assert pages < 10, "the cursor never ran out"

    assert seen == ids[::-1]
    assert pages >= 3


def test_list_pages_past_results_that_expired_before_their_index_was_trimmed(backend: RedisBackend) -> None:
    """Walk past index entries whose task already expired (no worker trimmed them yet) to the end."""
    # Given: an old and a new result around four whose records expired but stay indexed.
    [oldest] = finish(backend, tasks.noop_task, "SUCCESSFUL")
    time.sleep(0.002)
    expired = finish(backend, tasks.noop_task, "SUCCESSFUL", count=4)
    time.sleep(0.002)
    [newest] = finish(backend, tasks.noop_task, "SUCCESSFUL")
    backend.store.call(lambda c: c.delete(*[backend.keys.task(t) for t in expired]))
    seen: list[str] = []
    cursor: str | None = None

    # When: the list is walked three rows at a time.
    for _ in range(5):
        page = conveyor_json("list", "--limit", "3", *(["--cursor", cursor] if cursor else []))
        seen += [item["id"] for item in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break

    # Then: both live results, once each, and the walk ends.
    assert seen == [newest, oldest]
    assert cursor is None


def test_list_table_says_how_to_get_the_next_page(backend: RedisBackend) -> None:
    """Print the rows, then the command that lists the next page with the same filters."""
    ids = []
    for _ in range(3):
        ids.append(tasks.noop_task.using(queue_name="emails").enqueue().id)
        time.sleep(0.002)

    out = conveyor("list", "--queue", "emails", "--limit", "2")

    lines = out.splitlines()
    assert lines[0].split()[:4] == ["ID", "TASK", "QUEUE", "STATUS"]
    assert [line.split()[0] for line in lines[1:3]] == [ids[2], ids[1]]
    assert lines[1].split()[1:4] == ["tests.tasks.noop_task", "emails", "READY"]
    [more] = [line for line in lines if line.startswith("More: ")]
    words = more.split()
    assert words[1:7] == ["manage.py", "conveyor", "list", "--queue", "emails", "--limit"]
    cursor = words[words.index("--cursor") + 1]
    rest = conveyor_json("list", "--queue", "emails", "--limit", "2", "--cursor", cursor)
    assert [item["id"] for item in rest["items"]] == [ids[0]]


def test_list_filters_by_queue_status_and_task(backend: RedisBackend) -> None:
    """Return only the tasks matching every filter given, with Django's status names."""
    failed = finish(backend, tasks.noop_task, "FAILED", queue="a")
    succeeded = finish(backend, tasks.calculate_meaning_of_life, "SUCCESSFUL", queue="a")
    ready_a = tasks.echo.using(queue_name="a").enqueue().id
    ready_b = tasks.noop_task.using(queue_name="b").enqueue().id

    def listed(*args: str) -> set[str]:
        return {item["id"] for item in conveyor_json("list", *args)["items"]}

    assert listed("--queue", "a") == {*failed, *succeeded, ready_a}
    assert listed("--status", "FAILED") == set(failed)
    assert listed("--status", "successful") == set(succeeded)
    assert listed("--status", "READY") == {ready_a, ready_b}
    assert listed("--task", "tests.tasks.noop_task") == {*failed, ready_b}
    assert listed("--queue", "a", "--status", "READY", "--task", "tests.tasks.echo") == {ready_a}
    [row] = conveyor_json("list", "--status", "FAILED")["items"]
    assert row["last_error"] == "builtins.ValueError"
    assert datetime.fromisoformat(row["finished_at"]) <= datetime.now(UTC)
    assert "No tasks." in conveyor("list", "--queue", "b", "--status", "FAILED")


def test_show_prints_one_task_and_its_arguments_only_when_asked(backend: RedisBackend) -> None:
    """Show a task in full; its arguments and result appear only with --with-args."""
    task_id = tasks.echo.enqueue("secret-argument", key="value").id

    plain = conveyor("show", "--", task_id)
    assert f"id:               {task_id}" in plain.splitlines()
    assert "tests.tasks.echo" in plain
    assert "secret-argument" not in plain
    assert "--with-args" in plain

    document = conveyor_json("show", "--", task_id)
    assert (document["id"], document["status"], document["with_args"]) == (task_id, "READY", False)
    assert document["args"] is None and document["kwargs"] is None
    datetime.fromisoformat(document["enqueued_at"])

    full = conveyor_json("show", "--with-args", "--", task_id)
    assert (full["args"], full["kwargs"]) == (["secret-argument"], {"key": "value"})
    assert "secret-argument" in conveyor("show", "--with-args", "--", task_id)


def test_show_prints_the_errors_of_a_failed_task(backend: RedisBackend) -> None:
    """List each error's class path and traceback, and the workers that ran it."""
    [task_id] = finish(backend, tasks.noop_task, "FAILED")

    out = conveyor("show", "--", task_id)
    document = conveyor_json("show", "--", task_id)

    assert "error 1 of 1: builtins.ValueError" in out
    assert "ValueError: boom" in out
    assert document["errors"] == [
        {"exception_class_path": "builtins.ValueError", "traceback": "Traceback ...\nValueError: boom\n"}
    ]
    assert document["worker_ids"] == ["worker-t"]
    assert document["status"] == "FAILED"


# -- retry ------------------------------------------------------------------------


def test_retry_by_id_keeps_id_and_history_and_exits_1_for_a_missing_id(backend: RedisBackend) -> None:
    """Retry the FAILED one, leave the READY one, report the missing one, then exit non-zero."""
    [failed] = finish(backend, tasks.noop_task, "FAILED")
    ready = tasks.noop_task.enqueue().id
    out = io.StringIO()

    with pytest.raises(CommandError, match=f"1 of 3 task ids not found: {MISSING_ID}") as raised:
        call_command("conveyor", "retry", "--", failed, ready, MISSING_ID, stdout=out)

    assert raised.value.returncode == 1
    lines = out.getvalue().splitlines()
    assert lines[0].split() == [failed, "retried"]
    assert lines[1].startswith(ready) and "not FAILED" in lines[1]
    assert lines[2].startswith(MISSING_ID) and "no such task" in lines[2]
    assert lines[3] == "Retried 1 of 3 tasks."
    result = backend.get_result(failed)
    assert result.status == TaskResultStatus.READY
    assert [e.exception_class_path for e in result.errors] == ["builtins.ValueError"]
    assert result.worker_ids == ["worker-t"]
    [claimed] = backend.store.claim(["default"], "worker-u", LONG_LEASE_MS, 2)[:1]
    assert claimed.task_id in {failed, ready}


def test_retry_by_filter_dry_run_counts_without_changing_anything(backend: RedisBackend) -> None:
    """--dry-run counts what the filter matches and changes nothing; without it, exactly those go back."""
    in_a = finish(backend, tasks.noop_task, "FAILED", queue="a", count=3)
    in_b = finish(backend, tasks.noop_task, "FAILED", queue="b")

    assert (
        conveyor("retry", "--queue", "a", "--dry-run")
        == "Would retry 3 FAILED tasks (dry run: nothing changed).\n"
    )
    assert conveyor_json("retry", "--queue", "a", "--dry-run") == {"retried": 3, "dry_run": True}
    assert {status_of(backend, i) for i in in_a + in_b} == {TaskResultStatus.FAILED}
    assert queue_row(conveyor_json("status"), "a")["failed"] == 3

    assert conveyor("retry", "--queue", "a") == "Retried 3 FAILED tasks.\n"

    assert {status_of(backend, i) for i in in_a} == {TaskResultStatus.READY}
    assert status_of(backend, in_b[0]) == TaskResultStatus.FAILED
    assert conveyor_json("retry", "--queue", "a", "--dry-run") == {"retried": 0, "dry_run": True}


def test_retry_by_filter_on_task_path_and_since(backend: RedisBackend) -> None:
    """Match on task path and on finish time: --since 1h takes recent failures, a future time none."""
    noop = finish(backend, tasks.noop_task, "FAILED")
    echo = finish(backend, tasks.echo, "FAILED")

    assert conveyor_json("retry", "--since", "2099-01-01T00:00:00Z", "--dry-run")["retried"] == 0
    assert conveyor_json("retry", "--since", "1h", "--dry-run")["retried"] == 2
    assert conveyor_json("retry", "--task", "tests.tasks.echo")["retried"] == 1

    assert status_of(backend, echo[0]) == TaskResultStatus.READY
    assert status_of(backend, noop[0]) == TaskResultStatus.FAILED


def test_retry_by_id_dry_run_changes_nothing(backend: RedisBackend) -> None:
    """Preview retries by id: say what would happen, leave every task as it was."""
    [failed] = finish(backend, tasks.noop_task, "FAILED")

    document = conveyor_json("retry", "--dry-run", "--", failed)

    assert document == {"outcomes": {failed: "retried"}, "retried": 1, "dry_run": True}
    assert status_of(backend, failed) == TaskResultStatus.FAILED


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((), "name task ids, or choose FAILED tasks"),
        (("abc", "--queue", "default"), "not both"),
        (("not an id!",), "is not a task id"),
        (("--since", "yesterday"), "neither an age"),
    ],
    ids=["nothing", "both", "malformed-id", "bad-since"],
)
def test_retry_refuses_unclear_requests(backend: RedisBackend, args: tuple[str, ...], message: str) -> None:
    """Refuse with a CommandError before anything changes."""
    with pytest.raises(CommandError, match=message):
        conveyor("retry", *args)


# -- cancel -----------------------------------------------------------------------


def test_cancel_each_state_and_exit_1_for_a_missing_id(backend: RedisBackend) -> None:
    """A READY task is FAILED with TaskCancelled, a RUNNING one is asked to stop, a finished one is left."""
    [done] = finish(backend, tasks.noop_task, "SUCCESSFUL")
    running = tasks.noop_task.enqueue().id
    backend.store.claim(["default"], "worker-t", LONG_LEASE_MS, 1)
    ready = tasks.noop_task.enqueue().id
    out = io.StringIO()

    with pytest.raises(CommandError, match="1 of 4 task ids not found") as raised:
        call_command("conveyor", "cancel", "--", ready, running, done, MISSING_ID, stdout=out)

    assert raised.value.returncode == 1
    lines = out.getvalue().splitlines()
    assert [line.split()[0] for line in lines[:4]] == [ready, running, done, MISSING_ID]
    assert "cancelled" in lines[0] and "asked to stop" in lines[1] and "already finished" in lines[2]
    assert lines[4] == "Cancelled 1 and asked 1 to stop, of 4 tasks."
    result = backend.get_result(ready)
    assert result.status == TaskResultStatus.FAILED
    assert [e.exception_class_path for e in result.errors] == ["conveyor.exceptions.TaskCancelled"]
    assert status_of(backend, running) == TaskResultStatus.RUNNING
    assert status_of(backend, done) == TaskResultStatus.SUCCESSFUL
    [row] = [r for r in conveyor_json("list", "--status", "RUNNING")["items"] if r["id"] == running]
    assert row["cancel_requested"] is True
    assert "RUNNING (cancelling)" in conveyor("list", "--status", "RUNNING")


def test_cancel_json_reports_each_outcome(backend: RedisBackend) -> None:
    """Give scripts one outcome per id and the counts."""
    scheduled = tasks.noop_task.using(run_after=datetime.now(UTC) + timedelta(hours=1)).enqueue().id

    document = conveyor_json("cancel", "--", scheduled)

    assert document == {"outcomes": {scheduled: "cancelled"}, "cancelled": 1, "requested": 0}
    assert status_of(backend, scheduled) == TaskResultStatus.FAILED


# -- pause and resume -------------------------------------------------------------


def test_pause_stops_claims_while_tasks_keep_arriving(backend: RedisBackend) -> None:
    """A paused queue takes new tasks but no worker claims them until it is resumed."""
    first = tasks.noop_task.enqueue().id

    assert conveyor("pause", "default").startswith("Paused queue 'default'")
    second = tasks.noop_task.enqueue().id

    assert backend.store.claim(["default"], "worker-t", LONG_LEASE_MS, 10) == []
    row = queue_row(conveyor_json("status"), "default")
    assert (row["paused"], row["ready"]) == (True, 2)
    [default_line] = [line for line in conveyor("status").splitlines() if line.startswith("default ")]
    assert default_line.split()[-1] == "yes"

    assert conveyor("resume", "default").startswith("Resumed queue 'default'")
    claimed = backend.store.claim(["default"], "worker-t", LONG_LEASE_MS, 10)
    assert [c.task_id for c in claimed] == [first, second]
    assert queue_row(conveyor_json("status"), "default")["paused"] is False


# -- purge ------------------------------------------------------------------------


def test_purge_results_dry_run_then_prompt_then_yes(backend: RedisBackend) -> None:
    """Count with --dry-run; without --yes ask on a terminal and refuse without one; delete on yes."""
    succeeded = finish(backend, tasks.noop_task, "SUCCESSFUL", count=2)
    [failed] = finish(backend, tasks.noop_task, "FAILED")
    time.sleep(0.01)  # every result is now older than 0 seconds by the server clock
    args = ("purge", "--older-than", "0s", "--status", "SUCCESSFUL")

    assert conveyor(*args, "--dry-run") == (
        "Would delete 2 SUCCESSFUL results older than 0s in every queue (dry run: nothing deleted).\n"
    )
    with pytest.raises(CommandError, match="refusing without --yes, as stdin is not a terminal"):
        conveyor(*args, stdin=io.StringIO("y\n"))
    declined = conveyor(*args, stdin=Terminal("n\n"))
    assert declined == "Delete 2 SUCCESSFUL results older than 0s in every queue? [y/N] Nothing deleted.\n"
    assert {status_of(backend, i) for i in succeeded} == {TaskResultStatus.SUCCESSFUL}

    accepted = conveyor(*args, stdin=Terminal("y\n"))

    assert accepted.endswith("[y/N] Deleted 2 SUCCESSFUL results older than 0s in every queue.\n")
    for task_id in succeeded:
        with pytest.raises(TaskResultDoesNotExist):
            backend.get_result(task_id)
    assert status_of(backend, failed) == TaskResultStatus.FAILED
    assert conveyor("purge", "--older-than", "0s", "--yes") == (
        "Deleted 1 finished results older than 0s in every queue.\n"
    )
    assert conveyor("purge", "--older-than", "0s", "--yes").startswith("Nothing to delete")
    row = queue_row(conveyor_json("status"), "default")
    assert (row["failed"], row["succeeded"]) == (0, 0)


def test_purge_results_keeps_younger_results_and_other_queues(backend: RedisBackend) -> None:
    """--older-than 1h leaves results from just now; --queue leaves other queues' results."""
    [in_a] = finish(backend, tasks.noop_task, "FAILED", queue="a")
    [in_b] = finish(backend, tasks.noop_task, "FAILED", queue="b")
    time.sleep(0.01)

    assert conveyor("purge", "--older-than", "1h", "--yes").startswith("Nothing to delete")
    assert conveyor("purge", "--older-than", "0s", "--queue", "a", "--yes") == (
        "Deleted 1 finished results older than 0s in queue 'a'.\n"
    )
    with pytest.raises(TaskResultDoesNotExist):
        backend.get_result(in_a)
    assert status_of(backend, in_b) == TaskResultStatus.FAILED


def test_purge_ready_drops_a_queues_ready_tasks_in_batches(backend: RedisBackend) -> None:
    """Delete every READY task of one queue (ready and scheduled), a small batch at a time."""
    ready = [tasks.noop_task.enqueue().id for _ in range(5)]
    later = tasks.noop_task.using(run_after=datetime.now(UTC) + timedelta(hours=1)).enqueue().id
    other = tasks.noop_task.using(queue_name="keep").enqueue().id

    assert conveyor("purge", "--ready", "--queue", "default", "--dry-run").startswith("Would delete 6 READY")
    with pytest.raises(CommandError, match="refusing without --yes"):
        conveyor("purge", "--ready", "--queue", "default", stdin=io.StringIO(""))
    out = conveyor("purge", "--ready", "--queue", "default", "--batch", "2", "--yes")

    assert out == "Deleted 6 READY tasks (ready and scheduled) of queue 'default'.\n"
    for task_id in [*ready, later]:
        with pytest.raises(TaskResultDoesNotExist):
            backend.get_result(task_id)
    assert status_of(backend, other) == TaskResultStatus.READY
    row = queue_row(conveyor_json("status"), "default")
    assert (row["ready"], row["scheduled"]) == (0, 0)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((), "purge needs --older-than AGE"),
        (("--ready",), "purge --ready needs --queue"),
        (("--ready", "--queue", "default", "--older-than", "1d"), "do not go with --ready"),
        (("--older-than", "7 days"), "is not an age"),
        (("--older-than", "1d", "--batch", "0"), "at least 1"),
    ],
    ids=["nothing", "ready-without-queue", "ready-with-age", "bad-age", "bad-batch"],
)
def test_purge_refuses_unclear_requests(backend: RedisBackend, args: tuple[str, ...], message: str) -> None:
    """Refuse with a CommandError before counting or deleting anything."""
    tasks.noop_task.enqueue()
    with pytest.raises(CommandError, match=message):
        conveyor("purge", *args, "--yes")


# -- errors -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "args",
    [
        ("pause", "nope"),
        ("resume", "nope"),
        ("list", "--queue", "nope"),
        ("retry", "--queue", "nope"),
        ("purge", "--ready", "--queue", "nope", "--yes"),
        ("purge", "--older-than", "1d", "--queue", "nope", "--yes"),
    ],
    ids=["pause", "resume", "list", "retry", "purge-ready", "purge-results"],
)
def test_an_unknown_queue_is_a_clear_error(backend: RedisBackend, args: tuple[str, ...]) -> None:
    """Name the queue nobody ever enqueued to, instead of acting on nothing."""
    tasks.noop_task.enqueue()
    with pytest.raises(CommandError, match="nope"):
        conveyor(*args)


@pytest.mark.parametrize("subcommand", ["show", "retry", "cancel"])
def test_a_malformed_id_is_a_clear_error(backend: RedisBackend, subcommand: str) -> None:
    """Refuse what cannot be a task id before talking to Redis."""
    with pytest.raises(CommandError, match=r"'\.\./etc' is not a task id"):
        conveyor(subcommand, "../etc")


def test_an_id_that_starts_with_a_dash_goes_after_double_dash(backend: RedisBackend) -> None:
    """Ids may start with '-' (URL-safe base64): after '--' they are ids; before, the error says so."""
    with pytest.raises(CommandError, match="no task '-AbC'"):
        conveyor("show", "--", "-AbC")
    with pytest.raises(CommandError, match="goes after '--'"):
        conveyor("cancel", "-AbC")


def test_a_cursor_not_from_a_page_is_a_clear_error(backend: RedisBackend) -> None:
    """Refuse a cursor this command did not print."""
    tasks.noop_task.enqueue()
    with pytest.raises(CommandError, match="'garbage' is not a cursor"):
        conveyor("list", "--cursor", "garbage")


def test_show_of_an_unknown_id_is_a_clear_error(backend: RedisBackend) -> None:
    """Say which id has no task."""
    with pytest.raises(CommandError, match=MISSING_ID):
        conveyor("show", MISSING_ID)


def test_an_unreachable_redis_is_a_clear_error(
    configure_tasks: Callable[..., override_settings], closed_port: int
) -> None:
    """Report RedisUnavailable's message as a CommandError, for reads and writes alike."""
    with configure_tasks(URL=f"redis://127.0.0.1:{closed_port}/0"):
        for args in (("status",), ("list",), ("pause", "default")):
            with pytest.raises(CommandError, match=str(closed_port)):
                conveyor(*args)


def test_a_backend_that_is_not_conveyor_is_refused(redis_url: str) -> None:
    """Refuse Django's own backends and unknown aliases by name."""
    immediate = {"BACKEND": "django.tasks.backends.immediate.ImmediateBackend"}
    with override_settings(TASKS={"default": immediate}):
        with pytest.raises(CommandError, match=r"not conveyor\.RedisBackend"):
            conveyor("status")
        with pytest.raises(CommandError, match="nope"):
            conveyor("status", "--backend", "nope")


# -- as a real process ------------------------------------------------------------


def manage(prefix: str, redis_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    """Run `python -m django conveyor ARGS` with the test settings in a child process."""
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "tests.settings",
        "CONVEYOR_TEST_REDIS_URL": redis_url,
        "CONVEYOR_TEST_PREFIX": prefix,
        "PYTHONPATH": str(ROOT),
    }
    return subprocess.run(
        [sys.executable, "-m", "django", "conveyor", *args],
        env=env,
        cwd=str(ROOT),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.mark.subprocess
def test_the_command_exits_0_with_json_and_1_with_a_message(
    backend: RedisBackend, redis_url: str, prefix: str, closed_port: int
) -> None:
    """A real process: status --json prints parseable JSON and exits 0; errors exit 1 without a traceback."""
    finish(backend, tasks.noop_task, "SUCCESSFUL")
    tasks.noop_task.enqueue()
    time.sleep(0.01)

    ok = manage(prefix, redis_url, "status", "--json")
    assert ok.returncode == 0, ok.stderr
    assert queue_row(json.loads(ok.stdout), "default")["ready"] == 1

    for done, fragment in [
        (manage(prefix, f"redis://127.0.0.1:{closed_port}/0", "status"), str(closed_port)),
        (manage(prefix, redis_url, "show", MISSING_ID), MISSING_ID),
        (manage(prefix, redis_url, "cancel", MISSING_ID), "1 of 1 task ids not found"),
        (manage(prefix, redis_url, "pause", "nope"), "nope"),
        (manage(prefix, redis_url, "purge", "--older-than", "0s"), "refusing without --yes"),
    ]:
        assert done.returncode == 1, (done.args, done.stdout, done.stderr)
        assert done.stderr.startswith("CommandError: ") and fragment in done.stderr, done.stderr
        assert "Traceback" not in done.stderr

    usage = manage(prefix, redis_url, "purge", "--older-than", "soon")
    assert usage.returncode == 2 and "is not an age" in usage.stderr
