"""End to end on a real Docker engine: the compose stack built from the Dockerfiles, driven over HTTP.

The tests share one stack and run in file order: healthy stack, one task, three workers, a drain,
a Redis restart. Every wait is bounded.
"""

from __future__ import annotations

import json
import time
from collections import Counter

import pytest

from tests.engine.conftest import ComposeError, Stack

pytestmark = [pytest.mark.engine, pytest.mark.timeout(300)]


def running_services(stack: Stack) -> dict[str, list[dict[str, object]]]:
    by_service: dict[str, list[dict[str, object]]] = {}
    for container in stack.containers():
        by_service.setdefault(str(container["Service"]), []).append(container)
    return by_service


@pytest.mark.timeout(1800)  # the first test also provisions the engine and builds the images
def test_every_service_is_healthy(stack: Stack) -> None:
    services = running_services(stack)
    for name in ("redis", "web", "worker"):
        assert services[name], name
        for container in services[name]:
            assert container["State"] == "running", container
            assert container["Health"] == "healthy", container
    (migrate,) = services["migrate"]
    assert migrate["State"] == "exited"
    assert migrate["ExitCode"] == 0
    # Both images run as uid 10001, and the worker is PID 1 of its container.
    (web,) = services["web"]
    (worker,) = services["worker"]
    assert stack.docker("exec", str(web["Name"]), "id", "-u").strip() == "10001"
    assert stack.docker("exec", str(worker["Name"]), "id", "-u").strip() == "10001"
    assert "conveyor-worker" in stack.docker("exec", str(worker["Name"]), "cat", "/proc/1/cmdline")
    # The worker image carries the worker extra (the kubernetes client for --pod-deletion-cost);
    # the web image ships only the enqueue backend's dependencies.
    probe = "import importlib.util as u; print(u.find_spec('kubernetes') is not None)"
    assert stack.docker("exec", str(worker["Name"]), "python", "-c", probe).strip() == "True"
    assert stack.docker("exec", str(web["Name"]), "python", "-c", probe).strip() == "False"


def test_task_enqueued_through_web_runs_on_a_worker(stack: Stack) -> None:
    task_id = stack.enqueue("add", 2, 3)
    result = stack.wait_until_finished([task_id], timeout=60)[task_id]
    assert result["status"] == "SUCCESSFUL", result
    assert result["return_value"] == 5
    assert result["attempts"] == 1
    assert len(result["worker_ids"]) == 1
    stack.first_result_id = task_id


def test_the_operator_command_runs_in_the_worker_image(stack: Stack) -> None:
    """`python -m django conveyor status --json` in a worker container sees the live workers."""
    (worker, *_) = stack.containers("worker")
    out = stack.docker("exec", str(worker["Name"]), "python", "-m", "django", "conveyor", "status", "--json")
    status = json.loads(out)
    assert {q["queue"] for q in status["queues"]} >= {"default"}
    assert len(status["workers"]) >= 1 and all(w["state"] == "ready" for w in status["workers"])


def test_three_workers_share_the_work(stack: Stack) -> None:
    stack.compose(
        "up", "--detach", "--no-build", "--scale", "worker=3", "--wait", "--wait-timeout", "120", timeout=180
    )
    workers = running_services(stack)["worker"]
    assert len(workers) == 3
    assert all(w["Health"] == "healthy" for w in workers), workers

    ids = [stack.enqueue("sleep", 0.5) for _ in range(30)]
    results = stack.wait_until_finished(ids, timeout=120)

    assert all(r["status"] == "SUCCESSFUL" for r in results.values())
    ran_on = Counter(r["worker_ids"][-1] for r in results.values())
    print(f"30 tasks over the workers: {dict(ran_on)}")
    assert len(ran_on) > 1, f"one worker ran everything: {dict(ran_on)}"


def test_stopping_workers_drains_without_loss(stack: Stack) -> None:
    # Given three workers (4 slots each) and more 3-second tasks than slots,
    ids = [stack.enqueue("sleep", 3) for _ in range(36)]
    deadline = time.monotonic() + 30
    while sum(stack.result(i)["status"] == "RUNNING" for i in ids) < 6:
        assert time.monotonic() < deadline, "the workers did not start the tasks"
        time.sleep(0.2)

    # when every worker gets SIGTERM while tasks run,
    began = time.monotonic()
    stack.compose("stop", "worker", timeout=90)
    stopped_in = time.monotonic() - began

    # then each exits 0 well within the grace period (a drain, not Docker's SIGKILL),
    for worker in running_services(stack)["worker"]:
        assert worker["State"] == "exited", worker
        assert worker["ExitCode"] == 0, worker
    assert stopped_in < 30, f"stop took {stopped_in:.1f}s"
    # nothing is left running and the unstarted tasks wait in Redis,
    statuses = Counter(stack.result(i)["status"] for i in ids)
    print(f"after `compose stop worker` ({stopped_in:.1f}s): {dict(statuses)}")
    assert statuses["RUNNING"] == 0, statuses
    assert statuses["FAILED"] == 0, statuses
    assert statuses["READY"] > 0, statuses

    # and once the workers start again every task succeeds, each exactly once.
    stack.compose("start", "worker", timeout=90)
    results = stack.wait_until_finished(ids, timeout=120)
    for task_id, result in results.items():
        assert result["status"] == "SUCCESSFUL", (task_id, result)
        assert result["attempts"] == 1, (task_id, result)
        assert len(result["worker_ids"]) == 1, (task_id, result)


def test_workers_resume_after_redis_restarts(stack: Stack) -> None:
    stack.compose("up", "--detach", "--no-build", "--wait", "--wait-timeout", "120", timeout=180)
    worker_names = [str(w["Name"]) for w in running_services(stack)["worker"]]
    restarts_before = {
        name: stack.docker("inspect", "-f", "{{.RestartCount}}", name).strip() for name in worker_names
    }

    # Given Redis restarted under running workers (append-only file on),
    stack.compose("restart", "redis", timeout=90)
    deadline = time.monotonic() + 60
    while running_services(stack)["redis"][0]["Health"] != "healthy":
        assert time.monotonic() < deadline, "redis did not become healthy again"
        time.sleep(0.5)

    # then what was stored before survives,
    assert stack.first_result_id is not None
    assert stack.result(stack.first_result_id)["status"] == "SUCCESSFUL"

    # and a task enqueued after the restart is run by the same worker processes.
    task_id = _enqueue_with_retry(stack, "add", 20, 22)
    result = stack.wait_until_finished([task_id], timeout=90)[task_id]
    assert result["status"] == "SUCCESSFUL", result
    assert result["return_value"] == 42
    restarts_after = {
        name: stack.docker("inspect", "-f", "{{.RestartCount}}", name).strip() for name in worker_names
    }
    assert restarts_after == restarts_before, "a worker container was restarted instead of reconnecting"
    for worker in running_services(stack)["worker"]:
        assert worker["State"] == "running", worker


def _enqueue_with_retry(stack: Stack, task: str, *args: object) -> str:
    """Enqueue, retrying for a bounded time while the web app's pooled connections reconnect."""
    deadline = time.monotonic() + 30
    while True:
        status, body = stack.request("POST", f"/enqueue/{task}", {"args": list(args)})
        if status == 202:
            return str(body["id"])
        if time.monotonic() > deadline:
            raise ComposeError(f"enqueue after the Redis restart kept failing: {status} {body}")
        time.sleep(0.5)
