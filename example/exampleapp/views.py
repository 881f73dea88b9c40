"""A tiny HTTP API to enqueue example tasks and read their results: DEMO ONLY.

The enqueue and result endpoints have no authentication, so they answer 404 unless DEBUG is on
(DJANGO_DEBUG=1, as the demo and the compose stack set it). Never turn DEBUG on in production;
operators use the admin (/admin/) instead.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import timedelta
from functools import wraps

from django.conf import settings
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.tasks import default_task_backend
from django.tasks.base import Task, TaskResult
from django.tasks.exceptions import TaskResultDoesNotExist
from django.utils import timezone
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_GET, require_POST

from . import tasks

TASKS: dict[str, Task] = {
    "add": tasks.add,
    "send_welcome_email": tasks.send_welcome_email,
    "fetch_title": tasks.fetch_title,
    "divide": tasks.divide,
    "flaky_report": tasks.flaky_report,
    "sleep": tasks.sleep,
}


def demo_only(view: Callable[..., HttpResponse]) -> Callable[..., HttpResponse]:
    """Answer 404 unless DEBUG is on: the wrapped endpoint is unauthenticated, for the demo only."""

    @wraps(view)
    def guarded(request: HttpRequest, *args: object, **kwargs: object) -> HttpResponse:
        if not settings.DEBUG:
            raise Http404("demo-only endpoint, disabled unless DEBUG is on")
        return view(request, *args, **kwargs)

    return guarded


def describe(result: TaskResult) -> dict[str, object]:
    """Return a result as JSON-ready data."""
    data: dict[str, object] = {
        "id": result.id,
        "task": result.task.module_path,
        "status": result.status,
        "attempts": result.attempts,
        "worker_ids": result.worker_ids,
        "enqueued_at": result.enqueued_at.isoformat() if result.enqueued_at else None,
        "finished_at": result.finished_at.isoformat() if result.finished_at else None,
    }
    if result.status == "SUCCESSFUL":
        data["return_value"] = result.return_value
    if result.errors:
        data["error"] = result.errors[-1].exception_class_path
    return data


@require_GET
def index(request: HttpRequest) -> HttpResponse:
    """List the tasks that can be enqueued, and say whether the demo-only API is on."""
    if settings.DEBUG:
        api = (
            "DEMO ONLY, unauthenticated, on because DEBUG is on: POST /enqueue/<name> with JSON "
            "{args, kwargs, delay}; GET /results/<id>"
        )
    else:
        api = "disabled: the unauthenticated enqueue and result endpoints answer only when DEBUG is on (demo)"
    return JsonResponse({"tasks": sorted(TASKS), "enqueue": api, "admin": "/admin/"})


@require_GET
def healthz(request: HttpRequest) -> HttpResponse:
    """Answer the container health check."""
    return HttpResponse("ok", content_type="text/plain")


@csrf_exempt
@demo_only
@require_POST
def enqueue(request: HttpRequest, name: str) -> HttpResponse:
    """Enqueue a task by name with JSON {"args": [...], "kwargs": {...}, "delay": seconds} (demo only)."""
    task = TASKS.get(name)
    if task is None:
        return JsonResponse({"error": f"unknown task {name!r}"}, status=404)
    try:
        body = json.loads(request.body or b"{}")
    except json.JSONDecodeError:
        return JsonResponse({"error": "body must be JSON"}, status=400)
    delay = body.get("delay")
    if delay:
        task = task.using(run_after=timezone.now() + timedelta(seconds=float(delay)))
    result = task.enqueue(*body.get("args", []), **body.get("kwargs", {}))
    return JsonResponse(describe(result), status=202)


@demo_only
@require_GET
def result(request: HttpRequest, result_id: str) -> HttpResponse:
    """Return a task result by id (demo only)."""
    try:
        found = default_task_backend.get_result(result_id)
    except TaskResultDoesNotExist:
        return JsonResponse({"error": "no such task"}, status=404)
    return JsonResponse(describe(found))
