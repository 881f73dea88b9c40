"""Unmanaged models: no table, they exist so the admin lists the pages and permissions can be granted."""

from __future__ import annotations

from django.db import models

# Codenames checked by the admin views, as "conveyor_admin.<codename>".
VIEW_TASK = "conveyor_admin.view_task"
DELETE_TASK = "conveyor_admin.delete_task"
RETRY_TASK = "conveyor_admin.retry_task"
CANCEL_TASK = "conveyor_admin.cancel_task"
VIEW_TASK_ARGUMENTS = "conveyor_admin.view_task_arguments"
VIEW_QUEUE = "conveyor_admin.view_queue"
PAUSE_QUEUE = "conveyor_admin.pause_queue"


class Task(models.Model):
    """A task stored in Redis by a conveyor backend (read through conveyor.ops.Operator)."""

    id = models.CharField(primary_key=True, max_length=64)

    class Meta:
        managed = False
        default_permissions = ("view", "delete")
        permissions = [
            ("retry_task", "Can retry a failed task"),
            ("cancel_task", "Can cancel a ready or running task"),
            ("view_task_arguments", "Can view task arguments and return values"),
        ]
        verbose_name = "task"
        verbose_name_plural = "tasks"

    def __str__(self) -> str:
        return str(self.id)


class Queue(models.Model):
    """A queue of a conveyor backend, with its counts and paused state."""

    name = models.CharField(primary_key=True, max_length=1024)

    class Meta:
        managed = False
        default_permissions = ("view",)
        permissions = [("pause_queue", "Can pause and resume a queue")]
        verbose_name = "queue"
        verbose_name_plural = "queues"

    def __str__(self) -> str:
        return str(self.name)
