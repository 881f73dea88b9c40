"""What operators see: /metrics, /livez, /readyz and one JSON object per log line."""

from __future__ import annotations

import io
import json
import logging
import re
import secrets
import signal
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import redis
from conveyor.store import Store
from conveyor_worker.logs import BatchingHandler, JsonFormatter, TaskLines, TextFormatter
from conveyor_worker.metrics import Metrics
from conveyor_worker.probes import Probes

from devtools.redis_server import RedisProcess
from tests import tasks

from . import worker_tasks
from .conftest import SpawnWorker, real_backend, status_of, wait_finished, wait_until

SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$")
LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def metric(text: str, name: str, **labels: str) -> float | None:
    """Return one sample's value from Prometheus text (None when absent), whatever its labels' order."""
    for line in text.splitlines():
        match = SAMPLE.match(line)
        if match and match[1] == name and dict(LABEL.findall(match[2] or "")) == labels:
            return float(match[3])
    return None


# -- /metrics -----------------------------------------------------------------------


@pytest.mark.subprocess
def test_metrics_only_mode_reports_queue_depths_and_runs_nothing(
    backend: object, spawn_worker: SpawnWorker, scratch: Path
) -> None:
    """--metrics-only serves the queue gauges the autoscaler reads, and claims no task."""
    b = real_backend()
    ready = [tasks.append_line.enqueue(str(scratch), "no") for _ in range(3)]
    later = datetime.now(UTC) + timedelta(hours=1)
    for _ in range(2):
        tasks.append_line.using(run_after=later).enqueue(str(scratch), "no")
    tasks.append_line.using(queue_name="other").enqueue(str(scratch), "no")

    w = spawn_worker("--metrics-only")
    w.wait_http("/readyz", 200)
    text = w.http("/metrics")[1]

    assert metric(text, "conveyor_worker_up") == 1
    assert metric(text, "conveyor_queue_ready", queue="default") == 3
    assert metric(text, "conveyor_queue_scheduled", queue="default") == 2
    assert metric(text, "conveyor_queue_running", queue="default") == 0
    assert metric(text, "conveyor_queue_ready", queue="other") == 1
    age = metric(text, "conveyor_queue_oldest_ready_age_seconds", queue="default")
    assert age is not None and age >= 0
    w.send(signal.SIGTERM)
    assert w.wait_exit() == 0
    assert [status_of(b, r.id) for r in ready] == ["READY"] * 3
    assert not scratch.exists()


@pytest.mark.subprocess
def test_task_counters_and_the_duration_histogram_grow_as_tasks_run(
    backend: object, spawn_worker: SpawnWorker, tmp_path: Path
) -> None:
    """Counters count started/succeeded/failed/retried per queue; the histogram counts each attempt."""
    b = real_backend()
    w = spawn_worker("--concurrency", "2")
    w.wait_http("/readyz", 200)
    first = [
        tasks.calculate_meaning_of_life.enqueue(),
        tasks.calculate_meaning_of_life.enqueue(),
        worker_tasks.fails_with_message.enqueue("boom"),
        tasks.flaky.enqueue(str(tmp_path / "count"), 1),
    ]
    for r in first:
        wait_finished(b, r.id)

    text = w.http("/metrics")[1]
    assert metric(text, "conveyor_tasks_started_total", queue="default") == 5  # flaky ran twice
    assert metric(text, "conveyor_tasks_succeeded_total", queue="default") == 3
    assert metric(text, "conveyor_tasks_failed_total", queue="default") == 1
    assert metric(text, "conveyor_tasks_retried_total", queue="default") == 1
    assert metric(text, "conveyor_task_duration_seconds_count", queue="default") == 5
    assert metric(text, "conveyor_task_duration_seconds_bucket", queue="default", le="+Inf") == 5
    assert metric(text, "conveyor_task_duration_seconds_sum", queue="default") is not None
    assert "# TYPE conveyor_task_duration_seconds histogram" in text
    assert metric(text, "conveyor_worker_slots") == 2
    assert metric(text, "conveyor_worker_busy_slots") == 0

    more = [tasks.calculate_meaning_of_life.enqueue() for _ in range(2)]
    for r in more:
        wait_finished(b, r.id)
    text = w.http("/metrics")[1]
    assert metric(text, "conveyor_tasks_succeeded_total", queue="default") == 5
    assert metric(text, "conveyor_task_duration_seconds_count", queue="default") == 7
    w.send(signal.SIGTERM)
    assert w.wait_exit() == 0


def test_a_scrape_costs_the_same_redis_commands_for_ten_or_a_thousand_tasks(
    backend: object, own_redis: RedisProcess, tasks_on: Callable[[str], Any]
) -> None:
    """Queue gauges are read with a fixed number of commands per queue, not per task."""
    client = redis.Redis.from_url(own_redis.url)

    def processed() -> int:
        return int(client.info("stats")["total_commands_processed"])

    with tasks_on(own_redis.url):
        b = real_backend()
        store = Store(b.settings, b.keys)
        probes = Probes(
            store=store,
            metrics=Metrics(1),
            queues=lambda: sorted(store.known_queues()),
            alive=lambda: True,
            ready=lambda: True,
        )

        def scrape_cost() -> tuple[int, str]:
            before = processed()
            text = probes.metrics_text()
            return processed() - before - 1, text  # less the second INFO

        for _ in range(10):
            tasks.noop_task.enqueue()
        tasks.noop_task.using(queue_name="other").enqueue()
        probes.metrics_text()  # connect first: the handshake is not part of a scrape
        small, text = scrape_cost()
        assert metric(text, "conveyor_queue_ready", queue="default") == 10

        for _ in range(990):
            tasks.noop_task.enqueue()
        large, text = scrape_cost()
        assert metric(text, "conveyor_queue_ready", queue="default") == 1000

        assert small == large
        # SMEMBERS + TIME + six per queue, two queues + the worker registry's ZRANGEBYSCORE (no MGET: none)
        assert large <= 2 + 6 * 2 + 1
        store.close()
    client.close()


# -- probes -------------------------------------------------------------------------


@pytest.mark.subprocess
def test_probe_paths(backend: object, spawn_worker: SpawnWorker) -> None:
    """/livez and /readyz answer 200 on a healthy worker; other paths 404."""
    w = spawn_worker()
    w.wait_http("/readyz", 200)
    assert w.http("/livez") == (200, "ok\n")
    assert w.http("/readyz?verbose=1") == (200, "ready\n")
    assert w.http("/nope")[0] == 404
    w.send(signal.SIGTERM)
    assert w.wait_exit() == 0


# -- logs ---------------------------------------------------------------------------


@pytest.mark.subprocess
def test_every_stdout_line_is_json_with_task_fields_and_no_arguments_at_info(
    backend: object, spawn_worker: SpawnWorker, tmp_path: Path
) -> None:
    """Task lines carry task_id, task_path, queue, attempt, worker_id, status (and duration_ms at the end)."""
    b = real_backend()
    secret = "s3cr3t-" + secrets.token_hex(8)
    error_text = "err-" + secrets.token_hex(8)
    ok = worker_tasks.secret_echo.enqueue(secret)
    bad = worker_tasks.fails_with_message.enqueue(error_text)
    retried = tasks.flaky.enqueue(str(tmp_path / "count"), 1)

    w = spawn_worker("--concurrency", "1", worker_id="log-test-worker")
    for r in (ok, bad, retried):
        wait_finished(b, r.id)
    w.send(signal.SIGTERM)
    assert w.wait_exit() == 0

    assert w.lines, "the worker logged nothing"
    records = []
    for line in w.lines:
        record = __import__("json").loads(line)  # every line must parse
        assert isinstance(record, dict)
        assert {"ts", "level", "logger", "message"} <= record.keys()
        records.append(record)

    started = [r for r in records if r.get("event") == "task_started"]
    finished = [r for r in records if r.get("event") == "task_finished"]
    assert {r["task_id"] for r in started} == {ok.id, bad.id, retried.id}
    for r in started:
        assert r["level"] == "info"
        assert r["status"] == "RUNNING"
        assert r["queue"] == "default"
        assert r["worker_id"] == "log-test-worker"
        assert r["task_path"].startswith("tests.")
        assert r["attempt"] >= 1
    by_id = {r["task_id"]: r for r in finished}
    assert by_id[ok.id]["status"] == "SUCCESSFUL"
    assert by_id[ok.id]["task_path"] == "tests.worker.worker_tasks.secret_echo"
    assert by_id[ok.id]["attempt"] == 1
    assert isinstance(by_id[ok.id]["duration_ms"], (int, float))
    failed = by_id[bad.id]
    assert failed["status"] == "FAILED" and failed["level"] == "error"
    assert failed["error"] == "builtins.ValueError"
    assert "Traceback" in failed["traceback"]
    assert by_id[retried.id]["attempt"] == 2
    [retry] = [r for r in records if r.get("event") == "task_retry"]
    assert retry["task_id"] == retried.id and "traceback" in retry and retry["level"] == "warning"
    assert {r.get("event") for r in records} >= {"worker_started", "worker_draining", "worker_stopped"}

    # Arguments and return values never reach the log; error text only on error lines.
    assert not [line for line in w.lines if secret in line]
    assert not [r for r in records if r["level"] == "info" and error_text in str(r)]


def test_formatters_keep_the_task_fields() -> None:
    """The JSON formatter emits the known extra fields; the text one shows them as key=value."""
    record = logging.LogRecord("conveyor_worker", logging.INFO, __file__, 1, "task %s", ("started",), None)
    record.task_id = "abc"
    record.queue = "default"
    record.attempt = 2
    record.not_a_field = "hidden"

    json_line = JsonFormatter().format(record)
    text_line = TextFormatter().format(record)

    parsed = json.loads(json_line)
    assert parsed["message"] == "task started"
    assert (parsed["task_id"], parsed["queue"], parsed["attempt"]) == ("abc", "default", 2)
    assert "not_a_field" not in parsed
    assert re.search(r"task started task_id=abc queue=default attempt=2$", text_line)


@pytest.mark.parametrize("formatter", [JsonFormatter, TextFormatter])
def test_task_lines_skip_logging_only_when_conveyors_handler_is_alone(
    formatter: type[logging.Formatter],
) -> None:
    """TaskLines writes the same line as logging would; another handler or a filter gets records again."""
    stream = io.StringIO()
    handler = BatchingHandler(stream, interval=60)
    handler.setFormatter(formatter())
    root = logging.getLogger()
    log = logging.getLogger("conveyor_worker.lines-test")
    saved = root.handlers[:], root.level
    root.handlers[:], root.level = [handler], logging.INFO
    fields = {
        "event": "task_started",
        "task_id": "abc",
        "queue": "default",
        "attempt": 1,
        "kwargs_text": "secret",
    }
    try:
        direct = TaskLines(log)
        direct.info("task started", fields)
        log.info("task started", extra=fields)
        handler.flush()
        fast, slow = stream.getvalue().splitlines()
        if formatter is JsonFormatter:
            assert {**json.loads(fast), "ts": 0} == {**json.loads(slow), "ts": 0}
        else:
            assert fast[13:] == slow[13:]  # past the time of day
        assert "secret" not in fast

        seen: list[logging.LogRecord] = []
        spy = logging.Handler()
        spy.emit = seen.append  # type: ignore[method-assign]
        log.addHandler(spy)
        try:
            TaskLines(log).info("task started", fields)
        finally:
            log.removeHandler(spy)
        assert [r.getMessage() for r in seen] == ["task started"]
    finally:
        root.handlers[:], root.level = saved
        handler.close()


def test_wait_until_returns_the_value() -> None:
    """wait_until hands back the first truthy value."""
    assert wait_until(lambda: 5) == 5
