"""Draw the Grafana dashboard's panels from a short live run: docs/screenshots/dashboard.png.

Run: .venv/bin/python bench/dashboard_picture.py [--seconds 25]   (needs matplotlib)
Starts its own redis-server and one worker (concurrency 8), enqueues a varying load for a bounded
time (a steady trickle, a burst of short sleeps, a few failing and retried tasks), scrapes the
worker's /metrics every second and plots, with the dashboard's queries worked out in Python over
the scrapes, the panels of deploy/helm/conveyor/dashboards/conveyor.json.
"""

from __future__ import annotations

import argparse
import re
import secrets
import signal
import sys
import threading
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.bench_worker import setup_django, start_worker  # noqa: E402
from devtools.redis_server import RedisProcess, find_server_binary, free_port  # noqa: E402
from tests.conftest import tasks_setting  # noqa: E402

SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$")
LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')
Scrape = dict[tuple[str, frozenset[tuple[str, str]]], float]
WINDOW = 5  # seconds over which rates and quantiles are taken, as rate(...[5s]) would


def parse(text: str) -> Scrape:
    """Return {(name, labels): value} for every sample of a /metrics text."""
    out: Scrape = {}
    for line in text.splitlines():
        match = SAMPLE.match(line)
        if match:
            out[(match[1], frozenset(LABEL.findall(match[2] or "")))] = float(match[3])
    return out


def value(scrape: Scrape, name: str, **labels: str) -> float:
    return scrape.get((name, frozenset(labels.items())), 0.0)


def quantile(q: float, now: Scrape, before: Scrape) -> float | None:
    """histogram_quantile(q, increase of conveyor_task_pickup_seconds_bucket between two scrapes)."""
    buckets = sorted(
        (float(dict(labels)["le"]), count - before.get((name, labels), 0.0))
        for (name, labels), count in now.items()
        if name == "conveyor_task_pickup_seconds_bucket"
    )
    if not buckets or buckets[-1][1] <= 0:
        return None
    rank, lower, below = q * buckets[-1][1], 0.0, 0.0
    for upper, count in buckets:
        if count >= rank:
            if upper == float("inf"):
                return lower
            return lower + (upper - lower) * (rank - below) / max(count - below, 1e-9)
        lower, below = upper, count
    return None


def load(url: str, prefix: str, seconds: float, stop: threading.Event) -> None:
    """Enqueue a varying load: a trickle, a burst of short sleeps, failures, then a trickle again."""
    from django.test import override_settings

    from tests.tasks import always_fails, flaky, noop_task, sleep_for

    scratch = Path(f"/tmp/conveyor-dashboard-{prefix}")
    start = time.monotonic()
    with override_settings(TASKS=tasks_setting(url, prefix)):
        n = 0
        while not stop.is_set() and (t := time.monotonic() - start) < seconds:
            phase = t / seconds
            if phase < 0.25:
                noop_task.enqueue()
                time.sleep(0.01)  # about 100 a second
            elif phase < 0.3:
                for _ in range(200):
                    sleep_for.enqueue(0.05)  # a backlog: 8 slots drain about 160 a second
                time.sleep(0.25)
            elif phase < 0.6:
                noop_task.enqueue()
                if n % 20 == 0:
                    always_fails.enqueue()
                if n % 30 == 0:
                    flaky.enqueue(str(scratch / f"{n}"), 1)
                time.sleep(0.01)
            else:
                noop_task.enqueue()
                time.sleep(0.02)
            n += 1


def main() -> int:
    """Run the load, scrape every second, draw the panels."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=25.0)
    parser.add_argument("--out", default=str(ROOT / "docs" / "screenshots" / "dashboard.png"))
    args = parser.parse_args()
    binary = find_server_binary()
    assert binary, "needs redis-server or valkey-server"
    server = RedisProcess(binary)
    server.start()
    scrapes: list[tuple[float, Scrape]] = []
    try:
        setup_django(server.url, "bench")
        prefix = "bench-dash-" + secrets.token_hex(3)
        port = free_port()
        worker = start_worker(server.url, prefix, health_port=port)
        stop = threading.Event()
        loader = threading.Thread(target=load, args=(server.url, prefix, args.seconds, stop), daemon=True)
        try:
            time.sleep(2.0)  # the worker starts
            loader.start()
            start = time.monotonic()
            while time.monotonic() - start < args.seconds + 5:
                tick = time.monotonic()
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
                    scrapes.append((tick - start, parse(response.read().decode())))
                time.sleep(max(0.0, 1.0 - (time.monotonic() - tick)))
        finally:
            stop.set()
            loader.join(30)
            worker.send_signal(signal.SIGTERM)
            worker.wait(timeout=60)
    finally:
        server.stop()

    times = [t for t, _ in scrapes]
    q = "default"

    def series(name: str, **labels: str) -> list[float]:
        return [value(s, name, **labels) for _, s in scrapes]

    def rate(name: str) -> tuple[list[float], list[float]]:
        xs, ys = [], []
        for i in range(WINDOW, len(scrapes)):
            (t1, now), (t0, before) = scrapes[i], scrapes[i - WINDOW]
            xs.append(t1)
            ys.append((value(now, name, queue=q) - value(before, name, queue=q)) / (t1 - t0))
        return xs, ys

    fig, axes = plt.subplots(3, 2, figsize=(13, 9), constrained_layout=True)
    fig.suptitle(
        f"conveyor dashboard panels: one worker (8 slots), {args.seconds:.0f} s of load", fontsize=13
    )
    ax = axes[0][0]
    ax.set_title("Queue depth")
    for name, label in (("ready", "ready"), ("due", "due"), ("running", "running")):
        ax.plot(times, series(f"conveyor_queue_{name}", queue=q), label=f"{q} {label}")
    ax = axes[0][1]
    ax.set_title("Pickup latency (s)")
    for p in (0.5, 0.95):
        xs, ys = [], []
        for i in range(WINDOW, len(scrapes)):
            v = quantile(p, scrapes[i][1], scrapes[i - WINDOW][1])
            if v is not None:
                xs.append(scrapes[i][0])
                ys.append(v)
        ax.plot(xs, ys, label=f"{q} p{int(p * 100)}")
    ax.set_yscale("log")
    ax = axes[1][0]
    ax.set_title("Throughput (tasks/s)")
    ax.plot(*rate("conveyor_tasks_succeeded_total"), label=f"{q} succeeded")
    ax.plot(*rate("conveyor_tasks_failed_total"), label=f"{q} failed")
    ax = axes[1][1]
    ax.set_title("Failures (per s)")
    for name in ("failed", "retried", "cancelled"):
        ax.plot(*rate(f"conveyor_tasks_{name}_total"), label=f"{q} {name}")
    ax = axes[2][0]
    ax.set_title("Busy slots")
    ax.plot(times, series("conveyor_worker_busy_slots"), label="busy")
    ax.plot(times, series("conveyor_worker_slots"), label="slots")
    right = ax.twinx()  # as the dashboard's override puts it: on its own axis, in percent
    right.plot(
        times, [v * 100 for v in series("conveyor_queue_saturation", queue=q)], "C2", label=f"{q} saturation"
    )
    right.set_ylabel("saturation (%)")
    right.set_ylim(bottom=0)
    right.legend(loc="upper center", fontsize=8)
    ax.set_ylim(0, max(series("conveyor_worker_slots") + series("conveyor_worker_busy_slots")) * 1.3)
    ax = axes[2][1]
    ax.set_title("Replicas (here without kube-state-metrics: the scraped workers only)")
    ax.plot(times, series("conveyor_worker_up"), label="scraped (count of conveyor_worker_up)")
    for row in axes:
        for ax in row:
            ax.set_xlabel("seconds")
            ax.grid(alpha=0.3)
            ax.legend(loc="upper right", fontsize=8)
            if ax.get_yscale() != "log" and ax.get_ylim()[0] != 0:
                ax.set_ylim(bottom=0)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=90)
    print(f"wrote {args.out} from {len(scrapes)} scrapes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
