"""conveyor: a Redis task backend for django.tasks."""

from .backend import ConveyorTask, RedisBackend

__all__ = ["ConveyorTask", "RedisBackend"]
