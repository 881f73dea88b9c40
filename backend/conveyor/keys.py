"""Every Redis key name conveyor uses, built in one place."""

from __future__ import annotations

from dataclasses import dataclass, field

# Redis Cluster hashes only the part between the first "{" and "}" of a key, so
# wrapping the prefix in braces puts every key of one backend in one slot and the
# scripts can touch several of them without CROSSSLOT errors.


@dataclass(frozen=True, slots=True)
class Keys:
    """Build the key names of one backend from its KEY_PREFIX."""

    prefix: str
    tag: str = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "tag", "{" + self.prefix + "}")

    @property
    def task_prefix(self) -> str:
        """Return the prefix a task id is appended to (scripts receive it in KEYS)."""
        return f"{self.tag}:task:"

    def task(self, task_id: str) -> str:
        """Return the hash holding one task's record."""
        return self.task_prefix + task_id

    def ready(self, queue: str) -> str:
        """Return the sorted set of a queue's ready task ids (the autoscaler counts it)."""
        return f"{self.tag}:queue:{queue}"

    def ready_since(self, queue: str) -> str:
        """Return the sorted set of a queue's ready task ids scored by when they became ready."""
        return f"{self.tag}:queue:{queue}:since"

    def scheduled(self, queue: str) -> str:
        """Return the sorted set of a queue's waiting task ids scored by due time."""
        return f"{self.tag}:queue:{queue}:scheduled"

    def running(self, queue: str) -> str:
        """Return the sorted set of a queue's claimed task ids scored by lease deadline."""
        return f"{self.tag}:queue:{queue}:running"

    def wake(self, queue: str) -> str:
        """Return the list idle workers block on to hear about new work in a queue."""
        return f"{self.tag}:queue:{queue}:wake"

    @property
    def queues(self) -> str:
        """Return the set of every queue name that has seen a task."""
        return f"{self.tag}:queues"

    @property
    def seq(self) -> str:
        """Return the counter that orders tasks of equal priority."""
        return f"{self.tag}:seq"

    @property
    def workers(self) -> str:
        """Return the sorted set of live worker ids scored by last heartbeat."""
        return f"{self.tag}:workers"
