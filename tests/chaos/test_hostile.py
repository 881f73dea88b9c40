"""Scenario 6: hostile records planted in a ready set, and hostile queue names through the backend."""

from __future__ import annotations

import json
import re
import secrets
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from conveyor import RedisBackend, codec
from django.tasks import TaskResultStatus
from django.tasks.exceptions import InvalidTask

from tests.chaos import state
from tests.chaos.conftest import Figures, Scenario, ScenarioFactory
from tests.chaos.fleet import ChaosWorker, wait_until
from tests.chaos.ledger import overlapping

DEADLINE = 90.0
LEDGERED = "tests.chaos.chaos_tasks.ledgered"
REJECTED = "conveyor.exceptions.RejectedTask"
TEN_MB = 10 * 1024 * 1024
DEEP = 100_000


def plant(backend: RedisBackend, fields: dict[str, str | bytes], *, queue: str = "default") -> str:
    """Write a task hash by hand straight into a queue's ready set (priority 10); return its id."""
    task_id = "planted" + secrets.token_hex(8)
    keys = backend.keys

    def write(client: Any) -> None:
        score = codec.ready_score(10, int(client.incr(keys.seq)))
        pipe = client.pipeline()
        pipe.hset(keys.task(task_id), mapping={**fields, "score": str(score)})
        pipe.zadd(keys.ready(queue), {task_id: score})
        pipe.zadd(keys.ready_since(queue), {task_id: int(time.time() * 1000)})
        pipe.sadd(keys.queues, queue)
        pipe.lpush(keys.wake(queue), "1")
        pipe.execute()

    backend.store.call(write)
    return task_id


def record(
    ledger: str, key: str, task_path: str = LEDGERED, **changes: str | bytes
) -> dict[str, str | bytes]:
    """Return the fields enqueue writes for a ledgered task under key, with some fields changed."""
    fields: dict[str, str | bytes] = dict(
        codec.new_record(
            task_path=task_path,
            queue="default",
            priority=10,
            backend="default",
            run_after=None,
            args_json=json.dumps([ledger, key]),
            kwargs_json="{}",
            enqueued_at=datetime.now(UTC),
        )
    )
    fields.update(changes)
    return fields


def without(fields: dict[str, str | bytes], *names: str) -> dict[str, str | bytes]:
    return {k: v for k, v in fields.items() if k not in names}


def hostile_records(ledger: str, sentinel: Path) -> dict[str, tuple[dict[str, str | bytes], str]]:
    """Return kind -> (fields, pattern its RejectedTask reason must match); each record's key is its kind."""
    touch = json.dumps([f"touch {sentinel}"])
    kw = json.dumps({"ledger": ledger, "key": "kwargs carry the ledger"})

    def r(key: str, task_path: str = LEDGERED, **changes: str | bytes) -> dict[str, str | bytes]:
        return record(ledger, key, task_path, **changes)

    return {
        "missing task path": (without(r("missing task path"), "task"), r"'task' is missing"),
        "missing version": (without(r("missing version"), "v"), r"'v' is missing"),
        "truncated record": (
            without(r("truncated record"), "queue", "priority", "backend", "args", "kwargs"),
            r"is missing",
        ),
        "unknown version": (r("unknown version", v="99"), r"version '99'"),
        "args not JSON": (r("args not JSON", args="[1, 2", kwargs=kw), r"'args' is not valid JSON"),
        "args not a list": (r("args not a list", args='{"a": 1}', kwargs=kw), r"'args' is not a JSON list"),
        "kwargs not an object": (r("kwargs not an object", kwargs="[]"), r"'kwargs' is not a JSON dict"),
        "non-UTF-8 args": (r("non-UTF-8 args", args=b'["\xff\xfe"]', kwargs=kw), r"decode|UTF-8|utf-8"),
        "non-UTF-8 task path": (
            r("non-UTF-8 task path", task=b"tests.chaos.chaos_tasks.ledg\xffered"),
            r"decode|UTF-8|utf-8",
        ),
        "errors not JSON": (r("errors not JSON", errors="{"), r"'errors' is not valid JSON"),
        "worker_ids not a list": (r("worker_ids not a list", worker_ids='"w"'), r"'worker_ids' is not"),
        "enqueued_at not a timestamp": (r("enqueued_at not a timestamp", enqueued_at="noon"), r"timestamp"),
        "priority not a number": (r("priority not a number", priority="high"), r"decoded|priority"),
        "priority out of range": (r("priority out of range", priority="500"), r"no longer valid|priority"),
        "unknown backend alias": (r("unknown backend alias", backend="nope"), r"no longer valid|backend"),
        "empty task path": (r("empty task path", ""), r"not under an allowed module"),
        "outside the allowed modules": (
            r("outside the allowed modules", "tests.worker.evil_module.run"),
            r"not under an allowed module",
        ),
        "a prefix of an allowed module's text": (
            r("a prefix of an allowed module's text", "tests.chaosevil.run"),
            r"not under an allowed module",
        ),
        "os.system": (r("os.system", "os.system", args=touch), r"not under an allowed module"),
        "subprocess.run": (
            r("subprocess.run", "subprocess.run", args=json.dumps([["touch", str(sentinel)]])),
            r"not under an allowed module",
        ),
        "a plain function": (r("a plain function", "tests.chaos.chaos_tasks.not_a_task"), r"is not a Task"),
        "a module attribute": (r("a module attribute", "tests.chaos.chaos_tasks.os"), r"is not a Task"),
        "a module that raises on import": (
            r("a module that raises on import", "tests.chaos.raises_on_import.run"),
            r"fails at import time",
        ),
        "args nested 100,000 deep": (
            r("args nested 100,000 deep", args="[" * DEEP + "]" * DEEP, kwargs=kw),
            r"nest|deep|recursion|Recursion",
        ),
        "kwargs nested 100,000 deep": (
            r("kwargs nested 100,000 deep", kwargs='{"a":' * DEEP + "1" + "}" * DEEP),
            r"nest|deep|recursion|Recursion",
        ),
        "a 10 MB payload": (
            r("a 10 MB payload", args=json.dumps([ledger, "x" * TEN_MB])),
            r"MAX_PAYLOAD_BYTES",
        ),
    }


# Paths under the allowed modules that do not import here: a deploy may be rolling out the
# code, so the worker may put them back for later (postpone) or fail them; it never runs them.
UNKNOWN_PATHS = {
    "no such module": "tests.chaos.no_such_module.run",
    "no such attribute": "tests.chaos.chaos_tasks.no_such_task",
    "os.system through an allowed module": "tests.chaos.chaos_tasks.os.system",
}


def _settled(backend: RedisBackend, task_id: str, *, may_wait: bool, may_skip: bool) -> bool:
    """Tell whether a planted record got its outcome: FAILED, postponed (may_wait) or left (may_skip)."""
    fields = state.raw(backend, task_id)
    if fields.get(b"status") == b"FAILED":
        return True
    out_of_ready = task_id not in state.members(backend, backend.keys.ready("default"))
    if may_skip and out_of_ready and task_id not in state.members(backend, backend.keys.running("default")):
        return True
    return may_wait and task_id in state.members(backend, backend.keys.scheduled("default"))


def _last_error(fields: dict[bytes, bytes]) -> dict[str, str]:
    errors = state.raw_errors(fields)
    return errors[-1] if errors else {}


def _healthy(worker: ChaosWorker) -> None:
    assert worker.running(), f"the worker died:\n{worker.log_tail()}"
    assert worker.status("/readyz") == 200 and worker.status("/livez") == 200
    assert worker.status("/metrics") == 200


def _good_task_runs(s: Scenario, key: str) -> None:
    result = s.enqueue(key)
    wait_until(lambda: not state.unfinished(s.backend, [result.id]), DEADLINE, f"the good task {key}")
    assert s.backend.get_result(result.id).status == TaskResultStatus.SUCCESSFUL


def test_hostile_records_are_refused_and_nothing_runs_that_should_not(
    make_scenario: ScenarioFactory, tmp_path: Path, figures: Figures
) -> None:
    """Given bad records planted ahead of a good task, each is FAILED (or refused) and the good one runs."""
    s = make_scenario()
    sentinel, marker = tmp_path / "os-system-ran", tmp_path / "evil-module-imported"
    worker = s.fleet.spawn(
        "--concurrency",
        "2",
        "--lease",
        "5",
        name="hostile",
        env={"CONVEYOR_ALLOWED_TASK_MODULES": "tests.chaos", "CONVEYOR_TEST_MARKER": str(marker)},
    )
    worker.wait_http("/readyz", 200, DEADLINE)

    # Given: every kind of bad record waits in the ready set ahead of a good task.
    kinds = hostile_records(s.ledger_path, sentinel)
    planted = {kind: plant(s.backend, fields) for kind, (fields, _) in kinds.items()}
    unknown = {
        kind: plant(s.backend, record(s.ledger_path, kind, path, args=json.dumps([f"touch {sentinel}"])))
        for kind, path in UNKNOWN_PATHS.items()
    }
    exploded = plant(s.backend, record(s.ledger_path, "unknown status", status="EXPLODED"))
    good = s.enqueue("good")
    assert len(planted) + len(unknown) + 1 >= 17

    # When: the worker goes through them.
    wait_until(lambda: not state.unfinished(s.backend, [good.id]), DEADLINE, "the good task")
    wait_until(
        lambda: (
            all(_settled(s.backend, t, may_wait=False, may_skip=False) for t in planted.values())
            and all(_settled(s.backend, t, may_wait=True, may_skip=False) for t in unknown.values())
            and _settled(s.backend, exploded, may_wait=False, may_skip=False)
        ),
        DEADLINE,
        "every planted record to get its outcome",
    )

    # Then: each bad record is FAILED with RejectedTask and its reason ...
    wrong = []
    for kind, task_id in planted.items():
        fields = state.raw(s.backend, task_id)
        last = _last_error(fields)
        pattern = kinds[kind][1]
        if (
            fields.get(b"status") != b"FAILED"
            or last.get("exception_class_path") != REJECTED
            or not re.search(pattern, last.get("traceback", ""))
        ):
            wrong.append(f"{kind}: status={fields.get(b'status')!r} error={str(last)[:300]}")
    # ... a path that does not import is FAILED the same way or put back for later ...
    for kind, task_id in unknown.items():
        fields = state.raw(s.backend, task_id)
        if fields.get(b"status") == b"FAILED" and _last_error(fields).get("exception_class_path") != REJECTED:
            wrong.append(f"{kind}: FAILED with {_last_error(fields)}")
    # ... a record with an unknown status is FAILED with its reason too, out of every queue set.
    raw = state.raw(s.backend, exploded)
    if raw.get(b"status") != b"FAILED" or "unknown status" not in _last_error(raw).get("traceback", ""):
        wrong.append(f"unknown status: became {raw.get(b'status')!r} {_last_error(raw)}")
    assert not wrong, "\n".join(wrong)

    # And: nothing ran or was imported that should not have been, and the worker goes on.
    assert not sentinel.exists(), "os.system or subprocess.run ran"
    assert not marker.exists(), "a module outside the allowed modules was imported"
    ran = {e.key for e in s.ledger.executions()}
    assert ran == {"good"}, f"bad records ran: {ran - {'good'}}"
    _healthy(worker)
    _good_task_runs(s, "good after")
    assert s.backend.get_result(good.id).status == TaskResultStatus.SUCCESSFUL
    postponed = [k for k, t in unknown.items() if state.raw(s.backend, t).get(b"status") != b"FAILED"]
    figures(
        f"{len(planted) + len(unknown) + 1} bad records: {len(planted)} FAILED with RejectedTask and "
        f"their reason, {len(postponed)} of {len(unknown)} unimportable paths postponed, unknown "
        f"status FAILED; nothing ran, the worker went on"
    )


# Names that spell another queue's key in a naive layout ("<q>:scheduled" is queue q's schedule
# if kinds come after the name), braces (the cluster hash tag), unicode and a 10 kB name.
HOSTILE_NAMES = [
    "billing:scheduled",
    "jobs:running",
    "mail:wake",
    "stats:since",
    "{braces}",
    "a}b{c",
    "queue:default",
    "队列-émoji-🚀",
    "q" * 10_240,
]
NEIGHBOURS = ["billing", "jobs", "mail", "stats", "default"]


def test_hostile_queue_names_are_refused_clearly_or_run_correctly(
    make_scenario: ScenarioFactory, figures: Figures
) -> None:
    """Each odd queue name is refused at enqueue with a clear error, or its tasks run once, on time."""
    s = make_scenario()
    worker = s.fleet.spawn("--concurrency", "4", "--lease", "2", name="names")
    worker.wait_http("/readyz", 200, DEADLINE)

    # Given: a scheduled task, a long running one and a plain one in the plain queues.
    due = datetime.now(UTC) + timedelta(seconds=4)
    s.enqueue("billing later", 0.0, queue_name="billing", run_after=due)
    s.enqueue("jobs long", 3.0, queue_name="jobs")
    s.enqueue("mail", queue_name="mail")
    s.enqueue("stats", queue_name="stats")
    wait_until(lambda: "jobs long" in s.ledger.by_key(), DEADLINE, "the long task in 'jobs' to start")

    # When: tasks go to names that spell those queues' other keys, and to odd names.
    refused: dict[str, BaseException] = {}
    accepted: dict[str, str] = {}
    for name in HOSTILE_NAMES:
        key = f"queue {name[:40]}"
        try:
            accepted[name] = s.enqueue(key, 0.05, queue_name=name).id
        except (InvalidTask, ValueError, TypeError) as exc:
            refused[name] = exc
    for name, exc in refused.items():
        assert str(exc).strip(), f"queue name {name[:40]!r} refused without a message: {exc!r}"
    stored = s.backend.store.call(lambda c: c.smembers(s.backend.keys.queues))
    assert not set(refused) & {m.decode() for m in stored}, "a refused queue name was stored"

    # Then: every accepted task runs exactly once, none early, none beside itself.
    ids = set(s.keys.values())
    wait_until(lambda: not state.unfinished(s.backend, ids), DEADLINE, "every task of every queue")
    runs = s.ledger.by_task()
    problems = []
    for task_id, result in state.results(s.backend, ids).items():
        executions = runs.get(task_id, [])
        if result.status != TaskResultStatus.SUCCESSFUL or len(executions) != 1:
            problems.append(f"{result.task.queue_name[:40]!r}: {result.status}, {len(executions)} runs")
        if overlapping(executions, {}, time.monotonic()):
            problems.append(f"{result.task.queue_name[:40]!r}: ran twice at once")
    later = s.ledger.by_key()["billing later"][0]
    if later.started < due.timestamp() - 0.01:
        problems.append(f"'billing' task ran {due.timestamp() - later.started:.2f}s before its run_after")
    for name in [*accepted, *NEIGHBOURS]:
        counts = state.queue_counts(s.backend, name)
        if not counts.empty:
            problems.append(f"queue {name[:40]!r} still holds ids: {counts}")
    for name, task_id in accepted.items():
        if s.backend.get_result(task_id).task.queue_name != name:
            problems.append(f"queue {name[:40]!r}: get_result() names another queue")
    assert not problems, "\n".join(problems)
    figures(
        f"{len(accepted)} names run correctly, {len(refused)} refused at enqueue "
        f"({'; '.join(f'{n[:12]}...: {type(e).__name__}' for n, e in refused.items())})"
    )

    # And: the worker is healthy and still runs work.
    _healthy(worker)
    _good_task_runs(s, "good after")
