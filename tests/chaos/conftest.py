"""The chaos tier's one switch and its scenario fixture.

CONVEYOR_CHAOS=short (the default, part of `./dev test`) or CONVEYOR_CHAOS=full (`./dev chaos`)
picks every count below; nothing else in tests/chaos holds a count. CONVEYOR_CHAOS_SEED
changes the seed of every random choice (kill moments, victims, task lengths).
"""

from __future__ import annotations

import contextlib
import os
import random
import secrets
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import pytest
from conveyor import RedisBackend
from django.tasks import task_backends
from django.tasks.base import Task, TaskResult
from django.test import override_settings

from devtools.redis_server import RedisProcess, find_server_binary
from tests.chaos.fleet import Fleet
from tests.chaos.ledger import Ledger, create
from tests.conftest import tasks_setting

CHAOS_DIR = Path(__file__).resolve().parent


@dataclass(frozen=True, slots=True, kw_only=True)
class Scale:
    """Every count and bound of the chaos scenarios, for one mode."""

    mode: str
    kill_tasks: int  # 1. tasks of the kill bench
    kills: int  # 1. SIGKILLs during it
    frozen_tasks: int  # 2. tasks held by the frozen worker
    restart_tasks: int  # 3. tasks of the Redis restart under load
    redis_kills: int  # 3. Redis SIGKILL + restart cycles under load
    outage_tasks: int  # 3. long tasks running through each outage
    outages: int  # 3. outages of two leases, one after another
    rolling_seconds: float  # 4. how long the ~50 tasks/s stream lasts
    rolling_rounds: int  # 4. rolling restarts of every worker during the stream
    deploy_tasks: int  # 4. tasks of the new release enqueued before it is deployed
    poison_companions: int  # 5. ordinary tasks beside the poison pill
    memory_tasks: int  # 7. tasks of the memory plateau
    periodic_seconds: float  # 8. how long 5 workers fire periodic ticks while being killed
    periodic_kills: int  # 8. SIGKILLs (each followed by a replacement) during it
    test_timeout: float  # seconds one scenario may take before pytest-timeout fails it
    lifetime: float  # seconds after which any process a scenario started dies by itself


SCALES = {
    "short": Scale(
        mode="short",
        kill_tasks=300,
        kills=6,
        frozen_tasks=3,
        restart_tasks=200,
        redis_kills=1,
        outage_tasks=4,
        outages=3,
        rolling_seconds=12.0,
        rolling_rounds=1,
        deploy_tasks=20,
        poison_companions=3,
        memory_tasks=5_000,
        periodic_seconds=30.0,
        periodic_kills=6,
        test_timeout=300.0,
        lifetime=420.0,
    ),
    "full": Scale(
        mode="full",
        kill_tasks=2_000,
        kills=20,
        frozen_tasks=6,
        restart_tasks=1_000,
        redis_kills=3,
        outage_tasks=4,
        outages=8,
        rolling_seconds=60.0,
        rolling_rounds=3,
        deploy_tasks=200,
        poison_companions=3,
        memory_tasks=100_000,
        periodic_seconds=240.0,
        periodic_kills=50,
        test_timeout=1_200.0,
        lifetime=1_500.0,
    ),
}


def current_scale() -> Scale:
    """Return the Scale CONVEYOR_CHAOS selects (short unless it says full)."""
    mode = os.environ.get("CONVEYOR_CHAOS", "short").strip().lower() or "short"
    if mode not in SCALES:
        raise pytest.UsageError(f"CONVEYOR_CHAOS must be one of {', '.join(SCALES)}, not {mode!r}")
    return SCALES[mode]


SCALE = current_scale()
SEED = int(os.environ.get("CONVEYOR_CHAOS_SEED", "20251130"))


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "chaos: a chaos scenario (CONVEYOR_CHAOS=short|full picks its size)")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark every chaos scenario, and bound it by its mode's timeout instead of the default."""
    for item in items:
        if CHAOS_DIR in Path(item.path).parents:
            item.add_marker(pytest.mark.chaos)
            item.add_marker(pytest.mark.timeout(SCALE.test_timeout))


def pytest_report_header(config: pytest.Config) -> str:
    return f"conveyor chaos: mode {SCALE.mode}, seed {SEED} (CONVEYOR_CHAOS, CONVEYOR_CHAOS_SEED)"


FIGURES: list[str] = []  # one line per scenario run, printed at the end of the session


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """Print what each scenario measured (docs/reliability.md records the last full run)."""
    if FIGURES:
        terminalreporter.section(f"conveyor chaos figures (mode {SCALE.mode}, seed {SEED})")
        for line in FIGURES:
            terminalreporter.write_line(line)


class Figures(Protocol):
    def __call__(self, text: str) -> None: ...


@pytest.fixture
def figures(request: pytest.FixtureRequest) -> Iterator[Figures]:
    """Return note(text): what the scenario measured, reported with its duration at the end of the run."""
    notes: list[str] = []
    began = time.monotonic()
    yield notes.append
    took = time.monotonic() - began
    passed = "passed" if not getattr(request.node, "chaos_failed", False) else "FAILED"
    FIGURES.append(f"{request.node.name} [{passed}, {took:.0f}s]: {'; '.join(notes) or '-'}")


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    report = yield
    if report.when == "call" and report.failed:
        item.chaos_failed = True  # type: ignore[attr-defined]
    return report


@pytest.fixture
def scale() -> Scale:
    """Return the counts of the selected mode."""
    return SCALE


@dataclass
class Scenario:
    """One scenario's world: its own Redis, key prefix, ledger, backend and workers."""

    redis: RedisProcess
    prefix: str
    backend: RedisBackend
    ledger: Ledger
    fleet: Fleet
    rng: random.Random
    scale: Scale
    tmp: Path
    keys: dict[str, str] = field(default_factory=dict)  # test key -> task id

    @property
    def ledger_path(self) -> str:
        return str(self.ledger.path)

    def enqueue(
        self, key: str, seconds: float = 0.0, *, task: Task | None = None, **using: Any
    ) -> TaskResult:
        """Enqueue the ledgered task (or another with the same arguments) under a test key."""
        from tests.chaos import chaos_tasks  # a task module: import it once Django is set up

        chosen = task or chaos_tasks.ledgered
        if using:
            chosen = chosen.using(**using)
        result = chosen.enqueue(self.ledger_path, key, seconds)
        self.keys[key] = result.id
        return result


class ScenarioFactory(Protocol):
    def __call__(self, *, appendonly: bool = False, **options: Any) -> Scenario: ...


@pytest.fixture
def make_scenario(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ScenarioFactory]:
    """Build a scenario: a private Redis (append-only if asked), a ledger, a fleet; torn down by pid."""
    stack = contextlib.ExitStack()

    def make(*, appendonly: bool = False, **options: Any) -> Scenario:
        binary = find_server_binary()
        assert binary, "a redis-server or valkey-server binary is needed"
        workdir = tmp_path / "redis"
        workdir.mkdir()
        server = RedisProcess(binary, workdir=str(workdir), appendonly=appendonly, lifetime=SCALE.lifetime)
        server.start()
        stack.callback(server.stop)
        prefix = "chaos" + secrets.token_hex(4)
        stack.enter_context(override_settings(TASKS=tasks_setting(server.url, prefix, **options)))
        backend = task_backends["default"]
        assert isinstance(backend, RedisBackend)
        stack.callback(backend.store.close)
        logs = tmp_path / "logs"
        logs.mkdir()
        worker_env = {f"CONVEYOR_TEST_{name}": str(value) for name, value in options.items()}
        fleet = Fleet(redis_url=server.url, prefix=prefix, logs=logs, lifetime=SCALE.lifetime, env=worker_env)
        stack.callback(fleet.close)  # runs before the server stops (callbacks unwind in reverse)
        ledger = Ledger(create(tmp_path / "ledger.sqlite3"))
        rng = random.Random(SEED ^ zlib.crc32(request.node.name.encode()))
        return Scenario(
            redis=server,
            prefix=prefix,
            backend=backend,
            ledger=ledger,
            fleet=fleet,
            rng=rng,
            scale=SCALE,
            tmp=tmp_path,
        )

    with stack:
        yield make
