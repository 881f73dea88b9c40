"""A processor: one thread's loop that claims tasks, runs them and records them with the next claim."""

from __future__ import annotations

import logging
import random
import threading
from collections.abc import Callable
from dataclasses import dataclass

from conveyor.exceptions import ConveyorError
from conveyor.store import Claimed, Store

from .executor import Attempt, Executor, Verdict
from .lifecycle import Lifecycle
from .maintenance import QueueList
from .pipeline import ClaimPipeline, InFlight
from .recorder import Recorder
from .runners import AsyncRunner, Processors
from .slots import Slots
from .timings import CLAIM_RETRY_MAX, CLAIM_RETRY_MIN
from .wakeups import Wakeups
from .watchdog import Watchdog

logger = logging.getLogger("conveyor_worker")


@dataclass(frozen=True, slots=True, kw_only=True)
class Parts:
    """What a processor works with; each part owns its own state (see their docstrings)."""

    lifecycle: Lifecycle
    store: Store
    executor: Executor
    slots: Slots
    wakeups: Wakeups
    pipeline: ClaimPipeline
    recorder: Recorder
    queues: QueueList
    threads: Processors
    watchdog: Watchdog
    coroutines: AsyncRunner
    worker_id: str


class Processor:
    """One processor thread's loop; its fields are its own (no other thread reads them).

    It waits to be woken, runs tasks claimed ahead or claims more, and records each
    outcome with the claim of its next task in one round trip. A success while tasks
    wait ahead is deferred to the next round trip, which is sent before the batch's last
    task runs and read after it (or by the main thread if that task runs long).
    """

    def __init__(self, parts: Parts) -> None:
        self._p = parts
        self._me = threading.get_ident()
        self._park = False  # this processor took up a request to park: it goes idle after this task
        self._seen = -1  # announcements seen when it last claimed; -1: look for work before idling
        self._flight: InFlight | None = None  # its round trip sent ahead, replies unread

    def run(self) -> None:
        """Run on a connection of its own until retired or stopped."""
        with self._p.store.transport.hold():
            try:
                self._loop()
            finally:
                # Even on a crash, read what this processor sent ahead before its connection
                # goes: the tasks it claimed join those ahead rather than wait out their lease.
                self.land()

    def _loop(self) -> None:
        p = self._p
        while self._idle_until_woken():
            while True:
                # Tasks claimed ahead were claimed before any stop: they are in flight, so
                # they run (within the shutdown timeout) like the one before them; but not
                # on a thread retired for overrunning (its replacement runs them).
                claimed = None if self._retired() else p.pipeline.take()
                if claimed is None:
                    if self._park or not self._claiming():
                        break
                    try:
                        claimed = self._claim()
                    except ConveyorError:  # the main loop reports Redis trouble and backs off
                        p.lifecycle.stopping.wait(random.uniform(CLAIM_RETRY_MIN, CLAIM_RETRY_MAX))
                        continue
                    if claimed is None:
                        break
                try:
                    self._execute(claimed)
                except BaseException:
                    self._abandon(claimed)
                    raise
            self.land()

    def _retired(self) -> bool:
        return self._p.threads.is_retired(self._me)

    def _accepting(self) -> bool:
        return self._p.lifecycle.accepting() and not self._retired()

    def _claiming(self) -> bool:
        """Tell whether this processor may claim: accepting, and no task waits to run alone."""
        return self._p.slots.alone is None and self._accepting()

    def _idle_until_woken(self) -> bool:
        """Wait for the main thread's wake; False once this processor must stop taking work."""
        self._park = False
        go_on, self._seen = self._p.wakeups.sleep(
            self._seen,
            leave=self._retired,
            ahead=self._p.pipeline.has_ahead,
            accepting=self._p.lifecycle.accepting,
        )
        return go_on

    def _parks(self) -> bool:
        """Tell whether this processor takes up the main thread's request to park."""
        if not self._park:
            self._park = self._p.wakeups.take_park()
        return self._park

    def _claim(self) -> Claimed | None:
        """Claim a batch (recording any deferred outcomes in the same round trip); return the first."""
        p = self._p
        self.land()
        claimed = p.pipeline.take()
        if claimed is not None:
            return claimed
        self._seen, batch = p.wakeups.claim_size()
        queues = p.queues.current()
        if not queues or not self._claiming():
            return None
        p.pipeline.exchange([], p.slots.reserve(batch), queues)
        return p.pipeline.take()

    def _abandon(self, claimed: Claimed) -> None:
        """After this thread crashed: give back a claimed task that never got as far as running."""
        if not self._p.slots.holds(claimed.task_id):
            self._p.recorder.give_back(claimed.task_id, claimed.queue, claimed.token, started=False)

    # -- running one task ---------------------------------------------------------------

    def _execute(self, claimed: Claimed) -> None:
        p = self._p
        attempt = p.executor.prepare(claimed)
        if attempt.alone and attempt.rejection is None and not self._clear_for(attempt):
            p.recorder.give_back(attempt.task_id, attempt.queue, attempt.token, started=False)
            return
        p.slots.enter(attempt)
        try:
            if attempt.postpone is not None:
                self.land()
                p.recorder.postpone(attempt)
            elif attempt.rejection is not None:
                p.executor.reject(attempt, self.record)
            else:
                self._run(attempt)
        finally:
            if attempt.alone:
                p.slots.end_alone(attempt)

    def _run(self, attempt: Attempt) -> None:
        """Run a prepared attempt on this thread (a coroutine on the event loop thread)."""
        p = self._p
        if not attempt.alone:
            p.slots.wait_while_alone()  # a task that lost its worker before runs with nothing beside it
        attempt.begin()  # its timeout counts from here, not from any wait
        p.recorder.started(attempt)
        if attempt.is_async:
            p.coroutines.submit(p.executor.run_async(attempt, p.recorder.record)).result()
        else:
            if attempt.timeout is not None:
                p.watchdog.watch()
            p.executor.run_sync(attempt, self.record)

    def _clear_for(self, attempt: Attempt) -> bool:
        """Make this worker run nothing but attempt: stop claiming, give back what waits, let the rest finish.

        An earlier delivery of the task lost its worker, perhaps by killing it; alone, a
        second kill charges no other task a delivery. Tasks claimed ahead never started,
        so giving them back costs them nothing; the ones running finish and are stored.
        False when another task already waits to run alone here (give this one back).
        """
        p = self._p
        if not p.slots.isolate(attempt):  # renewed from now on; stops every claim
            return False
        logger.info(
            "task lost its worker before; running it alone",
            extra={
                "event": "task_isolated",
                "task_id": attempt.task_id,
                "queue": attempt.queue,
                "worker_id": p.worker_id,
            },
        )
        self.land()
        while True:
            while (claimed := p.pipeline.take()) is not None:
                p.recorder.give_back(claimed.task_id, claimed.queue, claimed.token, started=False)
            p.pipeline.land_stale(older_than=0.0)
            p.pipeline.flush_deferred()
            if not p.lifecycle.accepting():  # draining: it goes back unstarted, still to run alone
                p.slots.end_alone(attempt)
                return False
            if p.pipeline.idle() and p.slots.run_alone_if_empty(attempt):
                return True

    # -- recording ------------------------------------------------------------------------

    def record(self, attempt: Attempt, verdict: Verdict, then: Callable[[], None] | None = None) -> bool:
        """Store an attempt's outcome with this processor's next claim; free its slot.

        A success while tasks wait ahead is deferred: it is stored with the next round
        trip, or by the main thread if that does not come within STEER_EVERY.
        """
        p = self._p
        self.land()  # the connection carries nothing else until those replies are read
        if verdict.kind == "succeeded" and p.pipeline.has_ahead():
            p.pipeline.defer(attempt, verdict, then)
            if p.pipeline.ahead_count() == 1 and p.wakeups.waiting and self._claiming() and not self._parks():
                # The batch's last task is next: send its records and the next claim now and
                # read the replies after running it, so Redis works while the task runs.
                self._send_ahead()
            return True
        return p.recorder.persist(attempt, verdict, then, self._write)

    def _write(self, attempt: Attempt, verdict: Verdict) -> bool:
        """Record, together with deferred outcomes and the next claim, in one round trip."""
        p = self._p
        call = p.recorder.call_for(attempt, verdict)
        claims, queues = 0, p.queues.current()
        if queues and self._claiming() and not self._parks():
            self._seen, batch = p.wakeups.claim_size()
            claims = p.slots.reserve(batch)
        (reply,) = p.pipeline.exchange([call], claims, queues)
        return bool(reply)

    def _send_ahead(self) -> None:
        """Send the deferred records and the next claim without waiting (see land)."""
        p = self._p
        queues = p.queues.current()
        if not queues:
            return
        self._seen, batch = p.wakeups.claim_size()
        claims = p.slots.reserve(batch)
        self._flight = p.pipeline.send_ahead(self._me, claims, queues)

    def land(self) -> None:
        """Read the replies of this processor's round trip in flight, if any."""
        flight = self._flight
        if flight is not None:
            self._flight = None
            self._p.pipeline.land(self._me, flight)
