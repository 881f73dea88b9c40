"""Fixtures of the admin tier: the admin's database, users, a live server, a worker process, Chromium.

This directory runs under its own settings (tests.browser.settings: the admin installed). When
pytest is started on it (`pytest tests/browser`, as ./dev does), this file is read before
tests/conftest.py sets Django up, so the line below chooses those settings; collected along with
other tiers under tests.settings, its tests are skipped with the reason.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.browser.settings")

ADMIN_SETTINGS = "tests.browser.settings"
HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
PASSWORD = "correct horse battery staple"
CHROMIUM = os.environ.get("CONVEYOR_CHROMIUM", "/usr/bin/chromium")
DEADLINE = 30.0


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    from django.conf import settings

    if settings.SETTINGS_MODULE == ADMIN_SETTINGS:
        return
    skip = pytest.mark.skip(reason=f"needs {ADMIN_SETTINGS}: run `pytest tests/browser` on its own")
    for item in items:
        if HERE in item.path.parents:
            item.add_marker(skip)


def wait_until[T](predicate: Callable[[], T | None], timeout: float = DEADLINE, what: str = "") -> T:
    """Poll predicate until it returns something truthy; fail after timeout seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what or predicate}")
        time.sleep(0.05)


# -- Django: database, users, the conveyor backend -------------------------------------------


@pytest.fixture(scope="session")
def database() -> Iterator[None]:
    """Create the admin's tables (users, sessions, history) and permissions once, in a temporary file."""
    from django.conf import settings
    from django.core.management import call_command
    from django.db import connections

    call_command("migrate", verbosity=0, interactive=False)
    yield
    connections.close_all()
    shutil.rmtree(Path(settings.DATABASES["default"]["NAME"]).parent, ignore_errors=True)


MakeUser = Callable[..., Any]


@pytest.fixture
def make_user(database: None) -> MakeUser:
    """Create a staff user with some conveyor_admin permissions: make_user("view_task", ...)."""
    from django.contrib.auth.models import Permission, User

    def make(*codenames: str, superuser: bool = False) -> User:
        user = User.objects.create_user(
            f"user-{secrets.token_hex(4)}", password=PASSWORD, is_staff=True, is_superuser=superuser
        )
        found = Permission.objects.filter(content_type__app_label="conveyor_admin", codename__in=codenames)
        assert found.count() == len(codenames), f"unknown permission among {codenames}"
        user.user_permissions.set(found)
        return user

    return make


@pytest.fixture
def conveyor(redis_url: str, prefix: str, database: None) -> Iterator[Any]:
    """Point TASKS at the session's Redis under a fresh prefix (every thread sees it); yield the backend."""
    from django.tasks import task_backends
    from django.test import override_settings

    from tests.conftest import tasks_setting

    with override_settings(TASKS=tasks_setting(redis_url, prefix)):
        backend = task_backends["default"]
        yield backend
        backend.store.close()


def status_of(backend: Any, task_id: str) -> str | None:
    """Return a task's status as stored in Redis."""
    raw = backend.store.call(lambda c: c.hget(backend.keys.task(task_id), "status"))
    return None if raw is None else raw.decode()


def wait_for_status(backend: Any, task_id: str, *statuses: str, timeout: float = DEADLINE) -> str:
    """Wait until a task has one of the statuses; return it."""
    return wait_until(
        lambda: s if (s := status_of(backend, task_id)) in statuses else None,
        timeout,
        f"task {task_id} to become {'/'.join(statuses)} (is {status_of(backend, task_id)})",
    )


# -- the live server ----------------------------------------------------------------------------


@pytest.fixture(scope="session")
def live_server(database: None) -> Iterator[str]:
    """Serve the project (admin and static files) from a thread on a free port; yield its base URL."""
    from django.contrib.staticfiles.handlers import StaticFilesHandler
    from django.test.testcases import LiveServerThread

    thread = LiveServerThread("127.0.0.1", StaticFilesHandler, port=0)
    thread.daemon = True
    thread.start()
    thread.is_ready.wait(DEADLINE)
    if thread.error:
        raise thread.error
    yield f"http://127.0.0.1:{thread.port}"
    thread.terminate()


# -- a worker process ----------------------------------------------------------------------------


@dataclass
class WorkerProcess:
    """A `python -m conveyor_worker` child on the test's prefix, its output kept for failures."""

    proc: subprocess.Popen[str]
    worker_id: str
    lines: list[str] = field(default_factory=list)

    def stop(self) -> None:
        """SIGTERM (drain), then SIGKILL if it is still there after the deadline."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(DEADLINE)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(DEADLINE)


def _pump(stream: Any, into: list[str]) -> None:
    for line in stream:
        into.append(line.rstrip("\n"))


@pytest.fixture
def spawn_worker(redis_url: str, prefix: str) -> Iterator[Callable[..., WorkerProcess]]:
    """Start worker subprocesses on the test's prefix (tests.settings); each is stopped after the test."""
    from devtools.redis_server import free_port

    started: list[WorkerProcess] = []

    def spawn(*flags: str) -> WorkerProcess:
        worker_id = "admin-" + secrets.token_hex(3)
        env = {k: v for k, v in os.environ.items() if not k.startswith(("CONVEYOR_", "DJANGO_"))}
        env.update(
            DJANGO_SETTINGS_MODULE="tests.settings",
            CONVEYOR_TEST_REDIS_URL=redis_url,
            CONVEYOR_TEST_PREFIX=prefix,
            CONVEYOR_ALLOWED_TASK_MODULES="tests",
            CONVEYOR_HEALTH_HOST="127.0.0.1",
            CONVEYOR_HEALTH_PORT=str(free_port()),
            CONVEYOR_WORKER_ID=worker_id,
            CONVEYOR_LOG_FORMAT="json",
            PYTHONPATH=os.pathsep.join([str(ROOT / "backend"), str(ROOT / "worker"), str(ROOT)]),
            PYTHONUNBUFFERED="1",
        )
        proc = subprocess.Popen(
            [sys.executable, "-m", "conveyor_worker", "--shutdown-timeout", "5", *flags],
            env=env,
            cwd=str(ROOT),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        handle = WorkerProcess(proc=proc, worker_id=worker_id)
        threading.Thread(target=_pump, args=(proc.stdout, handle.lines), daemon=True).start()
        started.append(handle)
        return handle

    yield spawn
    for handle in started:
        with contextlib.suppress(ProcessLookupError):
            handle.stop()


# -- Chromium ----------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def chromium() -> Iterator[Any]:
    """Launch Debian's headless Chromium through Playwright (never a downloaded browser build)."""
    if not os.access(CHROMIUM, os.X_OK):
        pytest.fail(f"no Chromium at {CHROMIUM}: apt-get install chromium (./dev test does)")
    from playwright.sync_api import sync_playwright

    # Playwright's sync API keeps an event loop on this thread, which Django takes for an async
    # context; the ORM calls the tests make here (users, history) are plain synchronous code.
    os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True)
        yield browser
        browser.close()


@pytest.fixture
def screenshots(tmp_path: Path) -> Path:
    """Return where screenshots go: $CONVEYOR_SCREENSHOT_DIR (docs/screenshots to refresh them), else tmp."""
    target = Path(os.environ.get("CONVEYOR_SCREENSHOT_DIR") or tmp_path)
    target.mkdir(parents=True, exist_ok=True)
    return target
