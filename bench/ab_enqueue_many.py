"""enqueue_many() throughput of one source tree, for alternating runs of two trees in one session.

Run, alternating:  for i in 1 2 3; do
                     .venv/bin/python bench/ab_enqueue_many.py /path/to/old/tree
                     .venv/bin/python bench/ab_enqueue_many.py .
                   done
(make the old tree with `git worktree add /tmp/old REV`). Each run starts its own redis-server,
imports conveyor from the given tree, and enqueues 50,000 tasks (the bulk variant of
bench_enqueue.py) per round; it prints the median tasks/s and client CPU per task of 5 rounds.
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path


def main() -> int:
    """Time enqueue_many() from the tree named on the command line."""
    tree = Path(sys.argv[1] if len(sys.argv) > 1 else ".").resolve()
    tasks = int(sys.argv[2]) if len(sys.argv) > 2 else 50_000
    sys.path[:0] = [str(tree / "backend"), str(tree / "bench"), str(tree)]
    from bench_enqueue import ARGS, KWARGS, configure_django  # type: ignore[import-not-found]

    from devtools.redis_server import RedisProcess, find_server_binary

    binary = find_server_binary()
    if binary is None:
        print("no redis-server or valkey-server found")
        return 2
    server = RedisProcess(binary)
    server.start()
    try:
        configure_django(server.url, "bench")
        import conveyor
        import redis

        from tests.tasks import noop_task

        assert Path(conveyor.__file__).is_relative_to(tree), f"conveyor imported from {conveyor.__file__}"
        client = redis.Redis.from_url(server.url)
        items = [(ARGS, KWARGS)] * tasks
        conveyor.enqueue_many(noop_task, items[:2000])  # warm up: scripts loaded, queue known
        rates, cpus = [], []
        for _ in range(5):
            client.flushdb()
            wall, cpu = time.perf_counter(), time.process_time()
            conveyor.enqueue_many(noop_task, items)
            rates.append(tasks / (time.perf_counter() - wall))
            cpus.append((time.process_time() - cpu) / tasks * 1e6)
    finally:
        server.stop()
    print(
        f"{tree}: median {statistics.median(rates):,.0f} tasks/s (max {max(rates):,.0f}), "
        f"client CPU {statistics.median(cpus):.1f} us/task"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
