"""The worker: composes its parts and runs the lifecycle (start, listen and pace, drain, stop)."""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable

from conveyor.backend import RedisBackend
from conveyor.exceptions import ConveyorError, RedisUnavailable
from conveyor.store import Store

from .drain import drain
from .executor import Executor
from .leases import LeaseKeeper
from .lifecycle import Heartbeat, Lifecycle, State
from .maintenance import Maintenance, claim_project, report_durability, report_layout
from .metrics import Metrics
from .pacing import Pacer
from .pipeline import ClaimPipeline
from .processor import Parts, Processor
from .recorder import Recorder
from .registry import Registry
from .runners import AsyncRunner, Processors
from .scheduler import Scheduler, plans_of
from .settings import WorkerSettings
from .slots import Slots
from .timings import STALE_AFTER, STEER_EVERY, Timings, reconnect_pause
from .wakeups import Wakeups
from .watchdog import Watchdog

logger = logging.getLogger("conveyor_worker")

__all__ = ["State", "Worker"]


class Worker:
    """Claim tasks from Redis, run them, record outcomes, and never lose one.

    The main thread runs this class: it blocks on the queues' wake lists to rouse an idle
    processor, paces how many cycle at once (Pacer), stores what a processor held up in
    a long task has waiting (ClaimPipeline), promotes, reclaims and trims (Maintenance),
    and at the end drains. Everything else runs in parts with their own threads: one
    Processor per slot, the LeaseKeeper, the Watchdog, the Registry, the Recorder's thread
    and the event loop for coroutines. Calls run one way, down from here
    (docs/worker-design.md).
    """

    def __init__(
        self,
        settings: WorkerSettings,
        backend: RedisBackend,
        store: Store,
        allowed_modules: tuple[str, ...],
        metrics: Metrics,
        on_busy_change: Callable[[int], None] | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.metrics = metrics
        self.worker_id = settings.worker_id
        self.project = backend.project_name()
        self.timings = Timings.from_lease(settings.lease, settings.block_seconds)
        self.lifecycle = Lifecycle()
        self.executor = Executor(backend, allowed_modules)
        self.slots = Slots(settings.max_tasks, metrics, on_busy_change)
        self.wakeups = Wakeups()
        self.recorder = Recorder(
            store,
            self.executor,
            self.slots,
            metrics,
            self.lifecycle,
            worker_id=self.worker_id,
            result_ttl=backend.settings.result_ttl,
            failed_ttl=backend.settings.failed_result_ttl,
        )
        self.pipeline = ClaimPipeline(
            store, self.worker_id, self.timings.lease_ms, self.recorder, self.slots, self.wakeups
        )
        self.maintenance = Maintenance(
            store,
            settings.queues,
            self.timings,
            max_deliveries=settings.max_deliveries,
            result_ttl=backend.settings.result_ttl,
            failed_ttl=backend.settings.failed_result_ttl,
            worker_id=self.worker_id,
            scheduler=None
            if settings.batch
            else Scheduler(store, plans_of(backend), backend=backend.alias, worker_id=self.worker_id),
        )
        self.pacer = Pacer(settings.concurrency, self.slots, self.wakeups, self.pipeline)
        self.threads = Processors(settings.concurrency, self._serve, "conveyor-task")
        self.watchdog = Watchdog(self.slots, self.executor, self.threads, self.recorder)
        self.leases = LeaseKeeper(
            store, self.timings, self.slots, self.pipeline, self.recorder, self.watchdog, self.worker_id
        )
        self.registry = Registry(store, settings, self.lifecycle, self.slots)
        self.loop_beat = Heartbeat()
        self.coroutines = AsyncRunner("conveyor-async")
        self._parts = self._processor_parts()

    def _processor_parts(self) -> Parts:
        """Return what every Processor works with."""
        return Parts(
            lifecycle=self.lifecycle,
            store=self.store,
            executor=self.executor,
            slots=self.slots,
            wakeups=self.wakeups,
            pipeline=self.pipeline,
            recorder=self.recorder,
            queues=self.maintenance.queues,
            threads=self.threads,
            watchdog=self.watchdog,
            coroutines=self.coroutines,
            worker_id=self.worker_id,
        )

    # -- health ------------------------------------------------------------------

    @property
    def state(self) -> State:
        """Return where the worker is in its life."""
        return self.lifecycle.state

    @property
    def busy(self) -> int:
        """Return how many slots run a task."""
        return self.slots.busy

    @property
    def ready(self) -> bool:
        """Ready: Redis answers and the worker takes new work."""
        return self.lifecycle.ready()

    def alive(self, stale_after: float = STALE_AFTER) -> bool:
        """Live: the loop, lease keeper and watchdog make progress; stuck threads do not pile up."""
        if self.lifecycle.stopped():
            return True
        # A thread stuck past its task's timeout was replaced and holds no slot; only more
        # of them than there are slots is a leak worth a restart.
        return (
            self.loop_beat.age() < stale_after
            and self.leases.beat.age() < stale_after
            and self.watchdog.beat.age() < stale_after
            and self.threads.stuck <= self.settings.concurrency
        )

    # -- lifecycle ---------------------------------------------------------------

    def request_stop(self) -> None:
        """Stop claiming and drain (the first SIGTERM)."""
        if self.lifecycle.drain():
            logger.info(
                "draining",
                extra={"event": "worker_draining", "worker_id": self.worker_id, "count": self.busy},
            )
        self.wakeups.went_idle.set()
        self.wakeups.wake_all()
        self.slots.nudge()  # a drain, or a task waiting to run alone, looks again

    def run(self) -> int:
        """Run until stopped, drained (batch) or max tasks; return the exit code."""
        self.coroutines.start()
        self.leases.start()
        self.watchdog.start()
        try:
            give_up = self.timings.lease if self.settings.batch else None  # a batch is a job that must end
            if claim_project(
                self.store,
                self.project,
                self.lifecycle,
                self.loop_beat,
                give_up_after=give_up,
                worker_id=self.worker_id,
            ):
                self.registry.start()  # only once this project owns the prefix
                report_durability(self.store, self.worker_id)
                report_layout(self.store, self.worker_id)
                self.lifecycle.start()
                with contextlib.suppress(RedisUnavailable):  # the loop below reports it and retries
                    self.maintenance.refresh_queues()  # so the processors know where to claim from the start
                self.threads.start()
                self._listen()
                self.wakeups.wake_all()
                drain(
                    self.slots,
                    self.pipeline,
                    self.recorder,
                    self.threads,
                    self.loop_beat,
                    deadline=time.monotonic() + self.settings.shutdown_timeout,
                    worker_id=self.worker_id,
                )
        finally:
            self.lifecycle.stop()
            self.registry.stop()
            self.leases.stop()
            self.watchdog.stop()
            self.coroutines.shutdown()
            self.recorder.close()
        return self.lifecycle.exit_code

    def _serve(self) -> None:
        """Run one processor on the calling thread (Processors calls this once per thread)."""
        Processor(self._parts).run()

    def _redis_down(self, exc: ConveyorError) -> None:
        logger.warning(
            "redis unavailable: %s", exc, extra={"event": "redis_unavailable", "worker_id": self.worker_id}
        )

    def _listen(self) -> None:
        """Tick until the worker stops being READY; report Redis trouble and back off."""
        failures, down_since = 0, 0.0
        while self.lifecycle.accepting():
            self.loop_beat.beat()
            try:
                self._tick()
                if failures:
                    logger.info(
                        "redis reachable", extra={"event": "redis_recovered", "worker_id": self.worker_id}
                    )
                failures = 0
                self.lifecycle.redis_ok = True
            except ConveyorError as exc:  # unreachable, or answering errors (READONLY, OOM, ...)
                failures += 1
                if self.lifecycle.redis_ok or failures == 1:
                    down_since = time.monotonic()
                    self._redis_down(exc)
                self.lifecycle.redis_ok = False
                if self.settings.batch and time.monotonic() - down_since > self.timings.lease:
                    # A batch run is a job that must end: after a lease of outage, give up.
                    self.lifecycle.exit_code = 1
                    self._finish_run("redis unavailable for longer than a lease; giving up the batch")
                    break
                self.lifecycle.stopping.wait(reconnect_pause(failures))

    def _finish_run(self, reason: str) -> None:
        logger.info(reason, extra={"event": "worker_draining", "worker_id": self.worker_id, "reason": reason})
        self.lifecycle.drain()

    def _wait_went_idle(self, timeout: float) -> None:
        self.wakeups.went_idle.wait(timeout)
        self.wakeups.went_idle.clear()

    def _all_idle(self) -> bool:
        """Tell whether every processor waits for work and no task is claimed, running or unrecorded."""
        idle = self.wakeups.idle == self.settings.concurrency
        return idle and not self.pipeline.has_ahead() and not self.slots.busy

    def _tick(self) -> None:
        """Promote and reclaim when due, then rouse or pace the processors."""
        queues = self.maintenance.refresh_queues()
        now = time.monotonic()
        for _ in range(self.maintenance.run_due(queues, now)):
            self.wakeups.announce()
        everyone_idle = self.wakeups.idle == self.settings.concurrency and not self.pipeline.has_ahead()
        if everyone_idle:
            self.pipeline.land_stale(older_than=0.0)
            self.pipeline.flush_deferred()
            # Stop only once every processor is idle: a claimed task holds no slot until it
            # has been prepared, and the drain would cut it off at the shutdown timeout.
            if self.slots.spent():
                self._finish_run("max tasks reached")
                return
            if self.settings.batch:
                # Stop only if nothing is ready or due and all are still idle, none having gone
                # idle in between: a processor may claim, fail and reschedule a task while the
                # check runs, and be idle again by its end.
                self.wakeups.went_idle.clear()
                drained = self.maintenance.drained(queues)
                if drained and self._all_idle() and not self.wakeups.went_idle.is_set():
                    self._finish_run("batch drained")
                    return
                self.wakeups.announce()
                self._wait_went_idle(STEER_EVERY)
                return
            timeout = min(self.timings.block, self.maintenance.until_due(now))
            if timeout > 0 and self.store.wait_for_work(queues, timeout):
                self.maintenance.look_at_schedule()  # the token may announce a scheduled task
            # Rouse one idle processor on a token, and also on a timeout, so a token taken by a
            # worker that was busy at that instant never leaves a task waiting.
            self.wakeups.announce()
            return
        # Processors are cycling: they claim as they go, so only listen while none has
        # reported waiting work, and pace them.
        if self.wakeups.waiting or self.settings.batch:
            self._wait_went_idle(STEER_EVERY)
        elif self.store.wait_for_work(queues, STEER_EVERY):
            self.maintenance.look_at_schedule()
            self.wakeups.announce(wake=False)
        self.pacer.steer()
        self.pipeline.land_stale(older_than=STEER_EVERY)
        self.pipeline.flush_deferred(older_than=STEER_EVERY)
