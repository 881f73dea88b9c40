"""Create the unmanaged Task and Queue models: no table, only their content types and permissions."""

from __future__ import annotations

from django.db import migrations, models


class Migration(migrations.Migration):
    initial = True

    dependencies: list[tuple[str, str]] = []

    operations = [
        migrations.CreateModel(
            name="Queue",
            fields=[
                ("name", models.CharField(max_length=1024, primary_key=True, serialize=False)),
            ],
            options={
                "verbose_name": "queue",
                "verbose_name_plural": "queues",
                "permissions": [("pause_queue", "Can pause and resume a queue")],
                "managed": False,
                "default_permissions": ("view",),
            },
        ),
        migrations.CreateModel(
            name="Task",
            fields=[
                ("id", models.CharField(max_length=64, primary_key=True, serialize=False)),
            ],
            options={
                "verbose_name": "task",
                "verbose_name_plural": "tasks",
                "permissions": [
                    ("retry_task", "Can retry a failed task"),
                    ("cancel_task", "Can cancel a ready or running task"),
                    ("view_task_arguments", "Can view task arguments and return values"),
                ],
                "managed": False,
                "default_permissions": ("view", "delete"),
            },
        ),
    ]
