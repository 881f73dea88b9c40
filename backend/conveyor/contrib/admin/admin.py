"""The admin pages (task list, task detail, queues) and their actions, all through conveyor.ops.Operator.

Every page is an admin view (staff login, CSRF, never cached); every action is a POST that checks
its own permission and answers 403 without it. Arguments and return values are read from Redis
only for users with view_task_arguments. Lists page by Operator's cursor and never count rows.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from functools import update_wrapper
from typing import Any

from django.contrib import admin, messages
from django.contrib.admin.models import CHANGE, LogEntry
from django.core.exceptions import PermissionDenied
from django.db import models
from django.http import (
    HttpRequest,
    HttpResponse,
    HttpResponseBadRequest,
    HttpResponseNotAllowed,
    HttpResponseRedirect,
)
from django.template.response import TemplateResponse
from django.urls import URLPattern, path, reverse

from conveyor.exceptions import ConveyorError, RedisUnavailable, UnknownQueue, UnknownTask
from conveyor.ops import Operator, Page, QueueStatus, TaskSummary, check_task_id

from .display import duration_text, json_text, short_error
from .models import (
    CANCEL_TASK,
    DELETE_TASK,
    PAUSE_QUEUE,
    RETRY_TASK,
    VIEW_QUEUE,
    VIEW_TASK,
    VIEW_TASK_ARGUMENTS,
    Queue,
    Task,
)
from .query import STATUSES, BackendChoice, ListQuery

logger = logging.getLogger(__name__)

View = Callable[..., HttpResponse]

# The task list's actions: name -> (label, permission). The detail page has one button for each.
TASK_ACTIONS: dict[str, tuple[str, str]] = {
    "retry": ("Retry selected failed tasks", RETRY_TASK),
    "cancel": ("Cancel selected tasks", CANCEL_TASK),
    "delete": ("Delete selected tasks", DELETE_TASK),
}
# The most task ids one list action sends to Redis (a page shows list_per_page of them).
MAX_SELECTED = 500


def counted(n: int) -> str:
    """Return "1 task" or "n tasks"."""
    return f"{n} task" if n == 1 else f"{n} tasks"


class OperatorAdmin(admin.ModelAdmin):
    """Pages read from Redis through an Operator: no add or change forms, Redis outages shown as a page."""

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def guarded(self, view: View) -> View:
        """Wrap a view as an admin view (staff login, CSRF, no cache) that answers 503 while Redis is down."""

        def guarded_view(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
            try:
                return view(request, *args, **kwargs)
            except RedisUnavailable as exc:
                logger.warning("conveyor admin: %s", exc)
                return self.page(
                    request,
                    "conveyor_admin/unavailable.html",
                    title="Redis is unreachable",
                    error=exc,
                    status=503,
                )

        wrapped: View = self.admin_site.admin_view(update_wrapper(guarded_view, view))
        return wrapped

    def url_name(self, action: str) -> str:
        """Return the URL name of one of this model's pages ("changelist", "change", ...)."""
        return f"{self.opts.app_label}_{self.opts.model_name}_{action}"

    def url(self, action: str, *args: str, choice: BackendChoice) -> str:
        """Return the URL of one of this model's pages, on the chosen backend."""
        url: str = reverse(f"admin:{self.url_name(action)}", args=args, current_app=self.admin_site.name)
        return url + choice.suffix

    def page(
        self, request: HttpRequest, template: str, *, title: str, status: int = 200, **context: Any
    ) -> TemplateResponse:
        """Render a page inside the admin's layout (header, sidebar, breadcrumbs)."""
        request.current_app = self.admin_site.name
        full = {**self.admin_site.each_context(request), "opts": self.opts, "title": title, **context}
        return TemplateResponse(request, template, full, status=status)

    @staticmethod
    def require(request: HttpRequest, permission: str) -> None:
        """Raise PermissionDenied (403) unless the user has the permission."""
        if not request.user.has_perm(permission):
            raise PermissionDenied

    def log(self, request: HttpRequest, objects: Iterable[models.Model], message: str) -> None:
        """Record who did what to which task or queue in the admin's history (LogEntry)."""
        objects = list(objects)
        if objects:
            LogEntry.objects.log_actions(
                user_id=request.user.pk, queryset=objects, action_flag=CHANGE, change_message=message
            )


@admin.register(Task)
class TaskAdmin(OperatorAdmin):
    """The task list (filters, id search, cursor pages, bulk actions) and one task's page."""

    list_per_page = 50

    def get_urls(self) -> list[URLPattern]:
        return [
            path("", self.guarded(self.changelist_view), name=self.url_name("changelist")),
            path("<str:object_id>/change/", self.guarded(self.change_view), name=self.url_name("change")),
            path("<str:object_id>/retry/", self.guarded(self.retry_view), name=self.url_name("retry")),
            path("<str:object_id>/cancel/", self.guarded(self.cancel_view), name=self.url_name("cancel")),
            path("<str:object_id>/delete/", self.guarded(self.delete_view), name=self.url_name("delete")),
        ]

    # -- pages -------------------------------------------------------------------

    def changelist_view(
        self, request: HttpRequest, extra_context: dict[str, Any] | None = None
    ) -> HttpResponse:
        """List tasks newest first by filter and cursor; a POST runs a list action on the selected ones."""
        if not self.has_view_permission(request):
            raise PermissionDenied
        choice = BackendChoice.from_params(request.GET)
        operator = Operator(choice.backend)
        if request.method == "POST":
            return self.run_list_action(request, operator)
        query = ListQuery.from_params(request.GET, choice)
        next_url = None
        if query.search:
            rows = self.find(operator, query.search)
        else:
            try:
                page = operator.list(
                    queue=query.queue,
                    status=query.status,
                    task=query.task,
                    cursor=query.cursor,
                    limit=self.list_per_page,
                )
            except RedisUnavailable:
                raise
            except ConveyorError as exc:  # an unknown queue, a cursor from elsewhere
                messages.warning(request, str(exc))
                page = Page(items=(), next_cursor=None)
            rows = page.items
            if page.next_cursor:
                next_url = query.url(cursor=page.next_cursor)
        queues = operator.queues()
        if query.queue and query.queue not in queues:
            queues = (*queues, query.queue)
        filters = (
            ("status", query.filter_choices("status", ((s, s.capitalize()) for s in STATUSES))),
            ("queue", query.filter_choices("queue", ((q, q) for q in queues))),
        )
        return self.page(
            request,
            "conveyor_admin/task_list.html",
            title="Tasks",
            choice=choice,
            query=query,
            rows=[(task, short_error(task.last_error)) for task in rows],
            row_count=len(rows),
            filters=filters,
            task_form_params=query.kept_params("task", "cursor", "q"),
            actions=[
                (name, label) for name, (label, perm) in TASK_ACTIONS.items() if request.user.has_perm(perm)
            ],
            next_url=next_url,
            first_url=query.url(cursor=None) if query.cursor else None,
            clear_url=ListQuery(backend=choice).url(),
            queues_url=reverse("admin:conveyor_admin_queue_changelist", current_app=self.admin_site.name)
            + choice.suffix,
            can_view_queues=request.user.has_perm(VIEW_QUEUE),
            media=self.media,
        )

    @staticmethod
    def find(operator: Operator, task_id: str) -> tuple[TaskSummary, ...]:
        """Return the one task with this id, or nothing."""
        try:
            return (operator.show(task_id).summary,)
        except UnknownTask:
            return ()

    def change_view(
        self,
        request: HttpRequest,
        object_id: str,
        form_url: str = "",
        extra_context: dict[str, Any] | None = None,
    ) -> HttpResponse:
        """Show one task: timestamps, attempts, workers, errors and tracebacks, and (if allowed) arguments."""
        if not self.has_view_permission(request):
            raise PermissionDenied
        choice = BackendChoice.from_params(request.GET)
        with_args = request.user.has_perm(VIEW_TASK_ARGUMENTS)
        try:
            detail = Operator(choice.backend).show(object_id, with_args=with_args)
        except UnknownTask:
            messages.warning(
                request, f"No task has the id “{object_id}”: it never existed, expired or was deleted."
            )
            return HttpResponseRedirect(self.url("changelist", choice=choice))
        task = detail.summary
        shown_args = with_args and detail.with_args
        return self.page(
            request,
            "conveyor_admin/task_detail.html",
            title="Task",
            subtitle=task.id,
            choice=choice,
            detail=detail,
            task=task,
            timeline=[
                (label, moment)
                for label, moment in (
                    ("Enqueued", task.enqueued_at),
                    ("Run after", detail.run_after),
                    ("Due (waiting)", detail.scheduled_for),
                    ("Started", detail.started_at),
                    ("Last attempted", detail.last_attempted_at),
                    ("Finished", task.finished_at),
                    ("Cancel requested", detail.cancel_requested_at),
                )
                if moment is not None
            ],
            shown_args=shown_args,
            args_text=json_text(detail.args) if shown_args else None,
            kwargs_text=json_text(detail.kwargs) if shown_args else None,
            return_text=json_text(detail.return_value)
            if shown_args and task.status == "SUCCESSFUL"
            else None,
            can_retry=task.status == "FAILED" and request.user.has_perm(RETRY_TASK),
            can_cancel=task.status in ("READY", "RUNNING")
            and not task.cancel_requested
            and request.user.has_perm(CANCEL_TASK),
            can_delete=task.status != "RUNNING" and self.has_delete_permission(request),
            list_url=self.url("changelist", choice=choice),
            retry_url=self.url("retry", task.id, choice=choice),
            cancel_url=self.url("cancel", task.id, choice=choice),
            delete_url=self.url("delete", task.id, choice=choice),
        )

    # -- actions -----------------------------------------------------------------

    def retry_view(self, request: HttpRequest, object_id: str) -> HttpResponse:
        """Retry one FAILED task (POST; retry_task)."""
        return self.act_on_one(request, object_id, "retry")

    def cancel_view(self, request: HttpRequest, object_id: str) -> HttpResponse:
        """Cancel one READY or RUNNING task (POST; cancel_task)."""
        return self.act_on_one(request, object_id, "cancel")

    def delete_view(
        self, request: HttpRequest, object_id: str, extra_context: dict[str, Any] | None = None
    ) -> HttpResponse:
        """Ask to confirm (GET), then delete one task (POST; delete_task)."""
        self.require(request, DELETE_TASK)
        choice = BackendChoice.from_params(request.GET)
        if request.method == "POST":
            return self.act_on_one(request, object_id, "delete")
        return self.page(
            request,
            "conveyor_admin/delete_confirmation.html",
            title="Are you sure?",
            choice=choice,
            task_ids=[object_id],
            action_url=self.url("delete", object_id, choice=choice),
            back_url=self.url("change", object_id, choice=choice),
            bulk=False,
        )

    def act_on_one(self, request: HttpRequest, object_id: str, action: str) -> HttpResponse:
        """Run an action on one task (POST only, its permission first), then go back to the task."""
        if request.method != "POST":
            return HttpResponseNotAllowed(["POST"])
        self.require(request, TASK_ACTIONS[action][1])
        choice = BackendChoice.from_params(request.GET)
        self.apply(request, Operator(choice.backend), action, [object_id])
        if action == "delete":
            return HttpResponseRedirect(self.url("changelist", choice=choice))
        return HttpResponseRedirect(self.url("change", object_id, choice=choice))

    def run_list_action(self, request: HttpRequest, operator: Operator) -> HttpResponse:
        """Run the list's action on the selected tasks (delete asks to confirm first)."""
        back = request.get_full_path()
        action = request.POST.get("action", "")
        if action not in TASK_ACTIONS:
            messages.warning(request, "No action selected.")
            return HttpResponseRedirect(back)
        self.require(request, TASK_ACTIONS[action][1])
        task_ids = list(dict.fromkeys(request.POST.getlist("_selected_action")))
        if not task_ids:
            messages.warning(
                request,
                "Items must be selected in order to perform actions on them. No items have been changed.",
            )
            return HttpResponseRedirect(back)
        if len(task_ids) > MAX_SELECTED:
            return HttpResponseBadRequest(f"At most {MAX_SELECTED} tasks can be selected at once.")
        if action == "delete" and request.POST.get("post") != "yes":
            return self.page(
                request,
                "conveyor_admin/delete_confirmation.html",
                title="Are you sure?",
                task_ids=task_ids,
                action_url=back,
                back_url=back,
                bulk=True,
            )
        self.apply(request, operator, action, task_ids)
        return HttpResponseRedirect(back)

    def apply(self, request: HttpRequest, operator: Operator, action: str, task_ids: list[str]) -> None:
        """Run retry, cancel or delete on tasks; report each outcome as a message and in the history."""
        valid = [task_id for task_id in task_ids if self.is_task_id(task_id)]
        if len(valid) < len(task_ids):
            messages.warning(request, f"Ignored {counted(len(task_ids) - len(valid))}: not a task id.")
        task_ids = valid
        if not task_ids:
            return
        if action == "retry":
            retried = operator.retry(task_ids)
            self.report(
                request,
                [o for o in retried.values()],
                {
                    "retried": (messages.SUCCESS, "Retried {n}: READY again, back in the queue."),
                    "not_failed": (
                        messages.WARNING,
                        "Did not retry {n}: not FAILED (only a FAILED task can be retried).",
                    ),
                    "missing": (messages.WARNING, "Did not find {n}: expired or deleted."),
                },
            )
            self.log(request, (Task(pk=i) for i, o in retried.items() if o == "retried"), "Retried")
        elif action == "cancel":
            cancelled = operator.cancel(task_ids)
            self.report(
                request,
                [o for o in cancelled.values()],
                {
                    "cancelled": (
                        messages.SUCCESS,
                        "Cancelled {n}: FAILED with TaskCancelled before starting.",
                    ),
                    "requested": (
                        messages.SUCCESS,
                        "Asked the worker running {n} to stop: cancel requested.",
                    ),
                    "finished": (messages.WARNING, "Did not cancel {n}: already finished."),
                    "missing": (messages.WARNING, "Did not find {n}: expired or deleted."),
                },
            )
            self.log(
                request,
                (Task(pk=i) for i, o in cancelled.items() if o in ("cancelled", "requested")),
                "Cancelled",
            )
        else:
            deleted = operator.delete(task_ids)
            self.report(
                request,
                ["deleted" if gone else "kept" for gone in deleted.values()],
                {
                    "deleted": (messages.SUCCESS, "Deleted {n}."),
                    "kept": (messages.WARNING, "Did not delete {n}: running (cancel first) or already gone."),
                },
            )
            gone = [Task(pk=i) for i, ok in deleted.items() if ok]
            if gone:
                self.log_deletions(request, gone)

    @staticmethod
    def is_task_id(task_id: str) -> bool:
        """Tell whether a string can be a task id (anything else is never sent to Redis)."""
        try:
            check_task_id(task_id)
        except UnknownTask:
            return False
        return True

    @staticmethod
    def report(request: HttpRequest, outcomes: list[str], texts: dict[str, tuple[int, str]]) -> None:
        """Add one message per kind of outcome, with how many tasks had it."""
        for outcome, (level, text) in texts.items():
            n = outcomes.count(outcome)
            if n:
                messages.add_message(request, level, text.format(n=counted(n)))


@admin.register(Queue)
class QueueAdmin(OperatorAdmin):
    """The queues page: counts, paused state and live workers; pause and resume."""

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def get_urls(self) -> list[URLPattern]:
        return [
            path("", self.guarded(self.changelist_view), name=self.url_name("changelist")),
            path("pause/", self.guarded(self.pause_view), name=self.url_name("pause")),
            path("resume/", self.guarded(self.resume_view), name=self.url_name("resume")),
        ]

    def changelist_view(
        self, request: HttpRequest, extra_context: dict[str, Any] | None = None
    ) -> HttpResponse:
        """Show every queue's counts and paused state, and the live workers."""
        if not self.has_view_permission(request):
            raise PermissionDenied
        choice = BackendChoice.from_params(request.GET)
        status = Operator(choice.backend).status()
        tasks_url = reverse("admin:conveyor_admin_task_changelist", current_app=self.admin_site.name)
        return self.page(
            request,
            "conveyor_admin/queues.html",
            title="Queues",
            choice=choice,
            overview=status,
            rows=[self.row(queue, tasks_url, choice) for queue in status.queues],
            workers=status.workers,
            can_pause=request.user.has_perm(PAUSE_QUEUE),
            can_view_tasks=request.user.has_perm(VIEW_TASK),
            tasks_url=tasks_url + choice.suffix,
            pause_url=self.url("pause", choice=choice),
            resume_url=self.url("resume", choice=choice),
        )

    @staticmethod
    def row(queue: QueueStatus, tasks_url: str, choice: BackendChoice) -> dict[str, Any]:
        """Return one queue's row: its counts, links to its tasks, and the age of its oldest ready task."""
        listed = ListQuery(backend=choice, queue=queue.queue)
        return {
            "queue": queue,
            "url": tasks_url + listed.url(),
            "failed_url": tasks_url + listed.url(status="FAILED"),
            "oldest_ready": duration_text(queue.oldest_ready_age),
        }

    def pause_view(self, request: HttpRequest) -> HttpResponse:
        """Pause a queue (POST; pause_queue): workers stop claiming from it."""
        return self.switch(request, pause=True)

    def resume_view(self, request: HttpRequest) -> HttpResponse:
        """Resume a paused queue (POST; pause_queue)."""
        return self.switch(request, pause=False)

    def switch(self, request: HttpRequest, *, pause: bool) -> HttpResponse:
        """Pause or resume the queue named in the form, then go back to the queues page."""
        if request.method != "POST":
            return HttpResponseNotAllowed(["POST"])
        self.require(request, PAUSE_QUEUE)
        choice = BackendChoice.from_params(request.GET)
        name = request.POST.get("queue", "")
        operator = Operator(choice.backend)
        try:
            if pause:
                operator.pause(name)
            else:
                operator.resume(name)
        except UnknownQueue:
            messages.error(request, f"No queue is named “{name}”.")
        else:
            if pause:
                messages.success(
                    request, f"Paused queue “{name}”: workers claim nothing from it until resumed."
                )
            else:
                messages.success(request, f"Resumed queue “{name}”.")
            self.log(request, [Queue(pk=name)], "Paused" if pause else "Resumed")
        return HttpResponseRedirect(self.url("changelist", choice=choice))
