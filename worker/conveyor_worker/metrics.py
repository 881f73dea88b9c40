"""In-process counters and histograms in Prometheus text format; queue work and saturation for autoscalers."""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from conveyor.store import QueueStats
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

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


class _Scrape(Collector):
    """One scrape's families: the queue gauges read from Redis just now, then the registry's."""

    def __init__(self, families: list[Metric], registry: CollectorRegistry) -> None:
        self._families = families
        self._registry = registry

    def collect(self) -> Iterable[Metric]:
        """Yield the scrape-time families, then the process's own."""
        yield from self._families
        yield from self._registry.collect()


class Metrics:
    """Task counters, per-queue histograms (duration, pickup) and slot gauges in this worker's registry.

    Each Metrics has its own prometheus_client CollectorRegistry (never the global default one);
    the children of a labelled metric are cached per queue, so the hot path skips labels().
    """

    def __init__(self, slots: int) -> None:
        self.slots = slots
        self.registry = CollectorRegistry(auto_describe=False)
        self._counters = {
            name: Counter(f"conveyor_tasks_{name}", help_text, ["queue"], registry=self.registry)
            for name, help_text in COUNTERS.items()
        }
        self._histograms = {
            name: Histogram(f"conveyor_{name}", help_text, ["queue"], buckets=bounds, registry=self.registry)
            for name, (bounds, help_text) in HISTOGRAMS.items()
        }
        self._busy = 0  # written by Slots at every change (an int store is atomic), read at scrape time
        Gauge("conveyor_worker_busy_slots", "Slots running a task now.", registry=self.registry).set_function(
            lambda: self._busy
        )
        Gauge("conveyor_worker_slots", "Tasks this process runs at once.", registry=self.registry).set(slots)
        self._children: dict[tuple[str, str], Any] = {}  # (metric, queue) -> its child; only ever added to

    def _child(self, key: tuple[str, str], parent: Counter | Histogram) -> Any:
        child = self._children.get(key)
        if child is None:
            child = self._children.setdefault(key, parent.labels(key[1]))
        return child

    def count(self, name: str, queue: str) -> None:
        """Add one to a counter for a queue."""
        self._child((name, queue), self._counters[name]).inc()

    def observe(self, queue: str, seconds: float) -> None:
        """Record one task duration."""
        key = ("task_duration_seconds", queue)
        self._child(key, self._histograms[key[0]]).observe(seconds)

    def observe_pickup(self, queue: str, seconds: float) -> None:
        """Record how long a task waited from when it could first run to the start of its first attempt."""
        key = ("task_pickup_seconds", queue)
        self._child(key, self._histograms[key[0]]).observe(seconds)

    def set_busy(self, busy: int) -> None:
        """Set how many slots run a task now."""
        self._busy = busy

    def value(self, name: str, queue: str) -> int:
        """Return a counter's value (for tests and logs)."""
        value = self.registry.get_sample_value(f"conveyor_tasks_{name}_total", {"queue": queue})
        return int(value or 0)

    def render(
        self, stats: Iterable[QueueStats] | None, up: bool, slots: Mapping[str, int] | None = None
    ) -> str:
        """Return the Prometheus exposition text (slots: live slots per queue, for the saturation gauge)."""
        families: list[Metric] = []
        worker_up = GaugeMetricFamily("conveyor_worker_up", "1 when this process can reach Redis.")
        worker_up.add_metric([], int(up))
        families.append(worker_up)
        if stats is not None:
            stats = list(stats)
            for name, help_text, count in QUEUE_GAUGES:
                gauge = GaugeMetricFamily(f"conveyor_{name}", help_text, labels=["queue"])
                for s in stats:
                    gauge.add_metric([s.queue], count(s))
                families.append(gauge)
            age = GaugeMetricFamily(
                "conveyor_queue_oldest_ready_age_seconds", "Age of the oldest ready task.", labels=["queue"]
            )
            for s in stats:
                seconds = 0.0
                if s.oldest_ready_ms is not None:
                    seconds = max(0.0, (s.read_at_ms - s.oldest_ready_ms) / 1000)
                age.add_metric([s.queue], round(seconds, 3))
            families.append(age)
            if slots is not None:
                slot_gauge = GaugeMetricFamily(
                    "conveyor_queue_slots",
                    "Slots of the live workers in state ready serving the queue.",
                    labels=["queue"],
                )
                saturated = GaugeMetricFamily(
                    "conveyor_queue_saturation",
                    "conveyor_queue_work / conveyor_queue_slots: above 1, tasks wait for a slot "
                    "(0 with no work, +Inf with work and no slot).",
                    labels=["queue"],
                )
                for s in stats:
                    slot_gauge.add_metric([s.queue], slots.get(s.queue, 0))
                    saturated.add_metric([s.queue], saturation(s.work, slots.get(s.queue, 0)))
                families += [slot_gauge, saturated]
        return generate_latest(_Scrape(families, self.registry)).decode()
