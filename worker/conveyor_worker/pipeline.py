"""The claim pipeline: tasks claimed ahead, successes waiting for a round trip, round trips sent ahead."""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from conveyor.exceptions import ConveyorError
from conveyor.store import Claimed, ScriptCall, Sent, Store

from .executor import Attempt, Verdict
from .recorder import Recorder
from .slots import Slots
from .wakeups import Wakeups

logger = logging.getLogger("conveyor_worker")


@dataclass(frozen=True, slots=True, kw_only=True)
class Deferred:
    """A success whose record waits for a processor's next round trip."""

    attempt: Attempt
    verdict: Verdict
    then: Callable[[], None] | None
    since: float = field(default_factory=time.monotonic)


@dataclass(slots=True, kw_only=True)
class InFlight:
    """A record-and-claim round trip a processor sent before running its last task claimed ahead.

    Whoever reads its replies first (its processor, or the main thread when that one is
    held up) sets landed under lock; nobody else touches it.
    """

    sent: Sent
    deferred: list[Deferred]
    claims: int
    queues: Sequence[str]  # as when sent: the claim calls' queues
    since: float = field(default_factory=time.monotonic)
    landed: bool = False
    lock: threading.Lock = field(default_factory=threading.Lock)


class ClaimPipeline:
    """Round trips that record outcomes and claim the next tasks, and what they leave behind.

    Owner of the tasks claimed but not started (ahead), the successes waiting for a round
    trip (deferred) and the round trips sent ahead whose replies are unread (in flight),
    all under _lock. It never calls out while holding _lock.
    """

    def __init__(
        self, store: Store, worker_id: str, lease_ms: int, recorder: Recorder, slots: Slots, wakeups: Wakeups
    ) -> None:
        self._store = store
        self._worker_id = worker_id
        self._lease_ms = lease_ms
        self._recorder = recorder
        self._slots = slots
        self._wakeups = wakeups
        self._lock = threading.Lock()
        self._ahead: deque[tuple[Claimed, float]] = deque()  # claimed, not started yet (claim time)
        self._deferred: list[Deferred] = []
        self._in_flight: dict[int, InFlight] = {}  # by the id of the processor that sent it
        self._claim_ids = itertools.count(1)  # names each claim call, so a replay finds its tasks

    # -- tasks claimed ahead -------------------------------------------------------------

    def take(self) -> Claimed | None:
        """Take the oldest task claimed ahead, if any."""
        with self._lock:
            return self._ahead.popleft()[0] if self._ahead else None

    def has_ahead(self) -> bool:
        """Tell whether tasks claimed ahead wait to run."""
        with self._lock:
            return bool(self._ahead)

    def ahead_count(self) -> int:
        """Return how many tasks claimed ahead wait to run."""
        with self._lock:
            return len(self._ahead)

    def ahead_since(self) -> float | None:
        """Return when the oldest task waiting ahead was claimed (monotonic), if any."""
        with self._lock:
            return self._ahead[0][1] if self._ahead else None

    def ahead_leases(self) -> list[tuple[str, str, str]]:
        """Return (task id, queue, token) of every task claimed ahead, for lease renewal."""
        with self._lock:
            return [(c.task_id, c.queue, c.token) for c, _ in self._ahead]

    def cancel_ahead(self, task_id: str, token: str) -> bool:
        """Mark a task claimed ahead as cancelled, so it fails unstarted when taken; False if not here."""
        with self._lock:
            for claimed, _ in self._ahead:
                if claimed.task_id == task_id and claimed.token == token:
                    # Executor.prepare reads the field as a claim of a cancelled task does.
                    claimed.fields[b"cancel"] = str(time.time_ns() // 1000).encode()
                    return True
        return False

    def idle(self) -> bool:
        """Tell whether nothing is claimed ahead and no round trip is in flight."""
        with self._lock:
            return not self._ahead and not self._in_flight

    # -- deferred successes ----------------------------------------------------------------

    def defer(self, attempt: Attempt, verdict: Verdict, then: Callable[[], None] | None) -> None:
        """Keep a success for the next round trip."""
        with self._lock:
            self._deferred.append(Deferred(attempt=attempt, verdict=verdict, then=then))

    def flush_deferred(self, older_than: float = 0.0) -> None:
        """Store deferred successes now (main thread) when they waited older_than or more."""
        with self._lock:
            due = self._deferred and time.monotonic() - self._deferred[0].since >= older_than
        if due:
            try:
                self.exchange([], 0, ())
            except ConveyorError as exc:
                logger.warning(
                    "could not record outcomes: %s",
                    exc,
                    extra={"event": "record_failed", "worker_id": self._worker_id},
                )

    # -- round trips -------------------------------------------------------------------------

    def exchange(self, calls: list[ScriptCall], claims: int, queues: Sequence[str]) -> list[Any]:
        """Send calls after the deferred records and before a claim of up to claims tasks; one round trip.

        Claimed tasks join the tasks ahead; the replies to calls are returned. Reserved
        claims are given back whatever happens; deferred records go back to wait on an error.
        """
        deferred, sent = self._round_trip(calls, claims, queues)
        try:
            replies = self._store.run(sent) if sent else []
        except BaseException:
            self._undo(deferred, claims)
            raise
        self._absorb(replies, deferred, claims, sent, queues)
        return replies[len(deferred) : len(deferred) + len(calls)]

    def _round_trip(
        self, calls: list[ScriptCall], claims: int, queues: Sequence[str]
    ) -> tuple[list[Deferred], list[ScriptCall]]:
        """Take the deferred records; return them and the calls to send: theirs, calls, a claim."""
        with self._lock:
            deferred, self._deferred = self._deferred, []
            claim_id = f"{self._worker_id}:{next(self._claim_ids)}" if claims else ""
        sent = (
            [self._recorder.call_for(d.attempt, d.verdict) for d in deferred] + calls if deferred else calls
        )
        if claims:
            sent = [
                *sent,
                *self._store.claim_calls(queues, self._worker_id, self._lease_ms, claims, claim_id),
            ]
        return deferred, sent

    def _undo(self, deferred: list[Deferred], claims: int) -> None:
        """After a failed round trip: give the claims back; the records wait for the next one."""
        self._slots.unreserve(claims)
        if deferred:
            with self._lock:
                self._deferred[:0] = deferred

    def _absorb(
        self,
        replies: list[Any],
        deferred: list[Deferred],
        claims: int,
        sent: Sequence[ScriptCall],
        queues: Sequence[str],
    ) -> None:
        """Take in a round trip's replies: claimed tasks join those ahead, deferred records are done."""
        if claims:
            asked = [c for c in sent if c.name == "claim"]  # the last calls of the round trip
            found, waiting = self._store.parse_claimed(replies[-len(asked) :], asked, queues)
            self._wakeups.left_waiting(waiting)
            self._slots.unreserve(claims - len(found))
            if found:
                now = time.monotonic()
                with self._lock:
                    self._ahead.extend((c, now) for c in found)
        for d, reply in zip(deferred, replies, strict=False):
            self._recorder.finished(d.attempt, d.verdict, bool(reply), d.then)

    def send_ahead(self, sender: int, claims: int, queues: Sequence[str]) -> InFlight | None:
        """Send the deferred records and a claim without waiting for the replies (see land)."""
        deferred, calls = self._round_trip([], claims, queues)
        try:
            sent = self._store.transport.send_ahead(calls)
        except ConveyorError:  # they go again with the next round trip (or the main thread's)
            self._undo(deferred, claims)
            return None
        flight = InFlight(sent=sent, deferred=deferred, claims=claims, queues=queues)
        with self._lock:
            self._in_flight[sender] = flight
        return flight

    def land(self, sender: int, flight: InFlight) -> None:
        """Read a round trip's replies (by its processor, or by the main thread if it waits too long)."""
        with flight.lock:
            if flight.landed:
                return
            flight.landed = True
            with self._lock:
                self._in_flight.pop(sender, None)
            try:
                replies = self._store.transport.receive(flight.sent)
            except ConveyorError:
                replies = None
            if replies is None:
                try:
                    # Send the same calls again on a fresh connection: records are fenced by
                    # delivery and the claim returns what it claimed the first time.
                    replies = self._store.run(flight.sent.calls)
                except ConveyorError as exc:
                    self._undo(flight.deferred, flight.claims)
                    logger.warning(
                        "could not read a round trip: %s",
                        exc,
                        extra={"event": "record_failed", "worker_id": self._worker_id},
                    )
                    return
        self._absorb(replies, flight.deferred, flight.claims, flight.sent.calls, flight.queues)

    def land_stale(self, older_than: float) -> None:
        """Read round trips whose processor has not come back for them (a long last task)."""
        now = time.monotonic()
        with self._lock:
            stale = [(s, f) for s, f in self._in_flight.items() if now - f.since >= older_than]
        for sender, flight in stale:
            self.land(sender, flight)
