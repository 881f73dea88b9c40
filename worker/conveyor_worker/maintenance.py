"""Maintenance on the main thread: the queue list, promote, reclaim expired leases, trim the indexes."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence

from conveyor.exceptions import ConveyorError
from conveyor.store import Promotion, Store

from .lifecycle import Heartbeat, Lifecycle
from .scheduler import Scheduler
from .settings import QueueSelection
from .timings import BATCH_LIMIT, PROMOTE_EVERY, QUEUE_REFRESH_EVERY, Timings, reconnect_pause

logger = logging.getLogger("conveyor_worker")


class QueueList:
    """The queues this worker claims from, as the main thread last resolved them.

    Owner of the list, under _lock: the main thread replaces it, processors read it.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._queues: tuple[str, ...] = ()

    def current(self) -> tuple[str, ...]:
        """Return the queues to claim from (a claim's reply names them by index in this tuple)."""
        with self._lock:
            return self._queues

    def publish(self, queues: Sequence[str]) -> None:
        """Replace the list."""
        with self._lock:
            self._queues = tuple(queues)


class Maintenance:
    """Keep the queue list current, fire periodic ticks, promote due scheduled tasks, reclaim and trim.

    Trimming drops the succeeded and failed index entries of results past their TTL, on the
    reclaim period, so those indexes stay as small as the results kept.

    Runs on the main thread only, so its fields (when each job is next due, whether
    reclaim holds off after an outage) need no lock; the queue list it publishes is
    QueueList's.
    """

    def __init__(
        self,
        store: Store,
        selection: QueueSelection,
        timings: Timings,
        *,
        max_deliveries: int,
        result_ttl: int,
        failed_ttl: int,
        worker_id: str,
        scheduler: Scheduler | None = None,
    ) -> None:
        self._store = store
        self._scheduler = scheduler  # None: this worker fires no periodic tasks (--batch)
        self._selection = selection
        self._timings = timings
        self._max_deliveries = max_deliveries
        self._result_ttl = result_ttl
        self._failed_ttl = failed_ttl
        self._worker_id = worker_id
        self.queues = QueueList()
        self._queues_at = 0.0
        self._promote_at = 0.0
        self._reclaim_at = 0.0
        self.holding = False  # reclaim holds off after an outage

    def refresh_queues(self) -> tuple[str, ...]:
        """Re-read the queue list when due ('*' only) and return it."""
        selection = self._selection
        current = self.queues.current()
        if not selection.all_queues:
            if not current:
                self.queues.publish(selection.resolve(set()))
            return self.queues.current()
        now = time.monotonic()
        if now - self._queues_at >= QUEUE_REFRESH_EVERY or not current:
            self.queues.publish(selection.resolve(self._store.known_queues()))
            self._queues_at = now
        return self.queues.current()

    def run_due(self, queues: Sequence[str], now: float) -> int:
        """Promote, reclaim and trim when due; return how many of promote and reclaim made tasks ready."""
        ready = 0
        if self._scheduler is not None:
            ready += self._scheduler.run_due(now) > 0
        if now >= self._promote_at:
            promotion = self._store.promote(queues, limit=BATCH_LIMIT)
            self._promote_at = now + PROMOTE_EVERY
            if promotion.next_due_ms is not None:
                until = (promotion.next_due_ms - promotion.server_now_ms) / 1000
                self._promote_at = min(self._promote_at, now + max(0.0, until))
            ready += promotion.promoted > 0
        if now >= self._reclaim_at:
            t = self._timings
            reclaimed = self._store.reclaim(
                queues,
                limit=BATCH_LIMIT,
                max_deliveries=self._max_deliveries,
                failed_ttl=self._failed_ttl,
                lease_ms=t.lease_ms,
                outage_ms=t.outage_ms,
            )
            self._reclaim_at = now + t.reclaim_every
            holding = reclaimed.held_ms > 0
            if holding and not self.holding:
                logger.warning(
                    "no reclaim for %.1fs: Redis was out of reach of every worker; live owners renew first",
                    reclaimed.held_ms / 1000,
                    extra={"event": "reclaim_held", "worker_id": self._worker_id},
                )
            self.holding = holding
            ready += reclaimed.requeued > 0
            self._store.trim_indexes(
                queues, result_ttl=self._result_ttl, failed_ttl=self._failed_ttl, limit=BATCH_LIMIT
            )
        return ready

    def look_at_schedule(self) -> None:
        """Promote at the next tick (a wake token may announce a scheduled task)."""
        self._promote_at = 0.0

    def until_due(self, now: float) -> float:
        """Return seconds until promote or reclaim is due (0 when one is)."""
        due = max(0.0, min(self._promote_at, self._reclaim_at) - now)
        return due if self._scheduler is None else min(due, self._scheduler.until_due(now))

    def drained(self, queues: Sequence[str]) -> bool:
        """Tell a batch run whether nothing is ready or due (promoting first, so a fresh retry counts).

        A paused queue's tasks wait for a resume, not for this run. While reclaim holds off
        after an outage, a running task may be a dead worker's that comes back when the hold
        ends: that is not drained.
        """
        fresh = self._store.promote(queues, limit=BATCH_LIMIT)
        stats = self._store.queue_stats(queues)
        return _nothing_due(fresh) and not any(
            (s.ready and not s.paused) or (self.holding and s.running) for s in stats
        )


def _nothing_due(promotion: Promotion) -> bool:
    return promotion.promoted == 0 and (
        promotion.next_due_ms is None or promotion.next_due_ms > promotion.server_now_ms
    )


def claim_project(
    store: Store,
    project: str,
    lifecycle: Lifecycle,
    beat: Heartbeat,
    *,
    give_up_after: float | None,
    worker_id: str,
) -> bool:
    """Make sure this project owns the key prefix before any task is claimed; False to stop.

    While Redis does not answer it tries again (giving up after give_up_after seconds,
    exit code 1); a prefix another project owns is exit code 2.
    """
    failures, started = 0, time.monotonic()
    while not lifecycle.stopping.is_set():
        beat.beat()
        try:
            owner = store.claim_project(project)
        except ConveyorError as exc:
            failures += 1
            if failures == 1:
                logger.warning(
                    "redis unavailable: %s", exc, extra={"event": "redis_unavailable", "worker_id": worker_id}
                )
            if give_up_after is not None and time.monotonic() - started > give_up_after:
                lifecycle.exit_code = 1
                logger.info(
                    "redis unavailable for longer than a lease; giving up the batch",
                    extra={"event": "worker_draining", "worker_id": worker_id},
                )
                return False
            lifecycle.stopping.wait(reconnect_pause(failures))
            continue
        if owner != project:
            logger.error(
                "key prefix %r belongs to project %r, not %r: refusing to run its tasks "
                "(give each project its own KEY_PREFIX, or set OPTIONS PROJECT)",
                store.keys.prefix,
                owner,
                project,
                extra={"event": "project_mismatch", "worker_id": worker_id},
            )
            lifecycle.exit_code = 2
            return False
        lifecycle.redis_ok = True
        return True
    return True  # stopped before Redis answered: the run loop ends at once


def report_layout(store: Store, worker_id: str) -> None:
    """Log once, at start, tasks this worker never sees: kept under the other HASH_TAG_PER_QUEUE layout."""
    try:
        stranded = store.stranded(sorted(store.known_queues()))
    except ConveyorError:
        return  # the loop reports Redis trouble itself
    if stranded:
        logger.warning(
            "%d tasks were enqueued with HASH_TAG_PER_QUEUE %s, which this worker does not read: "
            "run workers with the old setting until they are done (docs/cluster.md)",
            sum(stranded.values()),
            "off" if store.keys.per_queue else "on",
            extra={"worker_id": worker_id, "event": "tasks_in_other_layout", "queues": stranded},
        )


def report_durability(store: Store, worker_id: str) -> None:
    """Log once, at start, a Redis that would lose tasks silently (eviction, no persistence)."""
    try:
        durability = store.durability()
    except ConveyorError:
        return  # the loop reports Redis trouble itself
    extra = {"worker_id": worker_id}
    if durability is None:
        logger.info(
            "could not verify redis eviction and persistence (CONFIG GET refused)",
            extra={**extra, "event": "redis_durability_unverified"},
        )
    elif risks := durability.risks():
        reason = "; ".join(risks)
        logger.warning(
            "redis may lose tasks without an error: %s",
            reason,
            extra={**extra, "event": "redis_durability_risk", "reason": reason},
        )
