"""The worker: processors that claim and run tasks, a listener/maintenance loop, a watchdog, drain."""

from __future__ import annotations

import contextlib
import enum
import itertools
import logging
import random
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from conveyor import codec
from conveyor.backend import RedisBackend
from conveyor.exceptions import ConveyorError, RedisUnavailable, TaskTimeout
from conveyor.store import Claimed, Promotion, Reclaimed, ScriptCall, Sent, Store

from .executor import Attempt, Executor, Verdict
from .logs import TaskLines
from .metrics import Metrics
from .runners import AsyncRunner, Processors
from .settings import WorkerSettings
from .timings import (
    BACKOFF_MAX,
    LONG_TASK,
    PARALLEL_ABOVE,
    PARK_ABOVE,
    PROMOTE_EVERY,
    QUEUE_REFRESH_EVERY,
    RENEW_RETRY_MAX,
    SPILL_BELOW,
    STEER_EVERY,
)

logger = logging.getLogger("conveyor_worker")


def pace(*, idle: int, cycling: int, waiting: bool, load: float) -> str:
    """Decide whether to wake one more processor ("spill"), park one ("park") or do nothing ("hold")."""
    room = load < SPILL_BELOW or load > PARALLEL_ABOVE
    if idle and waiting and (cycling <= 0 or room):
        return "spill"
    if cycling > 1 and PARK_ABOVE < load <= PARALLEL_ABOVE:
        return "park"
    return "hold"


@dataclass(frozen=True, slots=True, kw_only=True)
class Deferred:
    """A success whose record waits for its processor's next round trip."""

    attempt: Attempt
    verdict: Verdict
    then: Callable[[], None] | None
    since: float = field(default_factory=time.monotonic)


@dataclass(slots=True, kw_only=True)
class InFlight:
    """A record-and-claim round trip a processor sent before running its last task claimed ahead."""

    sent: Sent
    deferred: list[Deferred]
    claims: int
    queues: list[str]  # as when sent: the claim's reply names queues by index
    since: float = field(default_factory=time.monotonic)
    landed: bool = False
    lock: threading.Lock = field(default_factory=threading.Lock)


class State(enum.StrEnum):
    """Where the worker is in its life."""

    STARTING = "starting"
    READY = "ready"
    DRAINING = "draining"
    STOPPED = "stopped"


class Worker:
    """Claim tasks from Redis, run them, record outcomes, and never lose one.

    Each of the --concurrency processor threads claims its own task, runs it and
    records the outcome together with the claim of its next task in one round trip.
    While a backlog waits, that claim takes one task more per idle processor (see
    _batch), and their successes ride on the next round trip, which is sent before
    the batch's last task runs; so a busy worker spends one round trip per batch.
    The main thread blocks on the queues' wake lists to rouse an idle processor,
    paces how many cycle at once (see STEER_EVERY), takes over what a processor
    held up in a long task has waiting, and promotes and reclaims. A watchdog
    thread renews leases and stops sync tasks that overrun.
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
        self.lease_ms = int(settings.lease * 1000)
        self.executor = Executor(backend, allowed_modules, self._record)
        self._lines = TaskLines(logger)  # the two INFO lines of every task
        self.project = backend.project_name()
        self.result_ttl = backend.settings.result_ttl
        self.failed_ttl = backend.settings.failed_result_ttl
        self._on_busy_change = on_busy_change
        self.state = State.STARTING
        self.redis_ok = False
        self.exit_code = 0
        self.claimed = 0  # tasks claimed, for --max-tasks
        self._running: dict[str, Attempt] = {}
        self._cond = threading.Condition()  # guards _running and claimed; signals slot changes
        self._work = threading.Condition()  # idle processors wait here for the listener
        self._idle = 0
        self._went_idle = threading.Event()  # tells the main thread to listen again
        self._announced = 0  # wake tokens taken; a processor about to idle compares (under _work)
        self._waiting = 0  # tasks the latest claim left ready (a hint for pacing)
        self._park = 0  # cycling processors asked to go idle (under _work)
        self._ahead: deque[tuple[Claimed, float]] = deque()  # claimed, not started yet (claim time)
        self._unrecorded: list[Deferred] = []  # successes waiting for a round trip (under _cond)
        self._in_flight: dict[int, InFlight] = {}  # per processor thread, replies unread (under _cond)
        self._cpu_mark = (time.monotonic(), time.process_time())
        self._load = 0.0  # smoothed share of one core the process uses
        self._local = threading.local()
        self._stop = threading.Event()
        self._watch_wake = threading.Event()
        self._queues: list[str] = []
        self._queues_at = 0.0
        self._promote_at = 0.0
        self._reclaim_at = 0.0
        self._reclaim_every = min(5.0, settings.lease / 4)
        # A longer pause between reclaims than this (by any worker) means nobody could reach
        # Redis: reclaim then holds off for a lease, so live owners renew first.
        self._outage_ms = int(settings.lease * 500)
        self._renew_retry = min(RENEW_RETRY_MAX, settings.lease / 10)
        self._claim_ids = itertools.count(1)  # names each claim call, so a replay finds its tasks
        self._alone: Attempt | None = None  # a task waiting to run, or running, alone (under _cond)
        self._alone_running = False  # True while it runs: other tasks wait (under _cond)
        self._recorder = ThreadPoolExecutor(1, thread_name_prefix="conveyor-recorder")
        self._holding = False  # reclaim holds off after an outage (main thread only)
        self.loop_beat = time.monotonic()
        self.watch_beat = time.monotonic()
        self._processors: Processors | None = None
        self._async: AsyncRunner | None = None

    # -- health ------------------------------------------------------------------

    @property
    def busy(self) -> int:
        """Return how many slots run a task."""
        return len(self._running)

    @property
    def ready(self) -> bool:
        """Ready: Redis answers and the worker takes new work."""
        return self.state is State.READY and self.redis_ok

    def alive(self, stale_after: float = 30.0) -> bool:
        """Live: the loop and the watchdog make progress and abandoned threads do not pile up."""
        now = time.monotonic()
        if self.state is State.STOPPED:
            return True
        # A thread stuck past its task's timeout was replaced and holds no slot; only more
        # of them than there are slots is a leak worth a restart.
        stuck = self._processors.stuck if self._processors else 0
        return (
            now - self.loop_beat < stale_after
            and now - self.watch_beat < stale_after
            and stuck <= self.settings.concurrency
        )

    # -- lifecycle ---------------------------------------------------------------

    def request_stop(self) -> None:
        """Stop claiming and drain (the first SIGTERM)."""
        if self.state in (State.STARTING, State.READY):
            logger.info(
                "draining",
                extra={"event": "worker_draining", "worker_id": self.worker_id, "count": self.busy},
            )
            self.state = State.DRAINING
        self._stop.set()
        self._went_idle.set()
        self._wake_processors(every=True)
        with self._cond:
            self._cond.notify_all()

    def run(self) -> int:
        """Run until stopped, drained (batch) or max tasks; return the exit code."""
        self._async = AsyncRunner("conveyor-async")
        threading.Thread(target=self._watch, name="conveyor-watchdog", daemon=True).start()
        if not self._claim_project():
            self.state = State.STOPPED
            self._watch_wake.set()
            self._async.shutdown()
            self._recorder.shutdown(wait=False)
            return self.exit_code
        if self.state is State.STARTING:
            self.state = State.READY
        with contextlib.suppress(RedisUnavailable):  # the loop below reports it and retries
            self._current_queues()  # so the processors know where to claim from the start
        self._processors = Processors(self.settings.concurrency, self._process, "conveyor-task")
        self._processors.start()
        failures, down_since = 0, 0.0
        while self.state is State.READY:
            self.loop_beat = time.monotonic()
            try:
                self._tick()
                if failures:
                    logger.info(
                        "redis reachable", extra={"event": "redis_recovered", "worker_id": self.worker_id}
                    )
                self.redis_ok, failures = True, 0
            except ConveyorError as exc:  # unreachable, or answering errors (READONLY, OOM, ...)
                failures += 1
                if self.redis_ok or failures == 1:
                    down_since = time.monotonic()
                    logger.warning(
                        "redis unavailable: %s",
                        exc,
                        extra={"event": "redis_unavailable", "worker_id": self.worker_id},
                    )
                self.redis_ok = False
                if self.settings.batch and time.monotonic() - down_since > self.settings.lease:
                    # A batch run is a job that must end: after a lease of outage, give up.
                    self.exit_code = 1
                    self._finish_run("redis unavailable for longer than a lease; giving up the batch")
                    break
                self._stop.wait(min(BACKOFF_MAX, 0.05 * 2**failures) * random.uniform(0.5, 1.5))
        self._wake_processors(every=True)
        self._drain()
        self.state = State.STOPPED
        self._watch_wake.set()
        self._async.shutdown()
        self._recorder.shutdown(wait=False)
        return self.exit_code

    def _claim_project(self) -> bool:
        """Make sure this project owns the key prefix before any task is claimed; False to stop."""
        failures, started = 0, time.monotonic()
        while not self._stop.is_set():
            self.loop_beat = time.monotonic()
            try:
                owner = self.store.claim_project(self.project)
            except ConveyorError as exc:
                failures += 1
                if failures == 1:
                    logger.warning(
                        "redis unavailable: %s",
                        exc,
                        extra={"event": "redis_unavailable", "worker_id": self.worker_id},
                    )
                if self.settings.batch and time.monotonic() - started > self.settings.lease:
                    self.exit_code = 1
                    logger.info(
                        "redis unavailable for longer than a lease; giving up the batch",
                        extra={"event": "worker_draining", "worker_id": self.worker_id},
                    )
                    return False
                self._stop.wait(min(BACKOFF_MAX, 0.05 * 2**failures) * random.uniform(0.5, 1.5))
                continue
            if owner != self.project:
                logger.error(
                    "key prefix %r belongs to project %r, not %r: refusing to run its tasks "
                    "(give each project its own KEY_PREFIX, or set OPTIONS PROJECT)",
                    self.store.keys.prefix,
                    owner,
                    self.project,
                    extra={"event": "project_mismatch", "worker_id": self.worker_id},
                )
                self.exit_code = 2
                return False
            self.redis_ok = True
            return True
        return True  # stopped before Redis answered: the run loop below ends at once

    # -- the main thread: maintenance and listening --------------------------------

    def _tick(self) -> None:
        """Promote and reclaim when due, then rouse or pace the processors."""
        queues = self._current_queues()
        now = time.monotonic()
        if now >= self._promote_at:
            promotion = self.store.promote(queues, limit=1000)
            self._promote_at = now + PROMOTE_EVERY
            if promotion.next_due_ms is not None:
                until = (promotion.next_due_ms - promotion.server_now_ms) / 1000
                self._promote_at = min(self._promote_at, now + max(0.0, until))
            if promotion.promoted:
                self._announce()
        if now >= self._reclaim_at:
            reclaimed = self.store.reclaim(
                queues,
                limit=1000,
                max_deliveries=self.settings.max_deliveries,
                failed_ttl=self.failed_ttl,
                lease_ms=self.lease_ms,
                outage_ms=self._outage_ms,
            )
            self._reclaim_at = now + self._reclaim_every
            self._note_reclaim(reclaimed)
            if reclaimed.requeued:
                self._announce()
        with self._work:
            idle = self._idle
        everyone_idle = idle == self.settings.concurrency and not self._ahead
        if everyone_idle:
            self._land_stale(older_than=0.0)
            self._flush_deferred()
        # Stop only once every processor is idle: a claimed task is not in _running (busy)
        # until it has been prepared, and the drain would cut it off at the shutdown timeout.
        spent = self.settings.max_tasks and self.claimed >= self.settings.max_tasks
        if spent and everyone_idle:
            self._finish_run("max tasks reached")
            return
        if self.settings.batch and everyone_idle:
            # Every processor found nothing; promote again now, so a retry they scheduled
            # just before going idle counts, and stop only if nothing is ready or due.
            fresh = self.store.promote(queues, limit=1000)
            stats = self.store.queue_stats(queues)
            # While reclaim holds off after an outage, a running task may be a dead worker's
            # that comes back when the hold ends: wait for it.
            if self._nothing_due(fresh) and not any(s.ready or (self._holding and s.running) for s in stats):
                self._finish_run("batch drained")
                return
            self._announce()
            self._went_idle.wait(STEER_EVERY)
            self._went_idle.clear()
            return
        if not everyone_idle:
            # Processors are cycling: they claim as they go, so only listen while none
            # has reported waiting work, and pace them.
            if self._waiting or self.settings.batch:
                self._went_idle.wait(STEER_EVERY)
                self._went_idle.clear()
            elif self.store.wait_for_work(queues, STEER_EVERY):
                self._promote_at = 0.0
                self._announce(wake=False)
            self._steer()
            return
        timeout = min(
            self.settings.block_seconds,
            max(0.0, self._promote_at - now),
            max(0.0, self._reclaim_at - now),
        )
        woken = timeout > 0 and self.store.wait_for_work(queues, timeout)
        if woken:
            self._promote_at = 0.0  # the token may announce a scheduled task: look at the schedule
        # Rouse one idle processor on a token, and also on a timeout, so a token taken by a
        # worker that was busy at that instant never leaves a task waiting.
        self._announce()

    def _note_reclaim(self, reclaimed: Reclaimed) -> None:
        """Log when reclaim starts holding off after an outage (live owners renew first)."""
        holding = reclaimed.held_ms > 0
        if holding and not self._holding:
            logger.warning(
                "no reclaim for %.1fs: Redis was out of reach of every worker; live owners renew first",
                reclaimed.held_ms / 1000,
                extra={"event": "reclaim_held", "worker_id": self.worker_id},
            )
        self._holding = holding

    def _announce(self, wake: bool = True) -> None:
        """Note that work may be waiting; wake one idle processor unless pacing decides."""
        with self._work:
            self._announced += 1
            self._waiting = max(self._waiting, 1)
            if wake:
                self._work.notify()

    def _steer(self) -> None:
        """Add a processor while work waits and the core has room, or park one of several on a full core."""
        mono, cpu = time.monotonic(), time.process_time()
        last_mono, last_cpu = self._cpu_mark
        self._cpu_mark = (mono, cpu)
        if mono > last_mono:
            self._load = (self._load + (cpu - last_cpu) / (mono - last_mono)) / 2
        running = list(self._running.values())  # finalized ones only wait for their record
        long = sum(1 for a in running if not a.finalized and mono - a.started >= LONG_TASK)
        with self._work:
            cycling = self.settings.concurrency - self._idle - long
            step = pace(idle=self._idle, cycling=cycling, waiting=self._waiting > 0, load=self._load)
            self._park = int(step == "park")
            if step == "spill":
                self._work.notify()
            ahead = self._ahead
            if ahead and mono - ahead[0][1] >= STEER_EVERY:
                # The processor that claimed them is held up: let idle ones take them.
                self._work.notify(len(ahead))
        self._land_stale(older_than=STEER_EVERY)
        self._flush_deferred(older_than=STEER_EVERY)

    @staticmethod
    def _nothing_due(promotion: Promotion) -> bool:
        return promotion.promoted == 0 and (
            promotion.next_due_ms is None or promotion.next_due_ms > promotion.server_now_ms
        )

    def _finish_run(self, reason: str) -> None:
        logger.info(reason, extra={"event": "worker_draining", "worker_id": self.worker_id, "reason": reason})
        self.state = State.DRAINING
        self._stop.set()

    def _current_queues(self) -> list[str]:
        selection = self.settings.queues
        if not selection.all_queues:
            if not self._queues:
                self._queues = selection.resolve(set())
            return self._queues
        now = time.monotonic()
        if now - self._queues_at >= QUEUE_REFRESH_EVERY or not self._queues:
            self._queues = selection.resolve(self.store.known_queues())
            self._queues_at = now
        return self._queues

    def _wake_processors(self, every: bool = False) -> None:
        with self._work:
            if every:
                self._work.notify_all()
            else:
                self._work.notify()

    # -- processors ----------------------------------------------------------------

    def _accepting(self) -> bool:
        return self.state is State.READY and not self._retired()

    def _claiming(self) -> bool:
        """Tell whether this processor may claim: accepting, and no task waits to run alone."""
        return self._alone is None and self._accepting()

    def _retired(self) -> bool:
        assert self._processors is not None
        return self._processors.is_retired(threading.get_ident())

    def _reserve(self, wanted: int) -> int:
        """Take up to wanted claims from the --max-tasks budget; return how many were granted."""
        with self._cond:
            if self.settings.max_tasks:
                wanted = min(wanted, self.settings.max_tasks - self.claimed)
            wanted = max(0, wanted)
            self.claimed += wanted
            return wanted

    def _unreserve(self, unused: int) -> None:
        if unused:
            with self._cond:
                self.claimed -= unused

    def _batch(self) -> int:
        """How many tasks to claim at once: one, or while work waits, one per idle processor more.

        Tasks claimed ahead wait in _ahead for this processor to run them one after another
        (their outcomes recorded together with the next claim), or for an idle processor
        to take them if the task before them runs long; so no more are claimed than there
        are processors free to run them.
        """
        return max(1, min(1 + self._idle, self._waiting))

    def _process(self) -> None:
        """Run one processor on a connection of its own."""
        with self.store.hold_connection():
            try:
                self._process_tasks()
            finally:
                # Even on a crash, read what this processor sent ahead before its connection
                # goes: the tasks it claimed join _ahead rather than wait out their lease.
                self._land(self._local)

    def _process_tasks(self) -> None:
        """Wait to be woken, then run tasks claimed ahead or claim more, until none is left or it parks."""
        local = self._local
        # A fresh processor looks for work once before it first idles (seen = -1).
        local.processor, local.park, local.seen = True, False, -1
        while self._idle_until_woken(local):
            while True:
                # Tasks claimed ahead were claimed before any stop: they are in flight, so
                # they run (within the shutdown timeout) like the one before them; but not
                # on a thread retired for overrunning (its replacement runs them).
                claimed = None if self._retired() else self._take_ahead()
                if claimed is None:
                    if local.park or not self._claiming():
                        break
                    try:
                        claimed = self._claim(local)
                    except ConveyorError:  # the main loop reports Redis trouble and backs off
                        self._stop.wait(random.uniform(0.5, 1.5))
                        continue
                    if claimed is None:
                        break
                try:
                    self._execute(claimed)
                except BaseException:
                    self._abandon(claimed)
                    raise
            self._land(local)

    def _abandon(self, claimed: Claimed) -> None:
        """After this thread crashed: give back a claimed task that never got as far as running."""
        with self._cond:
            started = claimed.task_id in self._running
        if not started:
            self._give_back(claimed.task_id, claimed.queue, claimed.token, started=False)

    def _idle_until_woken(self, local: threading.local) -> bool:
        """Wait for the main thread's wake; False once this processor must stop taking work."""
        with self._work:
            local.park = False
            if self._retired():
                return False
            if self._ahead:
                return True
            if not self._accepting():
                return False
            if self._announced != local.seen:  # work was announced after this thread last claimed
                local.seen = self._announced
                return True
            self._idle += 1
            self._went_idle.set()
            try:
                self._work.wait()
            finally:
                self._idle -= 1
            return not self._retired() and (self._accepting() or bool(self._ahead))

    def _take_ahead(self) -> Claimed | None:
        try:
            return self._ahead.popleft()[0]
        except IndexError:
            return None

    def _claim(self, local: threading.local) -> Claimed | None:
        """Claim a batch (recording any deferred outcomes in the same round trip); return the first."""
        self._land(local)
        if self._ahead:
            return self._take_ahead()
        local.seen = self._announced
        if not self._queues or not self._claiming():
            return None
        self._exchange([], self._reserve(self._batch()))
        return self._take_ahead()

    def _exchange(self, calls: list[ScriptCall], claims: int) -> list[Any]:
        """Send calls after the deferred records and before a claim of up to claims tasks; one round trip.

        Claimed tasks join _ahead; the replies to calls are returned. Reserved claims are
        given back whatever happens; deferred records go back to wait on an error.
        """
        queues = self._queues  # the claim's reply names queues by their index in this list
        deferred, sent = self._round_trip(calls, claims, queues)
        try:
            replies = self.store.run(sent) if sent else []
        except BaseException:
            self._undo_round_trip(deferred, claims)
            raise
        self._absorb(replies, deferred, claims, queues)
        return replies[len(deferred) : len(deferred) + len(calls)]

    def _round_trip(
        self, calls: list[ScriptCall], claims: int, queues: list[str]
    ) -> tuple[list[Deferred], list[ScriptCall]]:
        """Take the deferred records; return them and the calls to send: theirs, calls, a claim."""
        with self._cond:
            deferred, self._unrecorded = self._unrecorded, []
        sent = [self._verdict_call(d.attempt, d.verdict) for d in deferred] + calls
        if claims:
            claim_id = f"{self.worker_id}:{next(self._claim_ids)}"
            sent.append(self.store.claim_call(queues, self.worker_id, self.lease_ms, claims, claim_id))
        return deferred, sent

    def _undo_round_trip(self, deferred: list[Deferred], claims: int) -> None:
        """After a failed round trip: give the claims back; the records wait for the next one."""
        self._unreserve(claims)
        with self._cond:
            self._unrecorded[:0] = deferred

    def _absorb(self, replies: list[Any], deferred: list[Deferred], claims: int, queues: list[str]) -> None:
        """Take in a round trip's replies: claimed tasks join _ahead, deferred records are done."""
        if claims:
            found, self._waiting = self.store.parse_claimed(replies[-1], queues)
            self._unreserve(claims - len(found))
            now = time.monotonic()
            self._ahead.extend((c, now) for c in found)
        for d, reply in zip(deferred, replies, strict=False):
            self._recorded(d.attempt, d.verdict, bool(reply), d.then)

    def _send_ahead(self, local: threading.local) -> None:
        """Send the deferred records and the next claim without waiting (see _land)."""
        queues = self._queues
        if not queues:
            return
        claims = self._reserve(self._batch())
        local.seen = self._announced
        deferred, calls = self._round_trip([], claims, queues)
        try:
            sent = self.store.send_ahead(calls)
        except ConveyorError:  # they go again with the next round trip (or the main thread's)
            self._undo_round_trip(deferred, claims)
            return
        flight = InFlight(sent=sent, deferred=deferred, claims=claims, queues=queues)
        local.flight = flight
        with self._cond:
            self._in_flight[threading.get_ident()] = flight

    def _land(self, local: threading.local) -> None:
        """Read the replies of this processor's round trip in flight, if any."""
        flight = getattr(local, "flight", None)
        if flight is not None:
            local.flight = None
            self._read_flight(threading.get_ident(), flight)

    def _read_flight(self, owner: int, flight: InFlight) -> None:
        """Read a round trip's replies (by its processor, or by the main thread if it waits too long)."""
        with flight.lock:
            if flight.landed:
                return
            flight.landed = True
            with self._cond:
                self._in_flight.pop(owner, None)
            try:
                replies = self.store.receive(flight.sent)
            except ConveyorError:
                replies = None
            if replies is None:
                try:
                    # Send the same calls again on a fresh connection: records are fenced by
                    # delivery and the claim returns what it claimed the first time.
                    replies = self.store.run(flight.sent.calls)
                except ConveyorError as exc:
                    self._undo_round_trip(flight.deferred, flight.claims)
                    logger.warning(
                        "could not read a round trip: %s",
                        exc,
                        extra={"event": "record_failed", "worker_id": self.worker_id},
                    )
                    return
        self._absorb(replies, flight.deferred, flight.claims, flight.queues)

    def _land_stale(self, older_than: float) -> None:
        """Read round trips whose processor has not come back for them (a long last task)."""
        now = time.monotonic()
        with self._cond:
            stale = [(t, f) for t, f in self._in_flight.items() if now - f.since >= older_than]
        for owner, flight in stale:
            self._read_flight(owner, flight)

    def _parks(self, local: threading.local) -> bool:
        """Tell whether this processor takes up the main thread's request to park."""
        if local.park:
            return True
        if not self._park:
            return False
        with self._work:
            if self._park:
                self._park -= 1
                local.park = True
        return bool(local.park)

    def _execute(self, claimed: Claimed) -> None:
        attempt = self.executor.prepare(claimed)
        if attempt.alone and attempt.rejection is None and not self._clear_for(attempt):
            self._give_back(attempt.task_id, attempt.queue, attempt.token, started=False)
            return
        with self._cond:
            self._running[attempt.task_id] = attempt
        self._busy_changed()
        try:
            if attempt.postpone is not None:
                self._postpone(attempt)
            elif attempt.rejection is not None:
                self.executor.reject(attempt)
            else:
                self._run(attempt)
        finally:
            if attempt.alone:
                with self._cond:
                    if self._alone is attempt:
                        self._alone, self._alone_running = None, False
                        self._cond.notify_all()

    def _run(self, attempt: Attempt) -> None:
        """Run a prepared attempt on this thread (a coroutine on the event loop thread)."""
        assert attempt.result is not None and self._async is not None
        if self._alone_running and not attempt.alone:
            # A task that lost its worker before runs with nothing beside it. (Reading the flag
            # unlocked first is safe: this attempt entered _running under _cond, and the flag is
            # only set under _cond once _running is empty.)
            with self._cond:
                while self._alone_running:
                    self._cond.wait(0.05)
        attempt.started = time.monotonic()  # its timeout counts from here, not from any wait
        self.metrics.count("started", attempt.queue)
        self._lines.info("task started", self._task_fields(attempt, event="task_started", status="RUNNING"))
        if attempt.is_async:
            self._async.submit(self.executor.run_async(attempt)).result()
        else:
            if attempt.timeout is not None:
                self._watch_wake.set()
            self.executor.run_sync(attempt)

    def _clear_for(self, attempt: Attempt) -> bool:
        """Make this worker run nothing but attempt: stop claiming, give back what waits, let the rest finish.

        An earlier delivery of the task lost its worker, perhaps by killing it; alone, a
        second kill charges no other task a delivery. Tasks claimed ahead never started,
        so giving them back costs them nothing; the ones running finish and are stored.
        False when another task already waits to run alone here (give this one back).
        """
        with self._cond:
            if self._alone is not None:
                return False
            self._alone = attempt  # renewed from now on; stops every claim
        logger.info(
            "task lost its worker before; running it alone",
            extra={
                "event": "task_isolated",
                "task_id": attempt.task_id,
                "queue": attempt.queue,
                "worker_id": self.worker_id,
            },
        )
        self._land(self._local)
        while True:
            while (claimed := self._take_ahead()) is not None:
                self._give_back(claimed.task_id, claimed.queue, claimed.token, started=False)
            self._land_stale(older_than=0.0)
            self._flush_deferred()
            with self._cond:
                if not self._accepting():  # draining: it goes back unstarted, still to run alone
                    self._alone = None
                    self._cond.notify_all()
                    return False
                if not self._running and not self._ahead and not self._in_flight:
                    self._alone_running = True
                    return True
                self._cond.wait(0.05)

    def _postpone(self, attempt: Attempt) -> None:
        """Give back, unrun, a task whose path this worker cannot import yet; it is due again later."""
        assert attempt.postpone is not None
        self._land(self._local)
        stored = False
        try:
            call = self.store.postpone_call(
                attempt.task_id, attempt.queue, attempt.token, int(attempt.postpone * 1000)
            )
            stored = bool(self.store.run([call])[0])
        except ConveyorError as exc:
            logger.warning(
                "could not postpone: %s", exc, extra=self._task_fields(attempt, event="record_failed")
            )
        finally:
            with self._cond:
                self._running.pop(attempt.task_id, None)
                self._cond.notify_all()
            self._busy_changed()
        if stored:
            logger.warning(
                "task path does not import here (yet); back in its queue in %.0fs: %s",
                attempt.postpone,
                attempt.rejection,
                extra=self._task_fields(
                    attempt, event="task_postponed", delay_ms=int(attempt.postpone * 1000)
                ),
            )

    def _task_fields(self, attempt: Attempt, **extra: Any) -> dict[str, Any]:
        fields: dict[str, Any] = {
            "task_id": attempt.task_id,
            "queue": attempt.queue,
            "worker_id": self.worker_id,
        }
        if attempt.result is not None:
            fields["task_path"] = attempt.result.task.module_path
            fields["attempt"] = attempt.result.attempts
        fields.update(extra)
        return fields

    # -- recording ---------------------------------------------------------------

    def _record(self, attempt: Attempt, verdict: Verdict, then: Callable[[], None] | None = None) -> bool:
        """Store an attempt's outcome (retrying while Redis is away, up to one lease); free its slot.

        then() runs once the outcome is stored. A success on a processor that holds tasks
        claimed ahead is deferred: it is stored with that processor's next round trip, or
        by the main thread if that does not come within STEER_EVERY.
        """
        local = self._local
        processor = getattr(local, "processor", False)
        if processor:
            self._land(local)  # its connection carries nothing else until those replies are read
        if verdict.kind == "succeeded" and self._ahead and processor:
            with self._cond:
                self._unrecorded.append(Deferred(attempt=attempt, verdict=verdict, then=then))
            if len(self._ahead) == 1 and self._waiting and self._claiming() and not self._parks(local):
                # The batch's last task is next: send its records and the next claim now and
                # read the replies after running it, so Redis works while the task runs.
                self._send_ahead(local)
            return True
        stored = False
        try:
            stored = self._store_verdict(attempt, verdict)
        finally:
            self._recorded(attempt, verdict, stored, then)
        return stored

    def _recorded(
        self, attempt: Attempt, verdict: Verdict, stored: bool, then: Callable[[], None] | None
    ) -> None:
        """Free the attempt's slot, log its outcome and run then() if it was stored."""
        with self._cond:
            self._running.pop(attempt.task_id, None)
            self._cond.notify_all()
        self._busy_changed()
        self._log_verdict(attempt, verdict, stored)
        if stored and then is not None:
            try:
                then()
            except Exception:  # a signal receiver's bug must not take the processor down
                logger.exception(
                    "a task_finished receiver raised", extra=self._task_fields(attempt, event="signal_failed")
                )

    def _flush_deferred(self, older_than: float = 0.0) -> None:
        """Store deferred outcomes from the main thread when their processor is held up."""
        with self._cond:
            due = self._unrecorded and time.monotonic() - self._unrecorded[0].since >= older_than
        if due:
            try:
                self._exchange([], 0)
            except ConveyorError as exc:
                logger.warning(
                    "could not record outcomes: %s",
                    exc,
                    extra={"event": "record_failed", "worker_id": self.worker_id},
                )

    def _store_verdict(self, attempt: Attempt, verdict: Verdict) -> bool:
        """Store an outcome, trying again while Redis is away for as long as this worker runs.

        The attempt keeps its slot meanwhile, so its lease is renewed the moment Redis is
        back: an outage, however long, does not make a finished task run again.
        """
        delay = 0.05
        warned = False
        while True:
            try:
                return self._write_verdict(attempt, verdict)
            except ConveyorError as exc:
                if self.state is State.STOPPED:
                    logger.error(
                        "could not record outcome before stopping: %s",
                        exc,
                        extra=self._task_fields(attempt, event="record_failed"),
                    )
                    return False
                if not warned:
                    warned = True
                    logger.warning(
                        "could not record outcome yet (trying again): %s",
                        exc,
                        extra=self._task_fields(attempt, event="record_delayed"),
                    )
                time.sleep(delay)
                delay = min(delay * 2, 2.0)

    def _verdict_call(self, attempt: Attempt, verdict: Verdict) -> ScriptCall:
        store, tid, q, me = self.store, attempt.task_id, attempt.queue, attempt.token
        errors = codec.encode_errors(verdict.errors) if verdict.errors else "[]"  # type: ignore[arg-type]
        if verdict.kind == "retry":
            return store.retry_call(tid, q, me, int(verdict.retry_delay * 1000), {"errors": errors})
        fields = {"finished_at": str(codec.to_micros(verdict.finished_at))} if verdict.finished_at else {}
        if verdict.kind == "succeeded":
            fields["result"] = verdict.return_json or "null"
            return store.finish_call(tid, q, me, "SUCCESSFUL", self.result_ttl, fields)
        fields["errors"] = errors
        return store.finish_call(tid, q, me, "FAILED", self.failed_ttl, fields)

    def _write_verdict(self, attempt: Attempt, verdict: Verdict) -> bool:
        """Record; a processor also stores deferred outcomes and claims in the same round trip."""
        call = self._verdict_call(attempt, verdict)
        local = self._local
        if not getattr(local, "processor", False):
            return bool(self.store.run([call])[0])
        claims = 0
        if self._claiming() and not self._parks(local) and self._queues:
            local.seen = self._announced
            claims = self._reserve(self._batch())
        (reply,) = self._exchange([call], claims)
        return bool(reply)

    def _log_verdict(self, attempt: Attempt, verdict: Verdict, stored: bool) -> None:
        q = attempt.queue
        duration_ms = round(verdict.duration * 1000, 3)
        if not stored:
            attempt.lease_lost = True
            logger.warning(
                "lease lost; outcome discarded (another delivery will run it)",
                extra=self._task_fields(attempt, event="lease_lost"),
            )
            return
        self.metrics.observe(q, verdict.duration)
        last = verdict.errors[-1] if verdict.errors else None
        if verdict.kind == "succeeded":
            self.metrics.count("succeeded", q)
            self._lines.info(
                "task finished",
                self._task_fields(
                    attempt, event="task_finished", status="SUCCESSFUL", duration_ms=duration_ms
                ),
            )
        elif verdict.kind == "retry":
            self.metrics.count("retried", q)
            logger.warning(
                "task failed; will retry",
                extra=self._task_fields(
                    attempt,
                    event="task_retry",
                    status="READY",
                    duration_ms=duration_ms,
                    delay_ms=int(verdict.retry_delay * 1000),
                    error=last.exception_class_path if last else None,
                    traceback=last.traceback if last else None,
                ),
            )
        else:
            self.metrics.count("failed", q)
            logger.error(
                "task failed" if verdict.kind == "failed" else "task rejected",
                extra=self._task_fields(
                    attempt,
                    event="task_finished",
                    status="FAILED",
                    duration_ms=duration_ms,
                    reason=attempt.rejection,
                    error=last.exception_class_path if last else None,
                    traceback=last.traceback if last else None,
                ),
            )

    def _busy_changed(self) -> None:
        busy = self.busy
        self.metrics.set_busy(busy)
        if self._on_busy_change is not None:
            self._on_busy_change(busy)

    # -- watchdog: leases and timeouts ------------------------------------------

    def _watch(self) -> None:
        """Renew leases and stop sync tasks that overrun; never wait on user code or on recording."""
        renew_every = self.settings.lease / 3
        renew_at = time.monotonic() + renew_every
        while self.state is not State.STOPPED:
            now = time.monotonic()
            self.watch_beat = now
            next_wake = renew_at
            for attempt in list(self._running.values()):
                deadline = attempt.deadline
                if deadline is None or attempt.is_async or attempt.finalized:
                    continue
                if now >= deadline:
                    self._time_out(attempt)
                else:
                    next_wake = min(next_wake, deadline)
            if now >= renew_at:
                # After a failure, try again soon: when Redis comes back, this worker's
                # leases are renewed within moments, before anyone may reclaim them.
                renew_at = now + (renew_every if self._renew() else self._renew_retry)
                next_wake = min(next_wake, renew_at)
            self._watch_wake.wait(min(1.0, max(0.005, next_wake - time.monotonic())))
            self._watch_wake.clear()

    def _time_out(self, attempt: Attempt) -> None:
        """Stop an attempt that overran; its failure is recorded on the recorder thread, not here."""
        thread_id = attempt.thread_id
        if thread_id is None:  # not started yet: its clock starts when it runs
            return
        if not attempt.finalize():  # it finished meanwhile
            return
        where = self.executor.where(attempt)
        assert self._processors is not None
        # The stuck thread is replaced at once so the slot is free; the interrupt ends
        # the task at its next Python instruction (not inside a blocking C call).
        self._processors.retire(thread_id)
        attempt.interrupt(TaskTimeout)
        self._recorder.submit(self.executor.record_timeout, attempt, where)

    def _renew(self) -> bool:
        """Renew every lease this worker holds in one round trip; False when Redis did not answer."""
        held_here = [a for a in list(self._running.values()) if not a.lease_lost]
        alone = self._alone
        if alone is not None and alone.task_id not in self._running:
            held_here.append(alone)  # waiting for the others to finish
        leases = [(a.task_id, a.queue, a.token) for a in held_here]
        leases += [(c.task_id, c.queue, c.token) for c, _ in list(self._ahead)]
        if not leases:
            return True
        try:
            held = self.store.renew(leases, self.lease_ms)
        except ConveyorError as exc:
            logger.warning(
                "lease renewal failed: %s", exc, extra={"event": "renew_failed", "worker_id": self.worker_id}
            )
            return False
        for (task_id, _, _), ok in zip(leases, held, strict=True):
            attempt = self._running.get(task_id)
            if not ok and attempt is not None and not attempt.lease_lost:
                attempt.lease_lost = True
                logger.warning(
                    "lease lost while running", extra=self._task_fields(attempt, event="lease_lost")
                )
        return True

    # -- draining ----------------------------------------------------------------

    def _give_back(self, task_id: str, queue: str, token: str, *, started: bool = True) -> bool:
        try:
            return self.store.release(task_id, queue, token, started=started)
        except ConveyorError as exc:
            logger.warning(
                "could not release: %s",
                exc,
                extra={
                    "event": "release_failed",
                    "task_id": task_id,
                    "queue": queue,
                    "worker_id": self.worker_id,
                },
            )
            return False

    def _drain(self) -> None:
        """Give running tasks up to the shutdown timeout, then return the rest to their queues."""
        deadline = time.monotonic() + self.settings.shutdown_timeout
        assert self._processors is not None
        while time.monotonic() < deadline:
            self.loop_beat = time.monotonic()
            self._land_stale(older_than=STEER_EVERY)
            self._flush_deferred(older_than=STEER_EVERY)
            with self._cond:
                # Wait for the processors too: they run what they claimed ahead.
                if not (self._running or self._ahead or self._processors.active):
                    break
                self._cond.wait(timeout=min(0.05, max(0.0, deadline - time.monotonic())))
        self._land_stale(older_than=0.0)
        self._flush_deferred()
        with self._cond:
            left = list(self._running.values())
        while (claimed := self._take_ahead()) is not None:
            released = self._give_back(claimed.task_id, claimed.queue, claimed.token, started=False)
            logger.warning(
                "task returned to its queue before it started" if released else "task left to its lease",
                extra={
                    "event": "task_released",
                    "task_id": claimed.task_id,
                    "queue": claimed.queue,
                    "worker_id": self.worker_id,
                },
            )
        for attempt in left:
            if not attempt.finalize():
                continue
            released = self._give_back(attempt.task_id, attempt.queue, attempt.token)
            logger.warning(
                "task returned to its queue unfinished" if released else "task left to its lease",
                extra=self._task_fields(attempt, event="task_released"),
            )
            with self._cond:
                self._running.pop(attempt.task_id, None)
        self._busy_changed()
