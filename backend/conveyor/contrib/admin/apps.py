"""The admin app's configuration."""

from __future__ import annotations

from django.apps import AppConfig


class ConveyorAdminConfig(AppConfig):
    """Register the task and queue pages in the Django admin (models carry permissions only)."""

    name = "conveyor.contrib.admin"
    label = "conveyor_admin"
    verbose_name = "Conveyor"
    default_auto_field = "django.db.models.AutoField"
