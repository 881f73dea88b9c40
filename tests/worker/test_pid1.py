"""The worker as PID 1, the way a container runs it, in a PID namespace of its own."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from django.tasks import TaskResultStatus

from tests import tasks
from tests.conftest import ROOT

DEADLINE = 30.0


def _child_of(pid: int) -> int | None:
    """Return the first child of a process, from /proc."""
    for task_dir in Path(f"/proc/{pid}/task").iterdir():
        children = (task_dir / "children").read_text().split()
        if children:
            return int(children[0])
    return None


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("unshare"), reason="PID namespaces need root")
def test_worker_as_pid_1_runs_tasks_and_drains_on_sigterm(
    backend: object, redis_url: str, prefix: str
) -> None:
    """As PID 1 a process gets no default signal handling; the worker's own handlers must drain."""
    # Given a worker that is PID 1 of a new PID namespace
    env = dict(
        os.environ,
        DJANGO_SETTINGS_MODULE="tests.settings",
        CONVEYOR_TEST_REDIS_URL=redis_url,
        CONVEYOR_TEST_PREFIX=prefix,
        CONVEYOR_ALLOWED_TASK_MODULES="tests",
        PYTHONPATH=os.pathsep.join([str(ROOT / "backend"), str(ROOT / "worker"), str(ROOT)]),
        CONVEYOR_HEALTH_PORT="0",
        CONVEYOR_SHUTDOWN_TIMEOUT="20",
    )
    outer = subprocess.Popen(
        ["unshare", "--pid", "--fork", "--kill-child", sys.executable, "-m", "conveyor_worker"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        seen_as = tasks.process_id.enqueue()
        deadline = time.monotonic() + DEADLINE
        while backend.get_result(seen_as.id).status != TaskResultStatus.SUCCESSFUL:  # type: ignore[attr-defined]
            assert time.monotonic() < deadline, "the PID 1 worker never ran the task"
            time.sleep(0.05)
        assert backend.get_result(seen_as.id).return_value == 1  # type: ignore[attr-defined]

        # When it gets SIGTERM while a task runs
        slow = tasks.sleep_for.enqueue(1.0)
        while backend.get_result(slow.id).status != TaskResultStatus.RUNNING:  # type: ignore[attr-defined]
            assert time.monotonic() < deadline + DEADLINE, "the slow task never started"
            time.sleep(0.02)
        worker = _child_of(outer.pid)
        assert worker is not None
        os.kill(worker, signal.SIGTERM)

        # Then it finishes the task and exits 0 (unshare passes the child's status on)
        assert outer.wait(timeout=DEADLINE) == 0, outer.stdout.read() if outer.stdout else ""
        assert backend.get_result(slow.id).status == TaskResultStatus.SUCCESSFUL  # type: ignore[attr-defined]
    finally:
        if outer.poll() is None:
            outer.kill()
            outer.wait(timeout=10)
