"""Compare the worker of two git revisions: drains alternating in one session, and their metrics calls alone.

Run: .venv/bin/python bench/compare_worker.py OLD_REV NEW_REV [--runs 4] [--tasks 10000]
Exports both revisions (git archive) into a temporary folder, starts one
redis-server, then drains N no-op tasks with `conveyor-worker --batch` from OLD, NEW, OLD,
NEW, ... (bench_worker.drain), and times, in a child process per revision, the metrics calls
a no-op task makes (count started, observe pickup, observe duration, count succeeded, busy
up and down). Prints every run and writes bench/results/compare-worker.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.bench_worker import drain, setup_django  # noqa: E402
from devtools.redis_server import RedisProcess, find_server_binary  # noqa: E402

# The metrics calls of one successful first attempt, as Recorder and Slots make them.
PER_TASK = """
import time
from conveyor_worker.metrics import Metrics
m = Metrics(8)
def task():
    m.set_busy(1)
    m.count("started", "default")
    if hasattr(m, "observe_pickup"):
        m.observe_pickup("default", 0.0012)
    m.observe("default", 0.0003)
    m.count("succeeded", "default")
    m.set_busy(0)
best = float("inf")
for _ in range(7):
    start = time.perf_counter()
    for _ in range(20000):
        task()
    best = min(best, (time.perf_counter() - start) / 20000)
print(best * 1e6)
"""


def checkout(rev: str, into: Path) -> Path:
    """Export a revision's files (git archive) into a folder; return its path."""
    path = into / rev.replace("/", "_")
    path.mkdir()
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", rev], check=True, capture_output=True)
    subprocess.run(["tar", "-x", "-C", str(path)], input=archive.stdout, check=True)
    return path


def metrics_us_per_task(tree: Path) -> float:
    """Return the best-of-7 time of one task's metrics calls with the code under tree, in microseconds."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tree / "backend"), str(tree / "worker")]))
    out = subprocess.run(
        [sys.executable, "-c", PER_TASK], env=env, check=True, capture_output=True, text=True
    )
    return float(out.stdout.strip())


def main() -> int:
    """Alternate the two revisions' drains and report every run."""
    parser = argparse.ArgumentParser()
    parser.add_argument("old")
    parser.add_argument("new")
    parser.add_argument("--runs", type=int, default=4, help="drains per revision, alternating")
    parser.add_argument("--tasks", type=int, default=10_000)
    args = parser.parse_args()
    binary = find_server_binary()
    assert binary, "needs redis-server or valkey-server"
    runs: list[dict[str, object]] = []
    with tempfile.TemporaryDirectory(prefix="conveyor-compare-") as tmp:
        trees = {"old": checkout(args.old, Path(tmp)), "new": checkout(args.new, Path(tmp))}
        micro: dict[str, list[float]] = {name: [] for name in trees}
        for _ in range(5):  # alternating too; the least of each is the least disturbed by other work
            for name, tree in trees.items():
                micro[name].append(metrics_us_per_task(tree))
        server = RedisProcess(binary)
        server.start()
        try:
            setup_django(server.url, "bench")
            for n in range(args.runs):
                for name in ("old", "new") if n % 2 == 0 else ("new", "old"):
                    d = drain(server.url, args.tasks, root=trees[name])
                    runs.append({"code": name, **d})
                    print(
                        f"{name} {n + 1}: {d['tasks_per_second']:.0f} tasks/s, worker CPU "
                        f"{d['worker_cpu_us_per_task']:.0f} us/task, load {d['load_average_before']:.2f}",
                        flush=True,
                    )
        finally:
            server.stop()
    summary = {}
    for name in ("old", "new"):
        mine = [r for r in runs if r["code"] == name]
        summary[name] = {
            "rev": getattr(args, name),
            "median_tasks_per_second": statistics.median(float(r["tasks_per_second"]) for r in mine),  # type: ignore[arg-type]
            "median_worker_cpu_us_per_task": statistics.median(
                float(r["worker_cpu_us_per_task"])
                for r in mine  # type: ignore[arg-type]
            ),
            "metrics_us_per_task": micro[name],
        }
    old, new = summary["old"], summary["new"]
    change = new["median_tasks_per_second"] / old["median_tasks_per_second"] - 1  # type: ignore[operator]
    print(
        f"median drain: old {old['median_tasks_per_second']:.0f}, new {new['median_tasks_per_second']:.0f} "
        f"tasks/s ({change:+.1%}); CPU/task old {old['median_worker_cpu_us_per_task']:.0f}, "
        f"new {new['median_worker_cpu_us_per_task']:.0f} us"
    )
    print(f"metrics calls per task: old {min(micro['old']):.2f} us, new {min(micro['new']):.2f} us")
    out = ROOT / "bench" / "results" / "compare-worker.json"
    out.write_text(json.dumps({"runs": runs, "summary": summary, "drain_change": change}, indent=2) + "\n")
    print(f"wrote {out.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
