"""Cold start: how long one waiting task waits from a worker's process spawn to its start.

Run: .venv/bin/python bench/bench_cold_start.py [--runs 10]
Starts its own redis-server on a free loopback port. Each run enqueues one no-op task under a new
key prefix, spawns `python -m conveyor_worker` (what a pod KEDA just woke runs), and polls the
task's result until it has a started_at; it reports spawn -> started (and enqueue -> started)
per run, their median and p95, and writes bench/results/cold-start.json. This is the worker's
share of a scale from zero; the pod's scheduling, image pull and KEDA's polling interval come on top.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import secrets
import signal
import statistics
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.bench_worker import percentile, setup_django, start_worker  # noqa: E402
from devtools.redis_server import RedisProcess, find_server_binary  # noqa: E402
from tests.conftest import tasks_setting  # noqa: E402

DEADLINE = 60.0  # seconds a run may take before it fails


def one_run(url: str) -> dict[str, float]:
    """Enqueue one task, spawn a worker, return seconds from spawn (and from enqueue) to the task's start."""
    from django.tasks import default_task_backend
    from django.test import override_settings

    from tests.tasks import noop_task

    prefix = "bench-cold-" + secrets.token_hex(3)
    with override_settings(TASKS=tasks_setting(url, prefix)):
        result = noop_task.enqueue()
        spawned = datetime.now(UTC)
        worker = start_worker(url, prefix)
        try:
            deadline = time.monotonic() + DEADLINE
            while (started := default_task_backend.get_result(result.id).started_at) is None:
                assert time.monotonic() < deadline, "the task did not start"
                assert worker.poll() is None, f"the worker exited with {worker.returncode}"
                time.sleep(0.005)
        finally:
            worker.send_signal(signal.SIGTERM)
            worker.wait(timeout=DEADLINE)
    return {
        "spawn_to_start_s": (started - spawned).total_seconds(),
        "enqueue_to_start_s": (started - result.enqueued_at).total_seconds(),  # type: ignore[operator]
    }


def main() -> int:
    """Run the cold starts and print a report."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=10)
    args = parser.parse_args()
    binary = find_server_binary()
    assert binary, "needs redis-server or valkey-server"
    server = RedisProcess(binary)
    server.start()
    runs = []
    load_before = os.getloadavg()[0]
    try:
        setup_django(server.url, "bench")
        for n in range(args.runs):
            run = one_run(server.url)
            runs.append(run)
            print(f"run {n + 1}: spawn -> started {run['spawn_to_start_s'] * 1000:.0f} ms", flush=True)
    finally:
        server.stop()
    spawn = [r["spawn_to_start_s"] for r in runs]
    report = {
        "server": server.version(),
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "load_average_before": load_before,
        "runs": runs,
        "spawn_to_start_median_s": statistics.median(spawn),
        "spawn_to_start_p95_s": percentile(spawn, 95),
        "spawn_to_start_max_s": max(spawn),
    }
    median, p95 = statistics.median(spawn) * 1000, percentile(spawn, 95) * 1000
    print(
        f"spawn -> first task started over {len(runs)} runs: median {median:.0f} ms, p95 {p95:.0f} ms, "
        f"max {max(spawn) * 1000:.0f} ms (load average before {load_before:.2f})"
    )
    out = ROOT / "bench" / "results" / "cold-start.json"
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {out.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
