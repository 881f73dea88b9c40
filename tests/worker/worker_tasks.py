"""Extra tasks for the worker tests (module path tests.worker.worker_tasks.*)."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path

from django.tasks import TaskContext, task


@task()
def record_interval(seconds: float) -> list[float]:
    """Sleep and return the wall-clock interval the task body really ran in."""
    start = time.time()
    time.sleep(seconds)
    return [start, time.time()]


@task()
def spin(seconds: float) -> list[float]:
    """Hold the GIL in a pure-Python loop; return the wall-clock interval the body ran in."""
    start = time.time()
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        pass
    return [start, time.time()]


@task(takes_context=True, max_attempts=2, retry_backoff=0.0)
def fail_first_attempt(context: TaskContext) -> int:
    """Fail on the first attempt, succeed on the second; return the attempt number."""
    if context.attempt < 2:
        raise RuntimeError(f"attempt {context.attempt} fails")
    return context.attempt


@task(max_attempts=3, retry_backoff=60.0)
def fails_with_backoff() -> None:
    """Fail, with a long retry backoff."""
    raise RuntimeError("fails, retry later")


@task(timeout=0.5)
def spins_past_timeout(path: str) -> None:
    """Run Python code past the timeout (interruptible); append how the loop ended."""
    deadline = time.monotonic() + 20
    try:
        while time.monotonic() < deadline:
            time.sleep(0.01)
    except BaseException as exc:
        with Path(path).open("a") as fh:
            fh.write(f"interrupted by {type(exc).__name__}\n")
        raise
    with Path(path).open("a") as fh:
        fh.write("spun to the end\n")


@task()
def secret_echo(secret: str) -> dict[str, str]:
    """Return the argument (tests check it never reaches INFO logs)."""
    return {"echo": secret}


@task()
def fails_with_message(message: str) -> None:
    """Raise an error carrying the argument."""
    raise ValueError(message)


@task()
def slow_first_time(path: str, seconds: float) -> str:
    """Sleep on the first delivery only (a file remembers it); later deliveries return at once."""
    marker = Path(path)
    first = not marker.exists()
    with marker.open("a") as fh:
        fh.write("ran\n")
    if first:
        time.sleep(seconds)
        return "slow"
    return "fast"


@task()
def log_run(path: str, key: str, seconds: float) -> str:
    """Append "start" and "end" lines (key, pid, wall-clock time) around a sleep: a ledger of runs."""
    with Path(path).open("a") as fh:
        fh.write(f"start {key} {os.getpid()} {time.time():.6f}\n")
    time.sleep(seconds)
    with Path(path).open("a") as fh:
        fh.write(f"end {key} {os.getpid()} {time.time():.6f}\n")
    return key


@task()
def kill_own_worker_after(seconds: float) -> None:
    """Sleep, then kill the worker process running this task (a poison pill beside other tasks)."""
    time.sleep(seconds)
    os.kill(os.getpid(), signal.SIGKILL)


@task(max_attempts=3, retry_backoff=0.0)
def loop_until_stopped(path: str, seconds: float) -> str:
    """Append "start", sleep in short steps (a Python loop an interrupt can stop), append how it ended."""
    with Path(path).open("a") as fh:
        fh.write("start\n")
    deadline = time.monotonic() + seconds
    try:
        while time.monotonic() < deadline:
            time.sleep(0.01)
    except BaseException as exc:
        with Path(path).open("a") as fh:
            fh.write(f"interrupted by {type(exc).__name__}\n")
        raise
    with Path(path).open("a") as fh:
        fh.write("end\n")
    return "end"


@task(max_attempts=3, retry_backoff=0.0)
async def async_loop_until_stopped(path: str, seconds: float) -> str:
    """The coroutine twin of loop_until_stopped: append "start", await in short steps, append how it ended."""
    with Path(path).open("a") as fh:
        fh.write("start\n")
    deadline = time.monotonic() + seconds
    try:
        while time.monotonic() < deadline:
            await asyncio.sleep(0.01)
    except BaseException as exc:
        with Path(path).open("a") as fh:
            fh.write(f"interrupted by {type(exc).__name__}\n")
        raise
    with Path(path).open("a") as fh:
        fh.write("end\n")
    return "end"


@task()
def wait_for_file(path: str) -> str:
    """Run until a file exists (a test creates it), in short Python steps."""
    deadline = time.monotonic() + 60
    while not Path(path).exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    return "seen"
