"""A running worker fires its SCHEDULE and runs what it enqueued; a bad entry stops it at start."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading

from conveyor import RedisBackend
from conveyor_worker.loop import Worker
from conveyor_worker.metrics import Metrics
from conveyor_worker.settings import load_settings
from django.tasks import task_backends
from django.test import override_settings

from tests.conftest import ROOT, tasks_setting
from tests.worker.conftest import wait_until

ENTRY = {"name": "answer", "task": "tests.tasks.calculate_meaning_of_life", "every": 1}


def test_a_worker_fires_its_schedule_and_runs_the_tasks(redis_url: str, prefix: str) -> None:
    with override_settings(TASKS=tasks_setting(redis_url, prefix, SCHEDULE=[ENTRY])):
        backend = task_backends["default"]
        assert isinstance(backend, RedisBackend)
        settings = load_settings(["--health-port", "0", "--concurrency", "2"], {})
        worker = Worker(settings, backend, backend.store, ("tests",), Metrics(2))
        runner = threading.Thread(target=worker.run)
        runner.start()
        try:
            # When: the worker runs for a few ticks of a one-second entry.
            def succeeded() -> list[bytes] | None:
                ids = backend.store.call(lambda c: c.zrange(backend.keys.succeeded("default"), 0, -1))
                return ids if len(ids) >= 2 else None

            ids = wait_until(succeeded, 15, "two ticks run")
        finally:
            worker.request_stop()
            runner.join(30)
        # Then: each tick's task ran like any task.
        for task_id in ids:
            assert backend.get_result(task_id.decode()).return_value == 42
        stored = backend.store.call(lambda c: c.hgetall(backend.keys.periodic("answer")))
        assert stored[b"last_id"] in ids
        backend.store.close()


def test_a_worker_refuses_to_start_on_an_entry_it_cannot_enqueue(redis_url: str, prefix: str) -> None:
    bad = [{**ENTRY, "task": "tests.tasks.no_such_task"}]
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONVEYOR_")}
    env.update(
        DJANGO_SETTINGS_MODULE="tests.chaos.settings",
        CONVEYOR_TEST_REDIS_URL=redis_url,
        CONVEYOR_TEST_PREFIX=prefix,
        CONVEYOR_TEST_SCHEDULE=json.dumps(bad),
        CONVEYOR_HEALTH_PORT="0",
        PYTHONPATH=os.pathsep.join([str(ROOT / "backend"), str(ROOT / "worker"), str(ROOT)]),
    )
    done = subprocess.run(
        [sys.executable, "-m", "conveyor_worker"],
        check=False,
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert "SCHEDULE answer" in done.stderr and "cannot be imported" in done.stderr
