"""Real workers on a Redis Cluster of three primaries with HASH_TAG_PER_QUEUE: nothing lost, no CROSSSLOT."""

from __future__ import annotations

import asyncio
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

import conveyor
import pytest
import redis
from conveyor import RedisBackend
from conveyor.exceptions import ConveyorError
from conveyor.keys import Keys
from django.tasks import TaskResultStatus
from django.test import override_settings
from redis.crc import key_slot

from devtools.redis_cluster import LocalCluster
from devtools.redis_server import find_server_binary
from tests import tasks
from tests.conftest import cluster_setting, queues_on_every_primary

from .conftest import DEADLINE, SpawnWorker, lines_of, real_backend, status_of, wait_finished, wait_until

PER_QUEUE = 60  # tasks per queue, besides one retried and one deferred task each


@pytest.mark.subprocess
def test_workers_drain_queues_on_three_primaries_and_lose_nothing_when_one_is_killed(
    local_cluster: LocalCluster, prefix: str, spawn_worker: SpawnWorker, tmp_path: Path
) -> None:
    """Two workers serve three queues whose slots are on three primaries; one is SIGKILLed mid-run."""
    queues = queues_on_every_primary(local_cluster, prefix)
    setting = cluster_setting(local_cluster.url, prefix, queues)
    out = tmp_path / "ran.txt"
    with override_settings(TASKS=setting):
        backend = real_backend()
        expected: list[str] = []
        results = []
        for q in queues:
            half = PER_QUEUE // 2
            lines = [f"{q}-{i}" for i in range(PER_QUEUE)]
            expected += lines
            results += [
                tasks.slow_append_line.using(queue_name=q).enqueue(str(out), line, 0.02)
                for line in lines[:half]
            ]
            results += conveyor.enqueue_many(
                tasks.slow_append_line.using(queue_name=q),
                [((str(out), line, 0.02), {}) for line in lines[half:]],
            )
            results.append(tasks.flaky.using(queue_name=q).enqueue(str(tmp_path / f"flaky-{q}"), 1))
            soon = datetime.now(UTC) + timedelta(seconds=1)
            results.append(tasks.noop_task.using(queue_name=q, run_after=soon).enqueue())

        env = {"CONVEYOR_TEST_CLUSTER": "per-queue"}
        first = spawn_worker("--lease", "2", "--concurrency", "4", url=local_cluster.url, **env)
        second = spawn_worker("--lease", "2", "--concurrency", "4", url=local_cluster.url, **env)
        first.wait_event("task_started")
        wait_until(lambda: len(lines_of(out)) >= 20, what="some tasks to run")
        first.send(signal.SIGKILL)  # with tasks in hand: its leases run out and the other reclaims them

        finished = [wait_finished(backend, r.id, timeout=DEADLINE * 2) for r in results]

        assert {f.status for f in finished} == {TaskResultStatus.SUCCESSFUL}
        ran = lines_of(out)
        assert set(ran) == set(expected)  # every task ran; a task the killed worker held may run twice
        assert len(ran) - len(expected) <= 4  # at most its concurrency
        for q in queues:
            assert (tmp_path / f"flaky-{q}").read_text() == "2"  # retried once, in its own slot
        text = second.wait_http("/metrics", 200)
        for q in queues:
            assert f'conveyor_queue_ready{{queue="{q}"}} 0' in text
        logs = "\n".join(first.lines + first.stderr + second.lines + second.stderr)
        assert "CROSSSLOT" not in logs and "MOVED" not in logs
        second.send(signal.SIGTERM)
        assert second.wait_exit(DEADLINE) == 0


@contextmanager
def private_cluster(replicas: int = 0) -> Iterator[LocalCluster]:
    """Start a cluster of three primaries this test may reshard or break; stop it after."""
    binary = find_server_binary()
    assert binary
    cluster = LocalCluster(binary, primaries=3, replicas=replicas, lifetime=300)
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.mark.subprocess
def test_a_queue_slot_moved_to_another_primary_mid_run_loses_and_doubles_nothing(
    prefix: str, spawn_worker: SpawnWorker, tmp_path: Path
) -> None:
    """Reshard a busy queue's slot while a worker drains it and the web enqueues: every task runs once."""
    with private_cluster() as cluster:
        queue = queues_on_every_primary(cluster, prefix)[0]
        slot = key_slot(Keys(prefix, per_queue=True).of(queue).tag.encode())
        setting = cluster_setting(cluster.url, prefix, [queue])
        out = tmp_path / "ran.txt"
        with override_settings(TASKS=setting):
            backend = real_backend()
            task = tasks.slow_append_line.using(queue_name=queue)
            results = conveyor.enqueue_many(task, [((str(out), f"a-{i}", 0.01), {}) for i in range(150)])
            worker = spawn_worker("--concurrency", "4", url=cluster.url, CONVEYOR_TEST_CLUSTER="per-queue")
            wait_until(lambda: len(lines_of(out)) >= 10, what="the worker to start draining")

            # When the slot moves to the next primary in batches, tasks still arriving one by one
            mover = threading.Thread(target=cluster.move_slot, args=(slot, 1), kwargs={"pause": 0.02})
            mover.start()
            while mover.is_alive():  # both clients, the asyncio one on a new event loop each time
                results.append(task.enqueue(str(out), f"b-{len(results)}", 0.01))
                results.append(asyncio.run(task.aenqueue(str(out), f"b-{len(results)}", 0.01)))
                time.sleep(0.01)
            mover.join()
            results += [task.enqueue(str(out), f"c-{i}", 0.01) for i in range(20)]

            # Then the slot is on the new primary and every task ran exactly once
            assert cluster.owner_of(slot) == 1
            finished = [wait_finished(backend, r.id, timeout=DEADLINE * 2) for r in results]
            assert {f.status for f in finished} == {TaskResultStatus.SUCCESSFUL}
            ran = lines_of(out)
            assert sorted(ran) == sorted(str(r.args[1]) for r in results)
            logs = "\n".join(worker.lines + worker.stderr)
            assert "CROSSSLOT" not in logs and "Traceback" not in logs
            worker.send(signal.SIGTERM)
            assert worker.wait_exit(DEADLINE) == 0
            backend.store.close()


def settled(backend: RedisBackend, task_id: str) -> bool:
    """Tell whether a task is SUCCESSFUL or FAILED; False while the cluster cannot answer (a failover)."""
    try:
        return status_of(backend, task_id) in ("SUCCESSFUL", "FAILED")
    except ConveyorError:
        return False


@pytest.mark.subprocess
def test_a_primary_killed_mid_run_fails_over_and_its_queue_is_drained_by_the_same_worker(
    prefix: str, spawn_worker: SpawnWorker, tmp_path: Path
) -> None:
    """SIGKILL the primary of one queue while a worker drains it: its replica takes over, nothing is lost."""
    with private_cluster(replicas=1) as cluster:
        queues = queues_on_every_primary(cluster, prefix)
        setting = cluster_setting(cluster.url, prefix, queues)
        out = tmp_path / "ran.txt"
        with override_settings(TASKS=setting):
            backend = real_backend()
            results = []
            for q in queues:
                task = tasks.slow_append_line.using(queue_name=q)
                results += conveyor.enqueue_many(
                    task, [((str(out), f"{q}-{i}", 0.01), {}) for i in range(120)]
                )
            for node in cluster.nodes[
                : cluster.primaries
            ]:  # acknowledged by a replica too (Redis's own loss aside)
                client = redis.Redis(host="127.0.0.1", port=node.port)
                assert client.execute_command("WAIT", 1, 5000) == 1
                client.close()
            worker = spawn_worker("--concurrency", "4", url=cluster.url, CONVEYOR_TEST_CLUSTER="per-queue")
            wait_until(lambda: len(lines_of(out)) >= 30, what="the worker to start draining")

            # When the primary of the first queue dies (its replica is promoted after the node timeout)
            cluster.nodes[0].stop()
            wait_until(
                lambda: cluster.owner_of(cluster.slot_range(0)[0]) != 0, DEADLINE, "a replica to take over"
            )
            later = conveyor.enqueue_many(
                tasks.slow_append_line.using(queue_name=queues[0]),
                [((str(out), f"after-{i}", 0.01), {}) for i in range(30)],
            )

            # Then every task, enqueued before or after, succeeds; those in flight may run twice
            for r in results + later:
                wait_until(lambda r=r: settled(backend, r.id), DEADLINE * 2, f"task {r.id}")
            assert {backend.get_result(r.id).status for r in results + later} == {TaskResultStatus.SUCCESSFUL}
            ran = lines_of(out)
            assert set(ran) == {str(r.args[1]) for r in results + later}
            assert len(ran) - len(set(ran)) <= 8  # at most the tasks held or recorded around the kill
            assert worker.proc.poll() is None  # the same worker, still running
            worker.send(signal.SIGTERM)
            assert worker.wait_exit(DEADLINE) == 0
            backend.store.close()
