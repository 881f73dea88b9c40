"""Worker subprocesses for the chaos tier: started bounded in time, signalled and killed by pid."""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from devtools.redis_server import bounded_command, free_port
from tests.conftest import ROOT

POLL = 0.05  # seconds between two looks of wait_until


def wait_until[T](predicate: Callable[[], T | None], timeout: float, what: str) -> T:
    """Poll predicate until it returns something truthy; fail after timeout seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(POLL)


@dataclass
class ChaosWorker:
    """One `python -m conveyor_worker` process; its stdout and stderr go to a log file."""

    worker_id: str
    proc: subprocess.Popen[bytes]
    port: int
    log: Path
    died_mono: float | None = None  # when the test last saw it dead (CLOCK_MONOTONIC)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def running(self) -> bool:
        """Tell whether the process has not exited yet (a frozen one is running)."""
        return self.proc.poll() is None

    def _signal(self, signum: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.proc.pid, signum)

    def kill(self) -> None:
        """SIGKILL the process and reap it."""
        if self.proc.poll() is None:
            self._signal(signal.SIGKILL)
        self.proc.wait(60)
        self.died_mono = self.died_mono or time.monotonic()

    def freeze(self) -> None:
        """SIGSTOP: the process stops where it is (a GC pause, a throttled container)."""
        self._signal(signal.SIGSTOP)

    def thaw(self) -> None:
        """SIGCONT a frozen process."""
        self._signal(signal.SIGCONT)

    def terminate(self) -> None:
        """SIGTERM: the worker drains and exits."""
        self._signal(signal.SIGTERM)

    def wait_exit(self, timeout: float) -> int:
        """Wait for the process to exit; return its code (fail with its log and its threads if not)."""
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            # SIGABRT makes faulthandler (PYTHONFAULTHANDLER) write every thread's stack to the log.
            self._signal(signal.SIGABRT)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(10)
            raise AssertionError(
                f"worker {self.worker_id} (pid {self.pid}) still running after {timeout:g}s; "
                f"its last lines and its threads when it was aborted:\n{self.log_tail(120)}"
            ) from None
        self.died_mono = self.died_mono or time.monotonic()
        return code

    def http(self, path: str) -> tuple[int, str]:
        """GET a path on the health port; return (status, body); OSError when nothing answers."""
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=5) as resp:
                return resp.status, resp.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()

    def status(self, path: str) -> int | None:
        """Return the HTTP status of a path, or None when the port does not answer."""
        try:
            return self.http(path)[0]
        except OSError:
            return None

    def wait_http(self, path: str, status: int, timeout: float) -> None:
        """Wait until a path answers with a status."""

        def answered() -> bool:
            if not self.running():
                raise AssertionError(
                    f"worker {self.worker_id} exited ({self.proc.returncode}) before GET {path} "
                    f"answered {status}:\n{self.log_tail()}"
                )
            return self.status(path) == status

        wait_until(answered, timeout, f"GET {path} -> {status} on worker {self.worker_id}")

    def metric(self, name: str) -> float | None:
        """Return the sum of a metric's samples on /metrics (None when it has none)."""
        try:
            code, body = self.http("/metrics")
        except OSError:
            return None
        if code != 200:
            return None
        pattern = re.compile(rf"^{re.escape(name)}(?:{{[^}}]*}})? (\S+)$", re.MULTILINE)
        values = [float(v) for v in pattern.findall(body)]
        return sum(values) if values else None

    def log_tail(self, lines: int = 30) -> str:
        """Return the last lines of the worker's output (for failure messages only)."""
        try:
            text = self.log.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])


@dataclass
class Fleet:
    """Start workers on one scenario's Redis and prefix; every one is SIGKILLed by pid at close()."""

    redis_url: str
    prefix: str
    logs: Path
    lifetime: float  # seconds after which a worker dies by itself (SIGALRM), whatever happens
    env: dict[str, str] = field(default_factory=dict)  # extra environment for every worker
    workers: list[ChaosWorker] = field(default_factory=list)
    _count: int = 0

    def environment(self, port: int, worker_id: str, extra: dict[str, str]) -> dict[str, str]:
        """Return the environment of one worker: the chaos settings on this scenario's Redis."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("CONVEYOR_")}
        env.update(
            DJANGO_SETTINGS_MODULE="tests.chaos.settings",
            CONVEYOR_TEST_REDIS_URL=self.redis_url,
            CONVEYOR_TEST_PREFIX=self.prefix,
            CONVEYOR_ALLOWED_TASK_MODULES="tests",
            CONVEYOR_HEALTH_HOST="127.0.0.1",
            CONVEYOR_HEALTH_PORT=str(port),
            CONVEYOR_WORKER_ID=worker_id,
            CONVEYOR_LOG_FORMAT="json",
            PYTHONPATH=os.pathsep.join(
                [
                    str(ROOT / "backend"),
                    str(ROOT / "worker"),
                    str(ROOT),
                    *filter(None, [os.environ.get("PYTHONPATH")]),
                ]
            ),
            PYTHONUNBUFFERED="1",
            PYTHONDONTWRITEBYTECODE="1",
            PYTHONFAULTHANDLER="1",  # a hung worker can be made to show its threads (wait_exit)
        )
        env.update(self.env)
        env.update(extra)
        return env

    def spawn(self, *flags: str, name: str = "w", env: dict[str, str] | None = None) -> ChaosWorker:
        """Start a worker with flags; its id is name plus a counter and a random suffix."""
        self._count += 1
        worker_id = f"{name}{self._count}-{secrets.token_hex(2)}"
        port = free_port()
        log = self.logs / f"{worker_id}.log"
        command = bounded_command([sys.executable, "-m", "conveyor_worker", *flags], self.lifetime)
        with log.open("ab") as out:
            proc = subprocess.Popen(
                command,
                env=self.environment(port, worker_id, env or {}),
                cwd=str(ROOT),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        worker = ChaosWorker(worker_id=worker_id, proc=proc, port=port, log=log)
        self.workers.append(worker)
        return worker

    def deaths(self) -> dict[int, float]:
        """Return pid -> when the test saw that worker dead, for every worker seen dead."""
        return {w.pid: w.died_mono for w in self.workers if w.died_mono is not None}

    def live(self) -> list[ChaosWorker]:
        """Return the workers whose process has not exited."""
        return [w for w in self.workers if w.running()]

    def close(self) -> None:
        """SIGKILL (by pid) and reap every worker this fleet started that still runs."""
        for worker in self.workers:
            if worker.proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(worker.proc.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                worker.proc.wait(30)
