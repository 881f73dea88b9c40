"""Every Redis key name conveyor uses, built in one place."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

# Redis Cluster hashes only the part between the first "{" and "}" of a key, so
# wrapping the prefix in braces puts every key of one backend in one slot and the
# scripts can touch several of them without CROSSSLOT errors.
#
# A queue's keys are "{prefix}:<kind>:<queue name>": the kind comes first and the
# name runs to the end of the key. No kind word is a prefix of another and each is
# followed by ":", so two different (kind, queue) pairs never build the same key,
# whatever characters a queue name holds (":", braces, unicode, any length); the
# fixed keys (queues, seq, project, ...) hold no second ":" after the tag.
#
# With HASH_TAG_PER_QUEUE each queue gets its own tag, "{prefix/<token>}", where the
# token is 8 hex digits of the SHA-1 of the queue name, so different queues can live on
# different Redis Cluster primaries. A queue's keys and its tasks' keys, and the
# per-slot keys its scripts touch with them (seq, paused, cancels, claim memos, unique
# locks, reclaim state, schedule entries), all carry that tag; a task id starts with
# its queue's token and a ".", so the id alone names its slot. Keys that span queues
# (queues, workers, project) keep the backend's own tag. "/" is not allowed in a
# KEY_PREFIX, so no other backend's tag can begin like one of these.

TOKEN_LENGTH = 8


def queue_token(queue: str) -> str:
    """Return the 8 hex digits that name a queue's hash tag under HASH_TAG_PER_QUEUE."""
    return hashlib.sha1(queue.encode(), usedforsecurity=False).hexdigest()[:TOKEN_LENGTH]


def token_of(task_id: str) -> str | None:
    """Return the queue token a task id starts with, or None for an id without one."""
    if len(task_id) > TOKEN_LENGTH and task_id[TOKEN_LENGTH] == ".":
        head = task_id[:TOKEN_LENGTH]
        if all(c in "0123456789abcdef" for c in head):
            return head
    return None


@dataclass(frozen=True, slots=True)
class Keys:
    """Build the key names of one backend from its KEY_PREFIX."""

    prefix: str
    per_queue: bool = False  # HASH_TAG_PER_QUEUE: each queue's keys in the slot of its own tag
    token: str = ""  # set on the view of one queue's slot (see of()); "" for the backend's own tag
    tag: str = field(init=False)
    _views: dict[str, Keys] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        tag = "{" + self.prefix + ("/" + self.token if self.token else "") + "}"
        object.__setattr__(self, "tag", tag)
        object.__setattr__(self, "_views", {})

    def of(self, queue: str) -> Keys:
        """Return the keys of the slot a queue's keys live in (this object unless per_queue)."""
        if not self.per_queue:
            return self
        view = self._views.get(queue)
        if view is None:
            if len(self._views) >= 4096:  # any queue name may come: keep the memo small
                self._views.clear()
            view = self._views[queue] = self.slot(queue_token(queue))
        return view

    def slot(self, token: str) -> Keys:
        """Return the keys of the slot named by a queue token (per_queue only)."""
        return Keys(self.prefix, per_queue=True, token=token)

    def of_task(self, task_id: str) -> Keys:
        """Return the keys of the slot a task's keys live in, read from its id."""
        if self.per_queue:
            token = token_of(task_id)
            if token is not None and token != self.token:
                return self.slot(token)
        return self

    def task_id(self, queue: str, raw: str) -> str:
        """Return a fresh random id for a task of a queue: raw, after the queue's token if per_queue."""
        return f"{queue_token(queue)}.{raw}" if self.per_queue else raw

    @property
    def globs(self) -> tuple[str, ...]:
        """Return the patterns matching every key of this backend in either layout (for ACL ~patterns).

        Both, whatever HASH_TAG_PER_QUEUE says: a worker looks for tasks left under the other
        layout at start, and switching the option needs no new ACL.
        """
        return (f"{{{self.prefix}}}:*", f"{{{self.prefix}/*")

    @property
    def task_prefix(self) -> str:
        """Return the prefix a task id is appended to (scripts receive it in KEYS)."""
        return f"{self.tag}:task:"

    def task(self, task_id: str) -> str:
        """Return the hash holding one task's record (in its queue's slot when per_queue)."""
        if self.per_queue:
            return self.of_task(task_id).task_prefix + task_id
        return self.task_prefix + task_id

    def ready(self, queue: str) -> str:
        """Return the sorted set of a queue's ready task ids (the autoscaler counts it)."""
        return f"{self.tag}:queue:{queue}"

    def ready_since(self, queue: str) -> str:
        """Return the sorted set of a queue's ready task ids scored by when they became ready."""
        return f"{self.tag}:since:{queue}"

    def scheduled(self, queue: str) -> str:
        """Return the sorted set of a queue's waiting task ids scored by due time."""
        return f"{self.tag}:scheduled:{queue}"

    def running(self, queue: str) -> str:
        """Return the sorted set of a queue's claimed task ids scored by lease deadline."""
        return f"{self.tag}:running:{queue}"

    def wake(self, queue: str) -> str:
        """Return the list idle workers block on to hear about new work in a queue."""
        return f"{self.tag}:wake:{queue}"

    def failed(self, queue: str) -> str:
        """Return the sorted set of a queue's FAILED task ids scored by finish time (ms)."""
        return f"{self.tag}:failed:{queue}"

    def succeeded(self, queue: str) -> str:
        """Return the sorted set of a queue's SUCCESSFUL task ids scored by finish time (ms)."""
        return f"{self.tag}:succeeded:{queue}"

    @property
    def done_prefix(self) -> str:
        """Return the prefix a task id is appended to for its done list (scripts receive it in KEYS)."""
        return f"{self.tag}:done:"

    def done(self, task_id: str) -> str:
        """Return the list a finished task's waiters block on (one token, briefly, once it is waited for)."""
        if self.per_queue:
            return self.of_task(task_id).done_prefix + task_id
        return self.done_prefix + task_id

    @property
    def done_channel(self) -> str:
        """Return the pub/sub channel the ids of finished tasks someone waits for are published on."""
        return f"{self.tag}:finished"

    def worker(self, worker_id: str) -> str:
        """Return the string holding a live worker's heartbeat (JSON), expiring on its own."""
        return f"{self.tag}:worker:{worker_id}"

    @property
    def workers(self) -> str:
        """Return the sorted set of worker ids scored by when their heartbeat expires (ms)."""
        return f"{self.tag}:workers"

    @property
    def paused(self) -> str:
        """Return the set of paused queue names (claims skip them)."""
        return f"{self.tag}:paused"

    @property
    def cancels(self) -> str:
        """Return the counter bumped by every cancel of a running task (workers poll it)."""
        return f"{self.tag}:cancels"

    @property
    def queues(self) -> str:
        """Return the set of every queue name that has seen a task."""
        return f"{self.tag}:queues"

    @property
    def seq(self) -> str:
        """Return the counter that orders tasks of equal priority."""
        return f"{self.tag}:seq"

    def claim_memo(self, claim_id: str) -> str:
        """Return the key where one claim call notes what it claimed, so a replay finds it."""
        return f"{self.tag}:claim:{claim_id}"

    def unique(self, digest: str) -> str:
        """Return the lock of a unique task: a string holding the id of the task that holds it."""
        return f"{self.tag}:unique:{digest}"

    @property
    def reclaim_state(self) -> str:
        """Return the hash that tells reclaim when it last ran and whether it holds off after an outage."""
        return f"{self.tag}:reclaim"

    @property
    def project(self) -> str:
        """Return the key naming the project that owns this prefix (two projects must not share one)."""
        return f"{self.tag}:project"

    @property
    def periodic_prefix(self) -> str:
        """Return the prefix a schedule entry's name is appended to (scripts receive it in KEYS)."""
        return f"{self.tag}:periodic:"

    def periodic(self, name: str) -> str:
        """Return the hash of one schedule entry: next tick, timing fingerprint, last task enqueued."""
        return self.periodic_prefix + name

    @property
    def periodics(self) -> str:
        """Return the sorted set of schedule entry names by when a worker last declared them (ms)."""
        return f"{self.tag}:periodics"
