"""keys: every name built under one hash tag, distinct per queue and per purpose."""

from __future__ import annotations

import dataclasses

import pytest
from conveyor.keys import Keys, token_of

QUEUES = ("default", "emails", "with space", "{braces}", "a}b", "ünïcode", "colons:in:it", "")


def cluster_slot(key: str) -> int:
    """Return the Redis Cluster slot of a key: CRC16/XMODEM of its hash tag (or whole name) mod 16384."""
    data = key.encode()
    start = data.find(b"{")
    if start != -1:
        end = data.find(b"}", start + 1)
        if end > start + 1:
            data = data[start + 1 : end]
    crc = 0
    for byte in data:
        crc ^= byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021) if crc & 0x8000 else crc << 1
            crc &= 0xFFFF
    return crc % 16384


def every_key(keys: Keys, queue: str) -> list[str]:
    """Return every key name Keys builds for one queue (and the shared ones)."""
    per_queue = [keys.ready, keys.ready_since, keys.scheduled, keys.running, keys.wake]
    shared = [
        keys.task("t1"),
        keys.queues,
        keys.seq,
        keys.reclaim_state,
        keys.project,
        keys.claim_memo("w:1"),
        keys.done("t1"),
        keys.done_channel,  # a channel, not a key: tagged all the same
    ]
    return [k(queue) for k in per_queue] + shared


def test_cluster_slot_matches_redis_reference_values() -> None:
    """Compute slots as Redis does (values from the Redis Cluster specification and CLUSTER KEYSLOT docs)."""
    assert cluster_slot("123456789") == 0x31C3
    assert cluster_slot("somekey") == 11058
    assert cluster_slot("foo{hash_tag}") == 2515
    assert cluster_slot("{user1000}.following") == cluster_slot("{user1000}.followers")
    assert cluster_slot("foo{{bar}}zap") == cluster_slot("{bar")


@pytest.mark.parametrize("prefix", ["conveyor", "app.tasks:v1", "x"])
def test_every_key_lands_in_the_prefix_slot(prefix: str) -> None:
    """Put every key of a backend in the slot of its prefix, whatever the queue is called."""
    keys = Keys(prefix)

    slots = {cluster_slot(name) for queue in QUEUES for name in every_key(keys, queue)}

    assert slots == {cluster_slot(prefix)}


def test_every_key_starts_with_the_tag() -> None:
    """Begin every name with {prefix}: so the first braces are always the tag."""
    keys = Keys("conveyor")

    assert keys.tag == "{conveyor}"
    for queue in QUEUES:
        assert all(name.startswith("{conveyor}:") for name in every_key(keys, queue))


def test_documented_names() -> None:
    """Build the names the worker contract and the autoscalers rely on."""
    keys = Keys("p")

    assert keys.ready("emails") == "{p}:queue:emails"
    assert keys.scheduled("emails") == "{p}:scheduled:emails"
    assert keys.running("emails") == "{p}:running:emails"
    assert keys.task("abc") == keys.task_prefix + "abc" == "{p}:task:abc"
    assert keys.done("abc") == keys.done_prefix + "abc" == "{p}:done:abc"
    assert keys.done_channel == "{p}:finished"


def test_names_differ_per_queue_and_purpose() -> None:
    """Give every purpose and every queue its own key."""
    keys = Keys("p")

    names = [name for queue in ("a", "b") for name in every_key(keys, queue)]
    shared = {
        keys.task("t1"),
        keys.queues,
        keys.seq,
        keys.reclaim_state,
        keys.project,
        keys.claim_memo("w:1"),
        keys.done("t1"),
        keys.done_channel,
    }

    assert len(set(names)) == len(names) - len(shared)


# Names chosen to collide with another queue's keys under the old "{p}:queue:<q>:<kind>"
# scheme, plus braces, unicode, empty and very long names.
HOSTILE_QUEUES = (
    "billing",
    "billing:scheduled",
    "jobs",
    "jobs:running",
    "mail",
    "mail:wake",
    "x:since",
    "queue",
    "queue:x",
    "running:a",
    "a}b{c",
    "{p}",
    "ünïcode:running",
    "q" * 10_000,
    "q" * 10_000 + ":scheduled",
)


def test_no_two_queues_or_kinds_share_a_key() -> None:
    """Give every (kind, queue) pair its own key, whatever the names hold."""
    keys = Keys("p")
    kinds = (keys.ready, keys.ready_since, keys.scheduled, keys.running, keys.wake)
    built = [kind(queue) for queue in HOSTILE_QUEUES for kind in kinds]
    fixed = [keys.queues, keys.seq, keys.reclaim_state, keys.project, keys.task("t"), keys.claim_memo("w:1")]

    assert len(set(built + fixed)) == len(built) + len(fixed)


def test_keys_is_frozen() -> None:
    """Refuse changes to a built Keys (it is shared between threads)."""
    keys = Keys("p")

    with pytest.raises(dataclasses.FrozenInstanceError):
        keys.prefix = "other"  # type: ignore[misc]


def slot_keys(keys: Keys, queue: str, task_id: str) -> list[str]:
    """Return every key a script of one queue touches with its task's keys (HASH_TAG_PER_QUEUE)."""
    k = keys.of(queue)
    return [
        *(f(queue) for f in (k.ready, k.ready_since, k.scheduled, k.running, k.wake, k.failed, k.succeeded)),
        k.seq,
        k.paused,
        k.cancels,
        k.queues,
        k.reclaim_state,
        k.periodics,
        k.periodic("entry"),
        k.claim_memo("w:1"),
        k.unique("digest"),
        k.task_prefix + task_id,
        k.done_prefix + task_id,
        keys.task(task_id),
        keys.done(task_id),
    ]


@pytest.mark.parametrize("queue", QUEUES)
def test_per_queue_keys_of_one_queue_and_its_tasks_share_one_slot(queue: str) -> None:
    """Every key a queue's scripts touch, and its tasks' keys found from the id alone, hash to one slot."""
    keys = Keys("conveyor", per_queue=True)
    task_id = keys.task_id(queue, "RaNdOm_-id")

    slots = {cluster_slot(name) for name in slot_keys(keys, queue, task_id)}

    assert len(slots) == 1
    assert keys.of(queue).tag.startswith("{conveyor/") and keys.of(queue).tag.count("}") == 1


def test_per_queue_tags_differ_per_queue_and_from_the_backend_own() -> None:
    """Each queue gets its own tag (so slots can differ); queues, workers and project keep the backend's."""
    keys = Keys("conveyor", per_queue=True)
    tags = {keys.of(q).tag for q in QUEUES}

    assert len(tags) == len(QUEUES)
    assert keys.tag not in tags
    assert {keys.queues, keys.workers, keys.project, keys.worker("w")} == {
        "{conveyor}:queues",
        "{conveyor}:workers",
        "{conveyor}:project",
        "{conveyor}:worker:w",
    }
    assert keys.of("a") is keys.of("a")  # built once


def test_a_task_id_names_its_slot_and_ids_without_a_token_keep_the_backend_tag() -> None:
    """task_id() puts the queue's token first; task() reads it back; an id without one stays global."""
    keys = Keys("p", per_queue=True)
    task_id = keys.task_id("emails", "abc")
    token = keys.of("emails").token

    assert task_id == f"{token}.abc" and token_of(task_id) == token and len(token) == 8
    assert keys.task(task_id) == "{p/" + token + "}:task:" + task_id
    assert keys.task("abc") == "{p}:task:abc"
    assert token_of("ABCDEF12.x") is None and token_of("abcdef1.xy") is None and token_of("abcdef12") is None
    assert Keys("p").task_id("emails", "abc") == "abc"  # off: ids are unchanged
    assert Keys("p").of("emails") is not None and Keys("p").of("emails").tag == "{p}"


def test_per_queue_key_patterns_cover_both_tags_and_no_other_prefix() -> None:
    """The ACL patterns match the backend's keys and its queues' keys, not another prefix's."""
    import fnmatch

    keys = Keys("app", per_queue=True)
    patterns = keys.globs
    mine = [keys.queues, keys.of("q").ready("q"), keys.task(keys.task_id("q", "x"))]
    theirs = [Keys("app2", per_queue=True).of("q").ready("q"), Keys("app:x").queues, "{app}x"]

    assert all(any(fnmatch.fnmatchcase(k, p) for p in patterns) for k in mine)
    assert not any(fnmatch.fnmatchcase(k, p) for k in theirs for p in patterns)
    assert Keys("app").globs == patterns  # the same whatever the option says
