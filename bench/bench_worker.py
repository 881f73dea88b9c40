"""Worker benchmark: drain rate, enqueue-to-start latency at a fixed rate, and idle memory.

Run: .venv/bin/python bench/bench_worker.py [--tasks 10000] [--rate 200] [--seconds 10]
     [--drain-only] [--tracing sdk] [--out PATH]
Starts its own redis-server on a free loopback port and one worker process with its
default concurrency; prints a table and writes bench/results/worker.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import secrets
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from devtools.redis_server import RedisProcess, find_server_binary, free_port  # noqa: E402
from tests.conftest import tasks_setting  # noqa: E402


def setup_django(url: str, prefix: str) -> None:
    """Configure Django in this process like the worker's (tests.settings)."""
    os.environ.update(
        CONVEYOR_TEST_REDIS_URL=url, CONVEYOR_TEST_PREFIX=prefix, DJANGO_SETTINGS_MODULE="tests.settings"
    )
    import django

    django.setup()


TRACING = {"on": False}  # --tracing sdk: the worker (and this process) trace (bench/otel_sdk.py)


def start_worker(
    url: str, prefix: str, *extra: str, root: Path = ROOT, health_port: int = 0
) -> subprocess.Popen[bytes]:
    """Start one worker process with default concurrency, from the code under root; its logs go to a file."""
    env = dict(
        os.environ,
        CONVEYOR_TEST_REDIS_URL=url,
        CONVEYOR_TEST_PREFIX=prefix,
        DJANGO_SETTINGS_MODULE="tests.settings",
        PYTHONPATH=os.pathsep.join([str(root / "backend"), str(root / "worker"), str(root)]),
        CONVEYOR_ALLOWED_TASK_MODULES="tests",
        CONVEYOR_HEALTH_PORT=str(health_port or free_port()),
        CONVEYOR_HEALTH_HOST="127.0.0.1",
    )
    log = (ROOT / "bench" / "results" / "worker-bench.log.tmp").open("ab")
    entry = [str(ROOT / "bench" / "otel_sdk.py")] if TRACING["on"] else ["-m", "conveyor_worker"]
    return subprocess.Popen([sys.executable, *entry, *extra], env=env, stdout=log, stderr=log)


def rss_mb(pid: int) -> float:
    """Return a process's resident memory in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def percentile(values: list[float], pct: float) -> float:
    """Return the pct-th percentile (nearest rank)."""
    ordered = sorted(values)
    index = max(0, min(len(ordered) - 1, round(pct / 100 * len(ordered)) - 1))
    return ordered[index]


def drain(url: str, tasks: int, root: Path = ROOT) -> dict[str, float]:
    """Queue N no-op tasks, then time one worker (code under root) draining them: first start to last end."""
    from django.tasks import default_task_backend

    from tests.tasks import noop_task

    prefix = "bench-drain-" + secrets.token_hex(3)
    load_before = os.getloadavg()[0]
    from django.test import override_settings

    with override_settings(TASKS=tasks_setting(url, prefix)):
        ids = [noop_task.enqueue().id for _ in range(tasks)]
        worker = start_worker(url, prefix, "--batch", root=root)
        _, status, usage = os.wait4(worker.pid, 0)
        worker.returncode = os.waitstatus_to_exitcode(status)
        code = worker.returncode
        results = [default_task_backend.get_result(i) for i in ids]
    done = [r for r in results if r.status == "SUCCESSFUL"]
    first = min(r.started_at for r in done)
    last = max(r.finished_at for r in done)
    seconds = (last - first).total_seconds()
    cpu = usage.ru_utime + usage.ru_stime  # the worker process's whole life, start-up included
    return {
        "tasks": tasks,
        "succeeded": len(done),
        "seconds": seconds,
        "tasks_per_second": len(done) / seconds,
        "exit_code": code,
        "worker_cpu_us_per_task": cpu / tasks * 1e6,
        "load_average_before": load_before,
    }


def latency(url: str, rate: float, seconds: float) -> dict[str, float]:
    """Enqueue at a fixed rate into an idle worker; report enqueue-to-start latency."""
    from django.tasks import default_task_backend
    from django.test import override_settings

    from tests.tasks import noop_task

    prefix = "bench-latency-" + secrets.token_hex(3)
    with override_settings(TASKS=tasks_setting(url, prefix)):
        noop_task.enqueue()  # registers the queue name so the '*' worker listens to it
        worker = start_worker(url, prefix)
        time.sleep(3.0)  # let it start and go idle
        idle_rss = rss_mb(worker.pid)
        ids = []
        interval, start = 1.0 / rate, time.perf_counter()
        for n in range(int(rate * seconds)):
            target = start + n * interval
            while (now := time.perf_counter()) < target:
                time.sleep(min(0.001, target - now))
            ids.append(noop_task.enqueue().id)
        time.sleep(1.0)
        results = [default_task_backend.get_result(i) for i in ids]
        worker.send_signal(signal.SIGTERM)
        worker.wait(timeout=60)
    lat = [(r.started_at - r.enqueued_at).total_seconds() * 1000 for r in results if r.started_at]
    return {
        "rate": rate,
        "tasks": len(ids),
        "started": len(lat),
        "p50_ms": percentile(lat, 50),
        "p90_ms": percentile(lat, 90),
        "p99_ms": percentile(lat, 99),
        "max_ms": max(lat),
        "mean_ms": statistics.fmean(lat),
        "idle_rss_mb": idle_rss,
    }


def main() -> int:
    """Run the benchmark and print a report."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--tasks", type=int, default=10_000)
    parser.add_argument("--rate", type=float, default=200.0)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--tracing", choices=("off", "sdk"), default="off", help="sdk: a tracer provider")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "worker.json")
    parser.add_argument("--drain-only", action="store_true", help="skip the latency run")
    args = parser.parse_args()
    binary = find_server_binary()
    assert binary, "needs redis-server or valkey-server"
    server = RedisProcess(binary)
    server.start()
    try:
        setup_django(server.url, "bench")
        if args.tracing == "sdk":
            from bench.otel_sdk import install

            install()
            TRACING["on"] = True
        d = drain(server.url, args.tasks)
        lat = None if args.drain_only else latency(server.url, args.rate, args.seconds)
    finally:
        server.stop()
    report = {
        "server": server.version(),
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "drain": d,
        "latency": lat,
        "tracing": args.tracing,
    }
    print(f"server: {report['server']}")
    print(
        f"drain  : {d['succeeded']}/{d['tasks']} no-op tasks in {d['seconds']:.2f}s "
        f"= {d['tasks_per_second']:.0f} tasks/s (target >= 3000); worker CPU "
        f"{d['worker_cpu_us_per_task']:.0f} us/task; load average before {d['load_average_before']:.2f}"
    )
    if lat is not None:
        print(
            f"latency: {lat['started']}/{lat['tasks']} at {lat['rate']:.0f}/s: p50 {lat['p50_ms']:.2f} ms "
            f"(target < 5), p90 {lat['p90_ms']:.2f} ms, p99 {lat['p99_ms']:.2f} ms (target < 50), "
            f"max {lat['max_ms']:.2f} ms"
        )
        print(f"idle worker RSS: {lat['idle_rss_mb']:.1f} MB (target < 80)")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
