"""keys: every name built under one hash tag, distinct per queue and per purpose."""

from __future__ import annotations

import dataclasses

import pytest
from conveyor.keys import Keys

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
