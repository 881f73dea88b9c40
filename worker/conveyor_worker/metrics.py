"""In-process counters and histograms in Prometheus text format; queue work and saturation for autoscalers."""

from __future__ import annotations

import json
import math
import threading
from bisect import bisect_left
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from itertools import accumulate

from conveyor.store import QueueStats

from .settings import QueueSelection, SettingError

BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)
# Pickup latency runs from about a millisecond (an idle worker) to minutes (a backlog, no worker).
PICKUP_BUCKETS = (0.001, 0.0025, *BUCKETS, 900.0, 3600.0)
# name -> (its buckets, its help text); observed per queue.
HISTOGRAMS = {
    "task_duration_seconds": (BUCKETS, "Time a task attempt ran."),
    "task_pickup_seconds": (
        PICKUP_BUCKETS,
        "Time from when a task could first run (enqueued, or a later run_after) to its first attempt.",
    ),
}
COUNTERS = {
    "started": "Task attempts started.",
    "succeeded": "Tasks that finished SUCCESSFUL.",
    "failed": "Tasks that finished FAILED (after their last attempt).",
    "retried": "Failed attempts scheduled to run again.",
    "cancelled": "Tasks an operator cancelled (counted in failed too: FAILED with TaskCancelled).",
}

# The per-queue gauges read from Redis on scrape. conveyor_queue_work is what the autoscalers divide
# by the worker's slots: every task that wants a slot now, waiting or running.
QUEUE_GAUGES: tuple[tuple[str, str, Callable[[QueueStats], int]], ...] = (
    ("queue_ready", "Tasks ready to run.", lambda s: s.ready),
    ("queue_scheduled", "Tasks waiting for run_after or a retry backoff, due or not.", lambda s: s.scheduled),
    ("queue_due", "Scheduled tasks whose time has come, not yet made ready by a worker.", lambda s: s.due),
    ("queue_running", "Tasks claimed by a worker (in flight).", lambda s: s.running),
    (
        "queue_work",
        "Tasks that want a worker slot now: ready + due + running (running only while paused).",
        lambda s: s.work,
    ),
    ("queue_paused", "1 while the queue is paused: no worker claims from it.", lambda s: int(s.paused)),
)


def work_document(stats: Iterable[QueueStats]) -> dict[str, object]:
    """Return /work: per-queue counts and their sums, the numbers KEDA's metrics-api scaler reads."""
    queues = {s.queue: {"ready": s.ready, "due": s.due, "running": s.running, "work": s.work} for s in stats}
    totals = {name: sum(q[name] for q in queues.values()) for name in ("ready", "due", "running", "work")}
    return {**totals, "queues": queues}


def live_slots(beats: Iterable[bytes], queues: Sequence[str]) -> dict[str, int]:
    """Return, per queue, the slots of the live workers in state ready that serve it (from their heartbeats).

    A heartbeat that does not parse, or a worker starting or draining, adds nothing: it claims no task.
    """
    slots = dict.fromkeys(queues, 0)
    for beat in beats:
        try:
            worker = json.loads(beat)
            if worker.get("state") != "ready":
                continue
            selection = QueueSelection.from_given(worker["queues"])
            count = int(worker["slots"])
        except (ValueError, TypeError, KeyError, AttributeError, SettingError):
            continue
        for q in queues:
            if selection.serves(q):
                slots[q] += count
    return slots


def saturation(work: int, slots: int) -> float:
    """Return work per live slot: 0 when nothing wants a slot, +Inf when work waits and no slot serves it."""
    if slots > 0:
        return work / slots
    return math.inf if work else 0.0


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _number(value: float) -> str:
    return "+Inf" if value == math.inf else repr(value)


class Metrics:
    """Thread-safe task counters, per-queue histograms (duration, pickup latency) and slot gauges."""

    def __init__(self, slots: int) -> None:
        self.slots = slots
        self._lock = threading.Lock()
        self._counts: dict[tuple[str, str], int] = defaultdict(int)
        self._buckets: dict[tuple[str, str], list[int]] = {}  # (histogram, queue) -> count per bucket
        self._sums: dict[tuple[str, str], float] = defaultdict(float)
        self._busy = 0

    def count(self, name: str, queue: str) -> None:
        """Add one to a counter for a queue."""
        with self._lock:
            self._counts[(name, queue)] += 1

    def observe(self, queue: str, seconds: float) -> None:
        """Record one task duration."""
        with self._lock:  # per-bucket counts; render() accumulates them
            key = ("task_duration_seconds", queue)
            buckets = self._buckets.get(key) or self._buckets.setdefault(key, [0] * (len(BUCKETS) + 1))
            buckets[bisect_left(BUCKETS, seconds)] += 1
            self._sums[key] += seconds

    def observe_pickup(self, queue: str, seconds: float) -> None:
        """Record how long a task waited from when it could first run to the start of its first attempt."""
        with self._lock:
            key = ("task_pickup_seconds", queue)
            buckets = self._buckets.get(key) or self._buckets.setdefault(key, [0] * (len(PICKUP_BUCKETS) + 1))
            buckets[bisect_left(PICKUP_BUCKETS, seconds)] += 1
            self._sums[key] += seconds

    def set_busy(self, busy: int) -> None:
        """Set how many slots run a task now."""
        with self._lock:
            self._busy = busy

    def value(self, name: str, queue: str) -> int:
        """Return a counter's value (for tests and logs)."""
        with self._lock:
            return self._counts[(name, queue)]

    def render(
        self, stats: Iterable[QueueStats] | None, up: bool, slots: Mapping[str, int] | None = None
    ) -> str:
        """Return the Prometheus exposition text (slots: live slots per queue, for the saturation gauge)."""
        out: list[str] = []

        def family(name: str, kind: str, help_text: str) -> None:
            out.append(f"# HELP conveyor_{name} {help_text}")
            out.append(f"# TYPE conveyor_{name} {kind}")

        family("worker_up", "gauge", "1 when this process can reach Redis.")
        out.append(f"conveyor_worker_up {int(up)}")
        if stats is not None:
            stats = list(stats)
            for name, help_text, count in QUEUE_GAUGES:
                family(name, "gauge", help_text)
                for s in stats:
                    out.append(f'conveyor_{name}{{queue="{_label(s.queue)}"}} {count(s)}')
            family("queue_oldest_ready_age_seconds", "gauge", "Age of the oldest ready task.")
            for s in stats:
                age = 0.0
                if s.oldest_ready_ms is not None:
                    age = max(0.0, (s.read_at_ms - s.oldest_ready_ms) / 1000)
                out.append(f'conveyor_queue_oldest_ready_age_seconds{{queue="{_label(s.queue)}"}} {age:.3f}')
            if slots is not None:
                family("queue_slots", "gauge", "Slots of the live workers in state ready serving the queue.")
                for s in stats:
                    out.append(f'conveyor_queue_slots{{queue="{_label(s.queue)}"}} {slots.get(s.queue, 0)}')
                family(
                    "queue_saturation",
                    "gauge",
                    "conveyor_queue_work / conveyor_queue_slots: above 1, tasks wait for a slot "
                    "(0 with no work, +Inf with work and no slot).",
                )
                for s in stats:
                    value = saturation(s.work, slots.get(s.queue, 0))
                    out.append(f'conveyor_queue_saturation{{queue="{_label(s.queue)}"}} {_number(value)}')
        with self._lock:
            counts = dict(self._counts)
            buckets = {key: list(b) for key, b in self._buckets.items()}
            sums = dict(self._sums)
            busy = self._busy
        for name, help_text in COUNTERS.items():
            family(f"tasks_{name}_total", "counter", help_text)
            for (counter, queue), value in sorted(counts.items()):
                if counter == name:
                    out.append(f'conveyor_tasks_{name}_total{{queue="{_label(queue)}"}} {value}')
        for histogram, (bounds, help_text) in HISTOGRAMS.items():
            family(histogram, "histogram", help_text)
            for (name, queue), per_bucket in sorted(buckets.items()):
                if name != histogram:
                    continue
                q, metric = _label(queue), f"conveyor_{histogram}"
                cumulative = list(accumulate(per_bucket))
                for bound, n in zip(bounds, cumulative, strict=False):
                    out.append(f'{metric}_bucket{{queue="{q}",le="{bound}"}} {n}')
                out.append(f'{metric}_bucket{{queue="{q}",le="+Inf"}} {cumulative[-1]}')
                out.append(f'{metric}_sum{{queue="{q}"}} {sums[(name, queue)]:.6f}')
                out.append(f'{metric}_count{{queue="{q}"}} {cumulative[-1]}')
        family("worker_busy_slots", "gauge", "Slots running a task now.")
        out.append(f"conveyor_worker_busy_slots {busy}")
        family("worker_slots", "gauge", "Tasks this process runs at once.")
        out.append(f"conveyor_worker_slots {self.slots}")
        return "\n".join(out) + "\n"
