"""conveyor: a Redis task backend for django.tasks."""

from .backend import ConveyorTask, RedisBackend, aenqueue_many, await_result, enqueue_many, wait_result

__all__ = ["ConveyorTask", "RedisBackend", "aenqueue_many", "await_result", "enqueue_many", "wait_result"]
