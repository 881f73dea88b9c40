"""Template filters of conveyor's admin pages ({% load conveyor_admin %})."""

from __future__ import annotations

from datetime import datetime

from django import template
from django.utils import timezone
from django.utils.formats import date_format

register = template.Library()


def task_name(task_path: str) -> str:
    """Return the function name of a task path ("send" of "app.tasks.send")."""
    return task_path.rpartition(".")[2]


def task_module(task_path: str) -> str:
    """Return the module of a task path ("app.tasks" of "app.tasks.send")."""
    return task_path.rpartition(".")[0]


def moment(value: datetime | None) -> str:
    """Return a compact local time: "14:03:07" today, "Nov 30 14:03" on another day, "—" for none."""
    if value is None:
        return "—"
    local = timezone.localtime(value)
    pattern = "H:i:s" if local.date() == timezone.localdate() else "M j H:i"
    return str(date_format(local, pattern))


# Registered by call: Django's decorators are untyped and would hide these signatures from mypy.
register.filter("task_name", task_name)
register.filter("task_module", task_module)
register.filter("moment", moment)
