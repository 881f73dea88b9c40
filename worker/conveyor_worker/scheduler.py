"""Periodic tasks on the main thread: fire each due tick of OPTIONS["SCHEDULE"] exactly once."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from conveyor import codec
from conveyor.backend import RedisBackend, new_task_id
from conveyor.schedule import LATE_AFTER_MS, ScheduleEntry
from conveyor.store import (
    TICK_ENQUEUED,
    TICK_SKIPPED_MISSED,
    TICK_SKIPPED_PENDING,
    EntryState,
    Store,
)

from .timings import SCHEDULE_EVERY, SCHEDULE_IDLE_EVERY

logger = logging.getLogger("conveyor_worker")

# An entry no worker has declared for this long is dropped from Redis (a schedule removed).
STALE_MS = 3_600_000
SWEEP_LIMIT = 100  # entries one survey drops at most
NEVER = -1  # an entry's next tick when its expression fires no more


@dataclass(frozen=True, slots=True, kw_only=True)
class Plan:
    """One entry with what its ticks enqueue, resolved once at start."""

    entry: ScheduleEntry
    queue: str
    priority: int
    args_json: str
    kwargs_json: str


def plans_of(backend: RedisBackend) -> tuple[Plan, ...]:
    """Resolve the backend's SCHEDULE; ValueError (or TypeError) names the first unusable entry."""
    plans = []
    for entry in backend.settings.schedule:
        try:
            task = backend.scheduled_task(entry)
        except (ValueError, TypeError) as exc:
            raise ValueError(f"OPTIONS SCHEDULE {entry.name}: {exc}") from exc
        args_json, kwargs_json = codec.dumps(list(entry.args)), codec.dumps(dict(entry.kwargs or {}))
        plan = Plan(entry=entry, queue=task.queue_name, priority=task.priority, args_json=args_json,
                    kwargs_json=kwargs_json)  # fmt: skip
        plans.append(plan)
    return tuple(plans)


class Scheduler:
    """Fire due ticks: read every entry (survey), then one compare-and-set tick call per due one.

    Every worker runs one; a tick is one Lua call that moves the entry's next tick from the
    value this worker read to the one after it, so of all the workers that saw it due one
    enqueues and the rest find it moved. Runs on the main thread only (Maintenance calls
    it), so when it next looks needs no lock.
    """

    def __init__(self, store: Store, plans: Sequence[Plan], *, backend: str, worker_id: str) -> None:
        self._store = store
        self._plans = tuple(plans)
        self._entries = [(p.entry.name, p.queue) for p in self._plans]
        self._backend = backend
        self._worker_id = worker_id
        self._at = 0.0  # monotonic time of the next survey

    def until_due(self, now: float) -> float:
        """Return seconds until the next survey (0 when due)."""
        return max(0.0, self._at - now)

    def run_due(self, now: float) -> int:
        """Survey and fire what is due, if the time has come; return how many tasks were enqueued."""
        if now < self._at:
            return 0
        server_now, states = self._store.survey_schedule(self._entries, stale_ms=STALE_MS, limit=SWEEP_LIMIT)
        wait = SCHEDULE_EVERY if self._plans else SCHEDULE_IDLE_EVERY
        enqueued = 0
        for plan, state in zip(self._plans, states, strict=True):
            next_ms, fired = self._advance(plan, state, server_now)
            enqueued += fired
            if next_ms != NEVER:
                wait = min(wait, max(0.0, (next_ms - server_now) / 1000))
        self._at = now + wait
        return enqueued

    def _advance(self, plan: Plan, state: EntryState, server_now: int) -> tuple[int, int]:
        """Bring one entry up to date; return its next tick as known now and whether a task went out."""
        entry = plan.entry
        if state.next_ms is None or state.fingerprint != entry.fingerprint:
            first = entry.next_or_none(None, server_now)
            self._tick(plan, state.next_ms, NEVER if first is None else first, "init")
            return NEVER if first is None else first, 0
        if state.next_ms == NEVER or state.next_ms > server_now:
            return state.next_ms, 0
        following = entry.next_or_none(state.next_ms, server_now)
        late = server_now - state.next_ms > LATE_AFTER_MS
        mode = "skip" if late and entry.catch_up == "skip" else "fire"
        answer = self._tick(plan, state.next_ms, NEVER if following is None else following, mode)
        return NEVER if following is None else following, int(answer == TICK_ENQUEUED)

    def _tick(self, plan: Plan, seen_ms: int | None, next_ms: int, mode: str) -> int:
        entry = plan.entry
        task_id = self._store.keys.task_id(plan.queue, new_task_id())
        fields = codec.new_record(
            task_path=entry.task,
            queue=plan.queue,
            priority=plan.priority,
            backend=self._backend,
            run_after=None,
            args_json=plan.args_json,
            kwargs_json=plan.kwargs_json,
            enqueued_at=datetime.now(UTC),  # tick.lua sets the server's time instead
        )
        answer = self._store.tick(
            entry.name,
            seen_ms=seen_ms,
            next_ms=next_ms,
            fingerprint=entry.fingerprint,
            mode=mode,
            skip_if_pending=entry.skip_if_pending,
            task_id=task_id,
            queue=plan.queue,
            priority=plan.priority,
            fields=fields,
        )
        extra = {"worker_id": self._worker_id, "schedule": entry.name, "queue": plan.queue}
        if answer == TICK_ENQUEUED:
            logger.info(
                "schedule %s enqueued %s",
                entry.name,
                task_id,
                extra={**extra, "event": "schedule_enqueued", "task_id": task_id, "task_path": entry.task},
            )
        elif answer == TICK_SKIPPED_PENDING:
            logger.info(
                "schedule %s skipped a tick: its last task is still pending",
                entry.name,
                extra={**extra, "event": "schedule_skipped", "reason": "pending"},
            )
        elif answer == TICK_SKIPPED_MISSED:
            logger.info(
                "schedule %s skipped a missed tick (catch_up skip)",
                entry.name,
                extra={**extra, "event": "schedule_skipped", "reason": "missed"},
            )
        return answer
