"""conveyor: a Redis task backend for django.tasks."""

from .backend import ConveyorTask, RedisBackend, await_result, wait_result

__all__ = ["ConveyorTask", "RedisBackend", "await_result", "wait_result"]
