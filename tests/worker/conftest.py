"""Fixtures for the worker: in-process workers from a factory, and the worker as a real subprocess."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import secrets
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from conveyor import RedisBackend, codec
from conveyor.store import Store
from conveyor_worker.loop import Worker
from conveyor_worker.metrics import Metrics
from conveyor_worker.settings import WorkerSettings
from django.tasks import task_backends
from django.tasks.base import TaskResult
from django.test import override_settings

from devtools.redis_server import free_port
from tests.conftest import ROOT, tasks_setting

# Generous bounds: something that takes 100 ms on a laptop may take seconds on a loaded CI runner.
DEADLINE = 30.0


def wait_until[T](predicate: Callable[[], T | None], timeout: float = DEADLINE, what: str = "") -> T:
    """Poll predicate until it returns something truthy; fail after timeout seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what or predicate}")
        time.sleep(0.02)


def real_backend() -> RedisBackend:
    """Return the default backend object itself (not Django's per-thread proxy)."""
    backend = task_backends["default"]
    assert isinstance(backend, RedisBackend)
    return backend


def status_of(backend: RedisBackend, task_id: str) -> str | None:
    """Return the raw status field of a task hash."""
    raw = backend.store.call(lambda c: c.hget(backend.keys.task(task_id), "status"))
    return None if raw is None else raw.decode()


def zscore(backend: RedisBackend, key: str, member: str) -> float | None:
    """Return a member's score in a sorted set (None when absent)."""
    return backend.store.call(lambda c: c.zscore(key, member))


def wait_for_status(backend: RedisBackend, task_id: str, *statuses: str, timeout: float = DEADLINE) -> str:
    """Wait until a task has one of the statuses; return it."""
    return wait_until(
        lambda: s if (s := status_of(backend, task_id)) in statuses else None,
        timeout,
        f"task {task_id} to become {'/'.join(statuses)} (is {status_of(backend, task_id)})",
    )


def wait_finished(backend: RedisBackend, task_id: str, timeout: float = DEADLINE) -> TaskResult:
    """Wait until a task is SUCCESSFUL or FAILED; return its result read from Redis."""
    wait_for_status(backend, task_id, "SUCCESSFUL", "FAILED", timeout=timeout)
    return backend.get_result(task_id)


def plant(backend: RedisBackend, fields: dict[str, str], *, queue: str = "default", priority: int = 0) -> str:
    """Write a task hash by hand straight into a queue's ready set; return its id."""
    task_id = "planted" + secrets.token_hex(8)
    keys = backend.keys

    def write(client: Any) -> None:
        seq = int(client.incr(keys.seq))
        score = codec.ready_score(priority, seq)
        now_ms = int(time.time() * 1000)
        pipe = client.pipeline()
        pipe.hset(keys.task(task_id), mapping={**fields, "score": str(score)})
        pipe.zadd(keys.ready(queue), {task_id: score})
        pipe.zadd(keys.ready_since(queue), {task_id: now_ms})
        pipe.sadd(keys.queues, queue)
        pipe.execute()

    backend.store.call(write)
    return task_id


def good_record(task_path: str = "tests.tasks.noop_task", **changes: str) -> dict[str, str]:
    """Return the hash fields enqueue would write for a task, with some fields changed."""
    fields = codec.new_record(
        task_path=task_path,
        queue="default",
        priority=0,
        backend="default",
        run_after=None,
        args_json="[]",
        kwargs_json="{}",
        enqueued_at=datetime.now(UTC),
    )
    fields.update(changes)
    return fields


# -- tier A: the worker in this process -----------------------------------------------


@dataclass
class InProcessWorker:
    """A Worker running Worker.run() in a thread of the test process."""

    worker: Worker
    store: Store
    metrics: Metrics
    thread: threading.Thread | None = None
    exit_code: int | None = None
    error: BaseException | None = None

    @property
    def worker_id(self) -> str:
        return self.worker.worker_id

    def start(self) -> InProcessWorker:
        def run() -> None:
            try:
                self.exit_code = self.worker.run()
            except BaseException as exc:  # surfaced by join()
                self.error = exc

        self.thread = threading.Thread(target=run, name=f"test-{self.worker_id}", daemon=True)
        self.thread.start()
        return self

    def join(self, timeout: float = DEADLINE) -> int:
        """Wait for run() to return; fail (and stop the worker) if it does not in time."""
        assert self.thread is not None
        self.thread.join(timeout)
        if self.thread.is_alive():
            self.worker.request_stop()
            raise AssertionError(f"worker {self.worker_id} did not stop within {timeout:g}s")
        if self.error is not None:
            raise AssertionError(f"worker {self.worker_id} crashed: {self.error!r}") from self.error
        assert self.exit_code is not None
        return self.exit_code

    def stop(self, timeout: float = DEADLINE) -> int:
        """Ask the worker to drain (like the first SIGTERM) and wait for it."""
        self.worker.request_stop()
        return self.join(timeout)


WorkerFactory = Callable[..., InProcessWorker]
BatchRunner = Callable[..., InProcessWorker]


@pytest.fixture
def make_worker(backend: Any) -> Iterator[WorkerFactory]:
    """Build in-process workers on the test's prefix: make_worker(batch=True, concurrency=2, ...)."""
    made: list[InProcessWorker] = []

    def make(*, allowed: tuple[str, ...] = ("tests",), **overrides: Any) -> InProcessWorker:
        real = real_backend()
        values: dict[str, Any] = {
            "worker_id": "w-" + secrets.token_hex(4),
            "concurrency": 1,
            "lease": 10.0,
            "shutdown_timeout": 5.0,
            "health_port": 0,
            **overrides,
        }
        settings = WorkerSettings(**values)
        block = min(settings.block_seconds, settings.lease / 4)  # as load_settings() bounds it
        settings = dataclasses.replace(settings, block_seconds=block)
        store = Store(real.settings, real.keys, client_name=f"conveyor-worker:{settings.worker_id}")
        metrics = Metrics(settings.concurrency)
        handle = InProcessWorker(
            worker=Worker(settings, real, store, allowed, metrics), store=store, metrics=metrics
        )
        made.append(handle)
        return handle

    yield make
    for handle in made:
        if handle.thread is not None and handle.thread.is_alive():
            handle.worker.request_stop()
            handle.thread.join(DEADLINE)
        handle.store.close()


@pytest.fixture
def run_batch(make_worker: WorkerFactory) -> BatchRunner:
    """Run a worker in batch mode until it has drained what is due; return it (exit code checked)."""

    def run(timeout: float = DEADLINE, **overrides: Any) -> InProcessWorker:
        handle = make_worker(batch=True, **overrides).start()
        assert handle.join(timeout) == 0
        return handle

    return run


# -- tier B: the worker as a real child process ---------------------------------------


@dataclass
class WorkerProcess:
    """A `python -m conveyor_worker` child with its stdout parsed as JSON lines."""

    proc: subprocess.Popen[str]
    port: int
    worker_id: str
    lines: list[str] = field(default_factory=list)
    stderr: list[str] = field(default_factory=list)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def records(self) -> list[dict[str, Any]]:
        """Return every stdout line parsed as JSON (a line that is not JSON fails the test)."""
        return [json.loads(line) for line in list(self.lines)]

    def events(self, event: str) -> list[dict[str, Any]]:
        """Return the log records of one event."""
        return [r for r in self.records() if r.get("event") == event]

    def wait_event(self, event: str, timeout: float = DEADLINE, **match: Any) -> dict[str, Any]:
        """Wait for a log record of an event whose fields include match; return it."""

        def find() -> dict[str, Any] | None:
            for record in self.events(event):
                if all(record.get(k) == v for k, v in match.items()):
                    return record
            if self.proc.poll() is not None:
                time.sleep(0.2)  # let the reader thread take the last lines
                for record in self.events(event):
                    if all(record.get(k) == v for k, v in match.items()):
                        return record
                raise AssertionError(
                    f"worker exited ({self.proc.returncode}) before logging {event} {match}:\n"
                    + "\n".join(self.lines[-20:] + self.stderr[-20:])
                )
            return None

        return wait_until(find, timeout, f"log event {event} {match}")

    def http(self, path: str) -> tuple[int, str]:
        """GET a path on the health port; return (status, body)."""
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=5) as resp:
                return resp.status, resp.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()

    def wait_http(self, path: str, status: int, timeout: float = DEADLINE) -> str:
        """Wait until a path answers with a status; return the body."""

        def probe() -> str | None:
            try:
                code, body = self.http(path)
            except OSError:
                return None
            return body if code == status else None

        return wait_until(probe, timeout, f"GET {path} -> {status}")

    def send(self, signum: int) -> None:
        os.kill(self.proc.pid, signum)

    def wait_exit(self, timeout: float = DEADLINE) -> int:
        """Wait for the process to exit; return its code (fail if it does not exit in time)."""
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(
                f"worker {self.pid} still running after {timeout:g}s:\n" + "\n".join(self.lines[-20:])
            ) from None

    def kill(self) -> None:
        """SIGKILL the worker and reap it."""
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(DEADLINE)


def worker_env(redis_url: str, prefix: str, **extra: str) -> dict[str, str]:
    """Return the environment a worker subprocess runs with (the test project on the test prefix)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONVEYOR_")}
    env.update(
        DJANGO_SETTINGS_MODULE="tests.settings",
        CONVEYOR_TEST_REDIS_URL=redis_url,
        CONVEYOR_TEST_PREFIX=prefix,
        CONVEYOR_ALLOWED_TASK_MODULES="tests",
        CONVEYOR_HEALTH_HOST="127.0.0.1",
        CONVEYOR_LOG_FORMAT="json",
        PYTHONPATH=os.pathsep.join([str(ROOT / "backend"), str(ROOT / "worker"), str(ROOT)]),
        PYTHONUNBUFFERED="1",
    )
    env.update(extra)
    return env


def _pump(stream: Any, into: list[str]) -> None:
    for line in stream:
        into.append(line.rstrip("\n"))


SpawnWorker = Callable[..., WorkerProcess]


@pytest.fixture
def spawn_worker(redis_url: str, prefix: str) -> Iterator[SpawnWorker]:
    """Start worker subprocesses on the test's prefix; every one still running is SIGKILLed after."""
    started: list[WorkerProcess] = []

    def spawn(
        *flags: str, url: str | None = None, entry: Sequence[str] = ("-m", "conveyor_worker"), **env: str
    ) -> WorkerProcess:
        port = free_port()
        worker_id = env.pop("worker_id", None) or "p-" + secrets.token_hex(4)
        full_env = worker_env(
            url or redis_url,
            prefix,
            CONVEYOR_HEALTH_PORT=str(port),
            CONVEYOR_WORKER_ID=worker_id,
            **env,
        )
        proc = subprocess.Popen(
            [sys.executable, *entry, *flags],
            env=full_env,
            cwd=str(ROOT),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        handle = WorkerProcess(proc=proc, port=port, worker_id=worker_id)
        started.append(handle)
        threading.Thread(target=_pump, args=(proc.stdout, handle.lines), daemon=True).start()
        threading.Thread(target=_pump, args=(proc.stderr, handle.stderr), daemon=True).start()
        return handle

    yield spawn
    for handle in started:
        with contextlib.suppress(ProcessLookupError, subprocess.TimeoutExpired):
            handle.kill()


@pytest.fixture
def run_cli(redis_url: str, prefix: str) -> Callable[..., subprocess.CompletedProcess[str]]:
    """Run the worker to completion (bounded) and return its exit code and output."""

    def run(*flags: str, timeout: float = DEADLINE, **env: str) -> subprocess.CompletedProcess[str]:
        full_env = worker_env(redis_url, prefix, CONVEYOR_HEALTH_PORT="0", **env)
        return subprocess.run(
            [sys.executable, "-m", "conveyor_worker", *flags],
            env=full_env,
            cwd=str(ROOT),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    return run


@pytest.fixture
def tasks_on(prefix: str) -> Callable[[str], override_settings]:
    """Return override_settings(TASKS=...) for the test's prefix on another Redis (own_redis)."""

    def configure(url: str) -> override_settings:
        return override_settings(TASKS=tasks_setting(url, prefix))

    return configure


@pytest.fixture
def scratch(tmp_path: Path) -> Path:
    """Return a file tasks append lines to, so a test sees what ran and how often."""
    return tmp_path / "ran.txt"


def lines_of(path: Path) -> list[str]:
    """Return the lines a task appended to a file (none when it does not exist)."""
    return path.read_text().splitlines() if path.exists() else []
