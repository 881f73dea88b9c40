"""Scenario 8: periodic ticks fired by 5 workers started and SIGKILLed at random: each tick enqueued once."""

from __future__ import annotations

import json
import time
from typing import Any

from tests.chaos.conftest import SEED, Figures, Scale, ScenarioFactory
from tests.chaos.fleet import ChaosWorker, wait_until

WORKERS = 5
FLAGS = ("--concurrency", "2", "--lease", "4")
# Two entries, one interval and one cron (six fields: seconds first), with periods that keep
# many ticks in a short run; each enqueues the no-op task with its own name as argument.
SCHEDULE = [
    {"name": "every-2s", "task": "tests.tasks.noop_task", "every": 2, "args": ["every-2s"]},
    {"name": "cron-3s", "task": "tests.tasks.noop_task", "cron": "*/3 * * * * *", "args": ["cron-3s"]},
]
PERIOD_MS = {"every-2s": 2_000, "cron-3s": 3_000}


def ticks_of(scenario: Any) -> dict[str, list[int]]:
    """Return, per entry, the enqueued_at (ms, server clock) of every task its ticks enqueued."""
    backend = scenario.backend
    pattern = backend.keys.task_prefix + "*"

    def read(client: Any) -> dict[str, list[int]]:
        found: dict[str, list[int]] = {name: [] for name in PERIOD_MS}
        for key in client.scan_iter(match=pattern, count=1000):  # a test may scan; conveyor never does
            args, enqueued_at = client.hmget(key, "args", "enqueued_at")
            (name,) = json.loads(args)
            found[name].append(int(enqueued_at) // 1000)
        return found

    return backend.store.call(read)  # type: ignore[no-any-return]


def test_each_periodic_tick_is_enqueued_exactly_once_while_workers_die(
    make_scenario: ScenarioFactory, scale: Scale, figures: Figures
) -> None:
    """Given 5 workers firing two schedules, when they are SIGKILLed and replaced, no tick doubles or goes."""
    s = make_scenario()
    env = {"CONVEYOR_TEST_SCHEDULE": json.dumps(SCHEDULE)}
    slots: list[ChaosWorker] = [s.fleet.spawn(*FLAGS, name=f"tick{k}-", env=env) for k in range(WORKERS)]
    entry_keys = [s.backend.keys.periodic(n) for n in PERIOD_MS]
    wait_until(
        lambda: s.backend.store.call(lambda c: c.exists(*entry_keys)) == len(entry_keys),
        60,
        "the workers to note both entries",
    )
    began = time.monotonic()
    end = began + scale.periodic_seconds
    kills = 0
    # When: at random moments a random worker is SIGKILLed (often in the middle of a survey or a
    # tick: they run every second) and a new one started in its place.
    for moment in sorted(s.rng.uniform(0, scale.periodic_seconds) for _ in range(scale.periodic_kills)):
        time.sleep(max(0.0, began + moment - time.monotonic()))
        slot = s.rng.randrange(WORKERS)
        slots[slot].kill()
        kills += 1
        slots[slot] = s.fleet.spawn(*FLAGS, name=f"tick{slot}-", env=env)
    time.sleep(max(0.0, end - time.monotonic()))
    for worker in slots:  # stop every tick before counting
        worker.kill()

    # Then: per entry, every tick between the first and the last has exactly one task, enqueued
    # at or after its tick (server clock) and before the next.
    found = ticks_of(s)
    problems: list[str] = []
    summary: list[str] = []
    for name, period in PERIOD_MS.items():
        stored = s.backend.store.call(lambda c, n=name: c.hgetall(s.backend.keys.periodic(n)))
        final_next = int(stored[b"next"])
        by_tick: dict[int, list[int]] = {}
        for at in found[name]:
            tick = final_next - -(-(final_next - at) // period) * period  # the last tick at or before it
            by_tick.setdefault(tick, []).append(at)
        if not by_tick:
            problems.append(f"{name}: no task enqueued")
            continue
        first, last = min(by_tick), max(by_tick)
        expected = range(first, last + 1, period)
        duplicates = {t: ats for t, ats in by_tick.items() if len(ats) > 1}
        missing = [t for t in expected if t not in by_tick]
        lateness = max(at - t for t, ats in by_tick.items() for at in ats)
        if duplicates:
            problems.append(f"{name}: ticks enqueued more than once: {sorted(duplicates.items())[:5]}")
        if missing:
            problems.append(f"{name}: {len(missing)} ticks without a task, the first at {missing[:5]}")
        if last - first < (scale.periodic_seconds - 10) * 1000:
            problems.append(f"{name}: ticks only over {(last - first) / 1000:.0f}s")
        summary.append(
            f"{name}: {len(expected)} ticks, {len(found[name])} tasks, {len(duplicates)} duplicates, "
            f"{len(missing)} missing, latest {lateness} ms after its tick"
        )
    assert not problems, f"seed {SEED}, {kills} kills:\n" + "\n".join(problems)
    figures(f"{WORKERS} workers, {kills} SIGKILLs; " + "; ".join(summary))
