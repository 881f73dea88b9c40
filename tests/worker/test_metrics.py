"""The pickup-latency histogram and the saturation gauge on /metrics."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

from conveyor.store import Store
from conveyor_worker.metrics import PICKUP_BUCKETS, Metrics, live_slots, saturation
from conveyor_worker.probes import Probes

from tests import tasks

from .conftest import BatchRunner, real_backend
from .test_observability import metric


def _micros_ago(seconds: float) -> str:
    return str(int((time.time() - seconds) * 1e6))


def test_pickup_counts_first_attempts_from_enqueue_or_a_later_run_after(
    backend: object, run_batch: BatchRunner, tmp_path: Path
) -> None:
    """Only first deliveries are timed, from the later of enqueued_at and run_after."""
    b = real_backend()
    # Given a task enqueued two hours ago, one enqueued two hours ago but due ten minutes ago,
    # a task that fails once and runs again (a retry), and a task delivered once before
    long_ago = tasks.noop_task.enqueue()
    due_later = tasks.noop_task.enqueue()
    tasks.flaky.enqueue(str(tmp_path / "count"), 1)
    redelivered = tasks.noop_task.enqueue()

    def write(client: object) -> None:
        client.hset(b.keys.task(long_ago.id), "enqueued_at", _micros_ago(7200))  # type: ignore[attr-defined]
        due = {"enqueued_at": _micros_ago(7200), "run_after": _micros_ago(600)}
        client.hset(b.keys.task(due_later.id), mapping=due)  # type: ignore[attr-defined]
        client.hset(b.keys.task(redelivered.id), "deliveries", "1")  # type: ignore[attr-defined]

    b.store.call(write)

    # When one worker drains them
    worker = run_batch(concurrency=1)
    text = worker.metrics.render(None, up=True)

    # Then five attempts started, and the three first deliveries were timed
    assert metric(text, "conveyor_tasks_started_total", queue="default") == 5
    assert metric(text, "conveyor_task_pickup_seconds_count", queue="default") == 3
    assert metric(text, "conveyor_task_pickup_seconds_bucket", queue="default", le="+Inf") == 3
    # the two-hour wait lies beyond the last bucket; the one counted from run_after in (300, 900]
    assert metric(text, "conveyor_task_pickup_seconds_bucket", queue="default", le="3600.0") == 2
    assert metric(text, "conveyor_task_pickup_seconds_bucket", queue="default", le="900.0") == 2
    assert metric(text, "conveyor_task_pickup_seconds_bucket", queue="default", le="300.0") == 1
    total = metric(text, "conveyor_task_pickup_seconds_sum", queue="default")
    assert total is not None and total >= 7200 + 600
    assert "# TYPE conveyor_task_pickup_seconds histogram" in text
    assert len([ln for ln in text.splitlines() if ln.startswith("conveyor_task_pickup_seconds_bucket")]) == (
        len(PICKUP_BUCKETS) + 1
    )


def test_saturation_is_work_over_the_slots_of_live_ready_workers_serving_each_queue(backend: object) -> None:
    """conveyor_queue_slots sums ready workers' slots per queue; saturation is work over them."""
    b = real_backend()
    store = Store(b.settings, b.keys)
    # Given five ready tasks in default and three in other
    for _ in range(5):
        tasks.noop_task.enqueue()
    for _ in range(3):
        tasks.noop_task.using(queue_name="other").enqueue()
    # and live workers: 4 slots on default, 2 on every queue but other, 8 on other but draining
    beats = [
        ("a", {"queues": ["default"], "slots": 4, "state": "ready"}),
        ("b", {"queues": ["*", "-other"], "slots": 2, "state": "ready"}),
        ("c", {"queues": ["other"], "slots": 8, "state": "draining"}),
    ]
    for worker_id, description in beats:
        store.heartbeat(worker_id, json.dumps(description), 60_000)
    probes = Probes(
        store=store,
        metrics=Metrics(1),
        queues=lambda: ["default", "other", "empty"],
        alive=lambda: True,
        ready=lambda: True,
    )

    # When /metrics is read
    text = probes.metrics_text()

    # Then
    assert metric(text, "conveyor_queue_slots", queue="default") == 6
    assert metric(text, "conveyor_queue_saturation", queue="default") == 5 / 6
    assert metric(text, "conveyor_queue_slots", queue="other") == 0
    assert metric(text, "conveyor_queue_saturation", queue="other") == math.inf
    assert metric(text, "conveyor_queue_slots", queue="empty") == 2
    assert metric(text, "conveyor_queue_saturation", queue="empty") == 0
    assert "# TYPE conveyor_queue_saturation gauge" in text
    store.close()


def test_saturation_is_zero_without_work_and_infinite_with_work_but_no_slot() -> None:
    """The edge cases of work / slots."""
    assert saturation(0, 0) == 0
    assert saturation(3, 0) == math.inf
    assert saturation(3, 4) == 0.75


def test_live_slots_skips_heartbeats_it_cannot_read() -> None:
    """A heartbeat that is not JSON, lacks a field or names no queue adds no slot."""
    beats = [
        b"not json",
        json.dumps({"queues": ["default"], "state": "ready"}).encode(),
        json.dumps({"queues": [], "slots": 3, "state": "ready"}).encode(),
        json.dumps({"queues": ["default"], "slots": "x", "state": "ready"}).encode(),
        json.dumps(["a list"]).encode(),
        json.dumps({"queues": ["default"], "slots": 5, "state": "ready"}).encode(),
    ]
    assert live_slots(beats, ["default", "other"]) == {"default": 5, "other": 0}
