"""Errors conveyor raises; Redis errors are translated into these at the store boundary."""

from __future__ import annotations

from django.tasks.exceptions import TaskResultDoesNotExist


class ConveyorError(Exception):
    """Base class of every conveyor error."""


class RedisUnavailable(ConveyorError):
    """Redis could not be reached or did not answer in time."""


class PayloadTooLarge(ConveyorError, ValueError):
    """A task's arguments exceed the backend's MAX_PAYLOAD_BYTES."""


class CorruptRecord(ConveyorError):
    """A task record read from Redis cannot be decoded."""


class WorkerLost(ConveyorError):
    """The worker running a task stopped renewing its lease (killed, OOM, node lost)."""


class TaskTimeout(ConveyorError, TimeoutError):
    """A task ran longer than its timeout."""


class BackoffFailed(ConveyorError):
    """A task's backoff raised or returned something other than seconds or None: the task is not retried."""


class RejectedTask(ConveyorError):
    """A task record was refused before anything ran (bad payload, path not allowed)."""


class UnknownTaskPath(ConveyorError, TaskResultDoesNotExist):
    """A stored task path names a module or attribute that cannot be imported here."""


class ProjectMismatch(ConveyorError):
    """Another project already uses this Redis under the same KEY_PREFIX."""


class TaskCancelled(ConveyorError):
    """An operator cancelled the task (Django has no cancelled status: the task is FAILED with this)."""


class UnknownTask(ConveyorError):
    """No task has this id (it never existed, or its result expired or was purged)."""


class UnknownQueue(ConveyorError):
    """No task was ever enqueued to this queue name."""


class PartiallyEnqueued(ConveyorError):
    """enqueue_many() stored some chunks and then failed; `enqueued` holds the results it stored."""

    def __init__(self, message: str, enqueued: list[object]) -> None:
        super().__init__(message)
        self.enqueued = enqueued


class ResultTimeout(ConveyorError, TimeoutError):
    """A task did not finish within the time a caller waited for its result."""

    def __init__(self, task_id: str, status: str, timeout: float) -> None:
        super().__init__(f"task {task_id} is still {status} after waiting {timeout:g} s for its result")
        self.task_id = task_id
        self.status = status
        self.timeout = timeout
