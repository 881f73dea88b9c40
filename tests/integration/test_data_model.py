"""The Redis data model behind enqueue: ordering, scheduling, idempotency and key names."""

from __future__ import annotations

import random
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest
from conveyor import RedisBackend, codec
from django.tasks.base import TASK_MAX_PRIORITY, TASK_MIN_PRIORITY

from tests import tasks


def ready_ids(backend: RedisBackend, queue: str = "default") -> list[str]:
    """Return the ready task ids of a queue in claim order."""
    return [m.decode() for m in backend.store.call(lambda c: c.zrange(backend.keys.ready(queue), 0, -1))]


def test_exact_priority_order_and_fifo_within_a_priority(backend: RedisBackend) -> None:
    """Order ready tasks by priority, highest first, then by enqueue order within one priority."""
    # Given every priority from -100 to 100 three times, enqueued in a shuffled order
    priorities = list(range(TASK_MIN_PRIORITY, TASK_MAX_PRIORITY + 1)) * 3
    random.Random(20).shuffle(priorities)

    sent = [(p, tasks.noop_task.using(priority=p).enqueue().id) for p in priorities]

    # Python's sort is stable, so ties keep their enqueue order.
    expected = [task_id for _, task_id in sorted(sent, key=lambda pair: -pair[0])]
    assert ready_ids(backend) == expected


def test_priority_scores_leave_room_for_the_sequence(backend: RedisBackend) -> None:
    """Keep ready scores exact integers below 2**53 even at the lowest priority."""
    low = tasks.noop_task.using(priority=TASK_MIN_PRIORITY).enqueue()

    score = backend.store.call(lambda c: c.zscore(backend.keys.ready("default"), low.id))

    assert score == int(score)
    assert score < 2**53


def test_queues_are_kept_apart(backend: RedisBackend) -> None:
    """Put each task in its own queue's ready set and record the queue name."""
    a = tasks.noop_task.using(queue_name="emails").enqueue()
    b = tasks.noop_task.using(queue_name="reports").enqueue()

    assert ready_ids(backend, "emails") == [a.id]
    assert ready_ids(backend, "reports") == [b.id]
    assert backend.store.known_queues() == {"emails", "reports"}


def test_run_after_in_the_future_is_scheduled_not_ready(backend: RedisBackend) -> None:
    """Put a task whose run_after is ahead in the scheduled set, scored by its due time in ms."""
    run_after = datetime.now(UTC) + timedelta(hours=1)

    result = tasks.noop_task.using(run_after=run_after).enqueue()

    keys = backend.keys
    assert ready_ids(backend) == []
    score = backend.store.call(lambda c: c.zscore(keys.scheduled("default"), result.id))
    assert score == codec.to_micros(run_after) // 1000
    assert backend.get_result(result.id).status == "READY"


def test_run_after_in_the_past_is_ready_at_once(backend: RedisBackend) -> None:
    """Make a task whose run_after has passed ready immediately."""
    result = tasks.noop_task.using(run_after=datetime.now(UTC) - timedelta(minutes=5)).enqueue()

    assert ready_ids(backend) == [result.id]
    assert backend.store.call(lambda c: c.zcard(backend.keys.scheduled("default"))) == 0


def test_enqueue_is_idempotent_by_id(backend: RedisBackend) -> None:
    """Store a retried enqueue call (same id, same fields) once: one hash, one ready entry, one seq step."""
    fields = codec.new_record(
        task_path=tasks.noop_task.module_path,
        queue="default",
        priority=0,
        backend="default",
        run_after=None,
        args_json="[]",
        kwargs_json="{}",
        enqueued_at=datetime.now(UTC),
    )
    store, keys = backend.store, backend.keys

    first = store.enqueue("same-id", "default", 0, None, fields)
    second = store.enqueue("same-id", "default", 0, None, fields)

    assert (first, second) == (True, False)
    assert ready_ids(backend) == ["same-id"]
    assert store.call(lambda c: c.zcard(keys.ready_since("default"))) == 1
    assert store.call(lambda c: c.get(keys.seq)) == b"1"


def test_ready_since_records_when_a_task_became_ready(backend: RedisBackend) -> None:
    """Score the ready-since set by server time so the oldest ready age can be measured."""
    before = backend.store.server_time_ms()
    result = tasks.noop_task.enqueue()
    after = backend.store.server_time_ms()

    since = backend.store.call(lambda c: c.zscore(backend.keys.ready_since("default"), result.id))

    assert before <= since <= after
    [stats] = backend.store.queue_stats(["default"])
    assert (stats.ready, stats.scheduled, stats.running) == (1, 0, 0)
    assert stats.oldest_ready_ms == since


def test_documented_key_names(backend: RedisBackend, prefix: str) -> None:
    """Pin the documented key of a queue's ready tasks, {KEY_PREFIX}:queue:<name> (autoscalers count it)."""
    result = tasks.noop_task.using(queue_name="emails").enqueue()

    depth = backend.store.call(lambda c: c.zcard("{" + prefix + "}:queue:emails"))

    assert depth == 1
    assert backend.keys.ready("emails") == "{" + prefix + "}:queue:emails"
    assert backend.keys.task(result.id) == "{" + prefix + "}:task:" + result.id


def test_every_key_shares_the_hash_tag(
    backend: RedisBackend, stored_keys: Callable[[RedisBackend], list[str]]
) -> None:
    """Start every key an enqueue writes with the backend's hash tag, so all land in one cluster slot."""
    tasks.noop_task.using(queue_name="a").enqueue()
    tasks.noop_task.using(queue_name="b", run_after=datetime.now(UTC) + timedelta(hours=1)).enqueue()

    written = stored_keys(backend)

    assert len(written) >= 8
    tag = backend.keys.tag
    assert all(key.startswith(tag + ":") for key in written)
    assert all(key.index("{") == 0 and key.index("}") == len(tag) - 1 for key in written)


@pytest.mark.parametrize("queue", ["with space", "ünïcode", "{braces}", "colons:inside"])
def test_unusual_queue_names_stay_under_the_tag(backend: RedisBackend, queue: str) -> None:
    """Keep keys under the hash tag whatever characters a queue name has."""
    result = tasks.noop_task.using(queue_name=queue).enqueue()

    assert ready_ids(backend, queue) == [result.id]
    assert backend.keys.ready(queue).startswith(backend.keys.tag + ":")


def test_ready_score_is_recorded_on_the_task(backend: RedisBackend) -> None:
    """Keep the ready score in the task hash too (release and reclaim put the task back with it)."""
    result = tasks.noop_task.using(priority=42).enqueue()

    score = backend.store.call(lambda c: c.zscore(backend.keys.ready("default"), result.id))
    stored = backend.store.call(lambda c: c.hget(backend.keys.task(result.id), "score"))

    assert stored is not None
    assert int(stored) == score == codec.ready_score(42, 1) == (100 - 42) * codec.PRIORITY_STEP + 1


def test_scheduled_task_has_no_score_until_promoted(backend: RedisBackend) -> None:
    """Give a scheduled task its ready score only when it is promoted (then it queues behind)."""
    result = tasks.noop_task.using(run_after=datetime.now(UTC) + timedelta(hours=1)).enqueue()

    assert backend.store.call(lambda c: c.hget(backend.keys.task(result.id), "score")) is None


def test_wake_list_is_capped(backend: RedisBackend) -> None:
    """Push one wake token per enqueue, never keeping more than WAKE_CAP when no worker listens."""
    from conveyor.store import WAKE_CAP

    wake = backend.keys.wake("default")
    tasks.noop_task.enqueue()
    assert backend.store.call(lambda c: c.llen(wake)) == 1

    for _ in range(WAKE_CAP + 5):
        tasks.noop_task.enqueue()

    assert backend.store.call(lambda c: c.llen(wake)) == WAKE_CAP
