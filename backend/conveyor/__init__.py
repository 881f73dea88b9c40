"""conveyor: a Redis task backend for django.tasks."""

from .backend import ConveyorTask, RedisBackend, aenqueue_many, enqueue_many

__all__ = ["ConveyorTask", "RedisBackend", "aenqueue_many", "enqueue_many"]
