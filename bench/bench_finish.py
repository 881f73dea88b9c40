"""finish.lua's cost inside Redis, for tasks nobody waits for and for tasks a waiter marked.

Run: .venv/bin/python bench/bench_finish.py [--tasks 20000] [--rounds 5]
Starts its own redis-server; per round and variant it enqueues and claims N no-op tasks
(marking them all waited, wait.lua, in the "waited" variant), resets Redis's command
statistics, finishes them 100 to a round trip as the worker does and reads EVALSHA's
usec_per_call from INFO commandstats. Variants alternate; medians are reported.
"""

from __future__ import annotations

import argparse
import os
import secrets
import statistics
import sys
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "backend"), str(ROOT / "worker"), str(ROOT)]

from devtools.redis_server import RedisProcess, find_server_binary  # noqa: E402


def finish_usec(url: str, tasks: int, waited: bool) -> float:
    """Return Redis's microseconds per finish.lua call over one round of N tasks."""
    from conveyor import RedisBackend, codec

    from tests.tasks import noop_task

    options = {"URL": url, "KEY_PREFIX": "fb" + secrets.token_hex(3), "ALLOWED_TASK_MODULES": ["tests"]}
    backend = RedisBackend("default", {"QUEUES": [], "OPTIONS": options})
    store = backend.store
    ids = [backend.enqueue(noop_task, [], {}).id for _ in range(tasks)]
    if waited:
        for i in range(0, tasks, 500):
            store.run([store.look_call(t) for t in ids[i : i + 500]])
    claimed = []
    while len(claimed) < tasks:
        claimed += store.claim(["default"], "bench-worker", 600_000, 1000)
    fields = codec.success_fields(datetime.now(UTC), "null")
    calls = [store.finish_call(c.task_id, c.queue, c.token, "SUCCESSFUL", 86400, fields) for c in claimed]
    store.run(calls[:1])  # loads the script, outside the measure
    store.call(lambda c: c.config_resetstat())
    for i in range(1, tasks, 100):
        store.run(calls[i : i + 100])
    stats = store.call(lambda c: c.info("commandstats"))["cmdstat_evalsha"]
    store.call(lambda c: c.flushdb())
    store.close()
    return float(stats["usec_per_call"])


def main() -> int:
    """Run alternating rounds and print the medians."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--tasks", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    binary = find_server_binary()
    assert binary, "needs redis-server or valkey-server"
    server = RedisProcess(binary)
    server.start()
    os.environ.update(CONVEYOR_TEST_REDIS_URL=server.url, DJANGO_SETTINGS_MODULE="tests.settings")
    import django

    django.setup()
    runs: dict[str, list[float]] = {"unwaited": [], "waited": []}
    try:
        for _ in range(args.rounds):
            for variant, values in runs.items():
                values.append(finish_usec(server.url, args.tasks, variant == "waited"))
    finally:
        server.stop()
    print(f"server: {server.version()}; load average {os.getloadavg()[0]:.2f}")
    for variant, values in runs.items():
        shown = ", ".join(f"{v:.1f}" for v in values)
        print(f"finish.lua, {variant:8}: median {statistics.median(values):.1f} us per call ({shown})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
