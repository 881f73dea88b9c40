"""Real workers on a Redis Cluster of three primaries with HASH_TAG_PER_QUEUE: nothing lost, no CROSSSLOT."""

from __future__ import annotations

import signal
from datetime import UTC, datetime, timedelta
from pathlib import Path

import conveyor
import pytest
from django.tasks import TaskResultStatus
from django.test import override_settings

from devtools.redis_cluster import LocalCluster
from tests import tasks
from tests.conftest import queues_on_every_primary, tasks_setting

from .conftest import DEADLINE, SpawnWorker, lines_of, real_backend, wait_finished, wait_until

PER_QUEUE = 60  # tasks per queue, besides one retried and one deferred task each


@pytest.mark.subprocess
def test_workers_drain_queues_on_three_primaries_and_lose_nothing_when_one_is_killed(
    local_cluster: LocalCluster, prefix: str, spawn_worker: SpawnWorker, tmp_path: Path
) -> None:
    """Two workers serve three queues whose slots are on three primaries; one is SIGKILLed mid-run."""
    queues = queues_on_every_primary(local_cluster, prefix)
    setting = tasks_setting(local_cluster.url, prefix, CLUSTER=True, HASH_TAG_PER_QUEUE=True)
    setting["default"]["QUEUES"] = queues
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
