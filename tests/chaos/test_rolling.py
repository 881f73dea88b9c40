"""Scenario 4: rolling restarts under a steady stream, and a rolling deploy of a new task module."""

from __future__ import annotations

import contextlib
import importlib
import random
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest
from django.tasks import TaskResultStatus, task_backends

import tests.chaos
from tests.chaos import state
from tests.chaos.conftest import SEED, Figures, Scale, Scenario, ScenarioFactory
from tests.chaos.fleet import ChaosWorker, wait_until

RATE = 50.0  # tasks enqueued per second by the stream
FLAGS = ("--concurrency", "4", "--lease", "5", "--shutdown-timeout", "20")
DEADLINE = 120.0
DEPLOY_DEADLINE = 240.0  # the new release's tasks may wait out a retry backoff of the old workers
RELEASE_MODULE = '''"""Release 2 of the chaos tasks: found only through CONVEYOR_CHAOS_RELEASE_DIR."""

from __future__ import annotations

from typing import Any

from django.tasks import TaskContext, task

from tests.chaos.chaos_tasks import run_ledgered


@task(takes_context=True)
def deployed(context: TaskContext, ledger: str, key: str, seconds: float = 0.0) -> dict[str, Any]:
    """A task that exists from release 2 on."""
    return run_ledgered(context, ledger, key, seconds)
'''


class Stream(threading.Thread):
    """Enqueue ledgered tasks at RATE per second until stopped; keep any enqueue error."""

    def __init__(self, scenario: Scenario, seed: int) -> None:
        super().__init__(name="chaos-stream", daemon=True)
        self.scenario = scenario
        self.rng = random.Random(seed)
        self.halt = threading.Event()
        self.errors: list[BaseException] = []
        self.count = 0

    def run(self) -> None:
        start = time.monotonic()
        try:
            while not self.halt.is_set():
                self.halt.wait(max(0.0, start + self.count / RATE - time.monotonic()))
                self.scenario.enqueue(f"s{self.count}", round(self.rng.uniform(0.01, 0.3), 3))
                self.count += 1
        except BaseException as exc:  # surfaced by the test
            self.errors.append(exc)
        finally:
            task_backends["default"].store.close()  # this thread's own backend (Django: one per thread)

    def stop(self) -> None:
        self.halt.set()
        self.join(30)
        assert not self.is_alive(), "the enqueue stream did not stop"


def _replace(s: Scenario, old: ChaosWorker, *, name: str, env: dict[str, str] | None = None) -> ChaosWorker:
    """SIGTERM a worker and wait for its exit (0), then start its replacement and wait until it is ready."""
    old.terminate()
    code = old.wait_exit(DEADLINE)
    assert code == 0, f"{old.worker_id} exited {code} after SIGTERM:\n{old.log_tail()}"
    new = s.fleet.spawn(*FLAGS, name=name, env=env)
    new.wait_http("/readyz", 200, DEADLINE)
    return new


def _check_exactly_once(s: Scenario, ids: set[str]) -> None:
    """Every task SUCCESSFUL with no error, its body run exactly once (nobody died or lost a lease)."""
    runs = s.ledger.by_task()
    problems = []
    for task_id, result in state.results(s.backend, ids).items():
        executions = runs.get(task_id, [])
        if result.status != TaskResultStatus.SUCCESSFUL or result.errors:
            problems.append(f"{task_id}: {result.status} errors={state.error_paths(result)}")
        if len(executions) != 1 or not executions[0].finished:
            problems.append(f"{task_id}: {len(executions)} executions: {executions}")
    assert not problems, f"seed {SEED}, {len(problems)} problems:\n" + "\n".join(problems[:40])
    assert state.queue_counts(s.backend, "default").empty, state.queue_counts(s.backend, "default")


def test_a_rolling_restart_under_a_steady_stream_loses_and_fails_nothing(
    make_scenario: ScenarioFactory, scale: Scale, figures: Figures
) -> None:
    """Given 3 workers and ~50 tasks/s, when each is SIGTERMed and replaced in turn, all succeed once."""
    s = make_scenario()
    workers = [s.fleet.spawn(*FLAGS, name=f"w{k}-") for k in range(3)]
    for worker in workers:
        worker.wait_http("/readyz", 200, DEADLINE)
    stream = Stream(s, s.rng.randrange(2**32))
    stream.start()
    began = time.monotonic()
    try:
        # When: every worker in turn is replaced (new one ready first, then SIGTERM, exit 0),
        # round after round, for at least rolling_seconds of stream.
        rounds = 0
        while rounds < scale.rolling_rounds or time.monotonic() - began < scale.rolling_seconds:
            for i, worker in enumerate(workers):
                workers[i] = _replace(s, worker, name=f"w{i}-")
            rounds += 1
    finally:
        stream.stop()
    streamed = time.monotonic() - began
    assert not stream.errors, f"enqueue failed: {stream.errors[0]!r}"
    ids = set(s.keys.values())
    assert len(ids) == stream.count >= RATE * streamed * 0.5, "the stream fell behind"
    wait_until(lambda: not state.unfinished(s.backend, ids), DEADLINE, f"all {len(ids)} streamed tasks")

    # Then: nothing lost or failed, and nothing ran twice (no worker died or lost a lease).
    _check_exactly_once(s, ids)
    figures(
        f"{len(ids)} tasks streamed over {streamed:.0f}s, {rounds} rolling rounds: 0 lost, 0 failed, "
        "0 re-runs"
    )


@pytest.fixture
def release_dir(tmp_path: Path) -> Iterator[tuple[Path, ModuleType]]:
    """Write release 2's task module to a directory; return it and the module as this process sees it."""
    directory = tmp_path / "release2"
    directory.mkdir()
    (directory / "release2.py").write_text(RELEASE_MODULE)
    tests.chaos.__path__.append(str(directory))
    try:
        yield directory, importlib.import_module("tests.chaos.release2")
    finally:
        tests.chaos.__path__.remove(str(directory))
        sys.modules.pop("tests.chaos.release2", None)
        with contextlib.suppress(AttributeError):
            delattr(tests.chaos, "release2")


def test_a_rolling_deploy_runs_tasks_the_old_workers_cannot_import_yet(
    make_scenario: ScenarioFactory, scale: Scale, release_dir: tuple[Path, ModuleType], figures: Figures
) -> None:
    """Given tasks of a module only new workers have, old workers put them back; the new ones run them."""
    s = make_scenario()
    directory, release2 = release_dir
    old = [s.fleet.spawn(*FLAGS, name=f"old{k}-") for k in range(2)]
    for worker in old:
        worker.wait_http("/readyz", 200, DEADLINE)

    # Given: tasks of release 2 are enqueued while only release-1 workers run, ordinary ones after.
    fresh = {s.enqueue(f"new{i}", 0.05, task=release2.deployed).id for i in range(scale.deploy_tasks)}
    ordinary = {s.enqueue(f"old{i}", 0.05).id for i in range(20)}
    # Same queue and priority: once the last ordinary task has run, every release-2 task had
    # been claimed before it at least once by an old worker.
    wait_until(lambda: "old19" in s.ledger.by_key(), DEADLINE, "the old workers to get past them")
    wait_until(lambda: not state.unfinished(s.backend, ordinary), DEADLINE, "the ordinary tasks")
    seen = state.statuses(s.backend, fresh)
    failed = {t: state.raw_errors(state.raw(s.backend, t))[-1:] for t, v in seen.items() if v == b"FAILED"}
    assert not failed, (
        f"{len(failed)} of {len(fresh)} release-2 tasks were FAILED by workers that cannot import "
        f"them yet (they must go back with a backoff), e.g. {next(iter(failed.values()))}"
    )
    assert not [e for e in s.ledger.executions() if e.key.startswith("new")]

    # When: the deploy rolls: each old worker is replaced by one that has release 2.
    env = {"CONVEYOR_CHAOS_RELEASE_DIR": str(directory)}
    new = [_replace(s, worker, name=f"new{i}-", env=env) for i, worker in enumerate(old)]
    deployed = time.monotonic()

    # Then: every release-2 task runs, on a new worker, and nothing failed.
    wait_until(lambda: not state.unfinished(s.backend, fresh), DEPLOY_DEADLINE, "the release-2 tasks")
    took = time.monotonic() - deployed
    results = state.results(s.backend, fresh)
    bad = {t: (r.status, state.error_paths(r)) for t, r in results.items() if r.status != "SUCCESSFUL"}
    assert not bad, f"{len(bad)} release-2 tasks did not succeed: {list(bad.values())[:5]}"
    new_pids = {w.pid for w in new}
    runs = s.ledger.by_task()
    assert all({e.pid for e in runs[t]} <= new_pids for t in fresh)
    assert all(r.status == TaskResultStatus.SUCCESSFUL for r in state.results(s.backend, ordinary).values())
    assert state.queue_counts(s.backend, "default").empty, state.queue_counts(s.backend, "default")
    figures(
        f"{len(fresh)} tasks of an undeployed module: none FAILED by old workers, all SUCCESSFUL on "
        f"new ones within {took:.0f}s of the deploy"
    )
