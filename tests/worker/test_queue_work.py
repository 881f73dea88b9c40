"""What the autoscalers read: work = ready + due scheduled + running, on /metrics and /work."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from conveyor.store import Store
from conveyor_worker.metrics import Metrics
from conveyor_worker.probes import Probes

from devtools.redis_server import RedisProcess
from tests import tasks

from .conftest import real_backend
from .test_observability import metric


def get(port: int, path: str) -> tuple[int, str]:
    """GET a path on a local probe server; return (status, body)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


@pytest.fixture
def exporter() -> Iterator[Callable[[Store], tuple[Probes, int]]]:
    """Serve the probes of a metrics-only process over a store, on a free loopback port."""
    started: list[Probes] = []

    def serve(store: Store) -> tuple[Probes, int]:
        probes = Probes(
            store=store,
            metrics=Metrics(4),
            queues=lambda: sorted(store.known_queues()),
            alive=lambda: True,
            ready=lambda: True,
        )
        started.append(probes)
        return probes, probes.start("127.0.0.1", 0)

    yield serve
    for probes in started:
        probes.stop()


def test_work_counts_ready_due_and_running_tasks_but_not_future_ones(
    backend: object, exporter: Callable[[Store], tuple[Probes, int]]
) -> None:
    """The exporter adds ready, due-scheduled and running tasks per queue; future ones wait outside."""
    b = real_backend()
    # Given three ready tasks, one of which a worker has claimed (it runs)
    for _ in range(3):
        tasks.noop_task.enqueue()
    [running] = b.store.claim(["default"], "w-claims-one", 60_000, 1)
    # And four tasks scheduled an hour ahead, two of which have since fallen due: no worker has
    # promoted them, which is exactly what happens while an autoscaler holds the workers at zero
    later = datetime.now(UTC) + timedelta(hours=1)
    scheduled = [tasks.noop_task.using(run_after=later).enqueue() for _ in range(4)]
    past_ms = b.store.server_time_ms() - 1_000
    for result in scheduled[:2]:
        b.store.call(lambda c, i=result.id: c.zadd(b.keys.scheduled("default"), {i: past_ms}, xx=True))
    # And one task on another queue whose lease has run out (its worker died): still work to do
    tasks.noop_task.using(queue_name="other").enqueue()
    [orphan] = b.store.claim(["other"], "w-died", 1, 1)

    # When the exporter is read the way the HPA (through /metrics) and KEDA (through /work) read it
    _, port = exporter(b.store)
    status, text = get(port, "/metrics")
    assert status == 200
    status, body = get(port, "/work")
    assert status == 200
    document: dict[str, Any] = json.loads(body)

    # Then the gauges count each kind apart, and work is ready + due + running, future tasks aside
    assert running.queue == "default" and orphan.queue == "other"
    expected = {
        "default": {"ready": 2, "due": 2, "running": 1, "work": 5},
        "other": {"ready": 0, "due": 0, "running": 1, "work": 1},
    }
    for queue, counts in expected.items():
        for name, value in counts.items():
            assert metric(text, f"conveyor_queue_{name}", queue=queue) == value, (queue, name)
    assert metric(text, "conveyor_queue_scheduled", queue="default") == 4
    # And /work has the same counts per queue and their sums over the process's queues
    assert document["queues"] == expected
    assert {k: document[k] for k in ("ready", "due", "running", "work")} == {
        "ready": 2,
        "due": 2,
        "running": 2,
        "work": 6,
    }


def test_work_follows_the_tasks_through_their_states(
    backend: object, exporter: Callable[[Store], tuple[Probes, int]]
) -> None:
    """Promoting a due task keeps it in work (due -> ready); finishing one takes it out."""
    b = real_backend()
    probes, _ = exporter(b.store)

    def counts() -> tuple[int, int, int, int]:
        _, body = probes.work_json()
        doc = json.loads(body)
        return doc["ready"], doc["due"], doc["running"], doc["work"]

    assert counts() == (0, 0, 0, 0)
    # Given a task scheduled for later that falls due
    result = tasks.noop_task.using(run_after=datetime.now(UTC) + timedelta(hours=1)).enqueue()
    assert counts() == (0, 0, 0, 0)
    b.store.call(
        lambda c: c.zadd(b.keys.scheduled("default"), {result.id: b.store.server_time_ms() - 1}, xx=True)
    )
    assert counts() == (0, 1, 0, 1)
    # When a worker promotes it, claims it, and finishes it
    assert b.store.promote(["default"], limit=10).promoted == 1
    assert counts() == (1, 0, 0, 1)
    [claimed] = b.store.claim(["default"], "w-follow", 60_000, 1)
    assert counts() == (0, 0, 1, 1)
    b.store.call(lambda c: c.zrem(b.keys.running("default"), claimed.task_id))
    # Then it has left the work
    assert counts() == (0, 0, 0, 0)


def test_work_is_a_503_never_zeros_while_redis_is_down(
    backend: object,
    own_redis: RedisProcess,
    tasks_on: Callable[[str], Any],
    exporter: Callable[[Store], tuple[Probes, int]],
) -> None:
    """An autoscaler that read zeros would scale running tasks away; it gets an error instead."""
    with tasks_on(own_redis.url):
        b = real_backend()
        store = Store(b.settings, b.keys)
        tasks.noop_task.enqueue()
        _, port = exporter(store)
        assert json.loads(get(port, "/work")[1])["work"] == 1
        # When Redis goes away
        own_redis.stop()
        status, body = get(port, "/work")
        # Then /work says so, and /metrics drops the queue gauges rather than report them as 0
        assert status == 503
        assert "error" in json.loads(body)
        status, text = get(port, "/metrics")
        assert status == 200
        assert metric(text, "conveyor_worker_up") == 0
        assert metric(text, "conveyor_queue_work", queue="default") is None
        store.close()
