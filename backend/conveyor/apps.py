"""The Django app: adding "conveyor" to INSTALLED_APPS installs `manage.py conveyor`."""

from __future__ import annotations

from django.apps import AppConfig


class ConveyorConfig(AppConfig):
    """Register conveyor as an app (no models); its management command lives in management/."""

    name = "conveyor"
    label = "conveyor"
    verbose_name = "conveyor"
