"""The admin pages through Django's test client: permissions, pages, actions, paging, Redis down."""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

import pytest
from django.http import Http404
from django.test import Client, RequestFactory, override_settings

from devtools.redis_server import free_port
from tests.browser import browser_tasks
from tests.browser.conftest import PASSWORD, MakeUser, status_of, wait_for_status
from tests.conftest import tasks_setting

TASKS_URL = "/admin/conveyor_admin/task/"
QUEUES_URL = "/admin/conveyor_admin/queue/"


def client_for(user: Any) -> Client:
    """Return a test client logged in as user, with CSRF checks on (as a browser would meet them)."""
    client = Client(enforce_csrf_checks=True)
    assert client.login(username=user.username, password=PASSWORD)
    return client


def csrf_post(client: Client, url: str, data: dict[str, Any] | None = None) -> Any:
    """POST with the CSRF token a page of the admin gave this client."""
    for page in ("/admin/", "/admin/login/"):  # the index for a user, the login form for anyone
        if "csrftoken" not in client.cookies:
            client.get(page)
    token = client.cookies["csrftoken"].value
    return client.post(url, {**(data or {}), "csrfmiddlewaretoken": token})


def failed_task(backend: Any, run_batch: Any) -> str:
    """Enqueue send_email (always fails) and let a batch worker fail it; return its id."""
    task_id = browser_tasks.send_email.enqueue("ada@example.com").id
    run_batch()
    wait_for_status(backend, task_id, "FAILED")
    return task_id


@pytest.fixture
def run_batch(spawn_worker: Any) -> Any:
    """Run a worker in batch mode (it drains what is due, then exits 0)."""

    def run() -> None:
        handle = spawn_worker("--batch", "--queues", "default,reports,emails")
        assert handle.proc.wait(60) == 0, "\n".join(handle.lines[-20:])

    return run


# -- who may do what ------------------------------------------------------------------------------


def test_anonymous_user_is_sent_to_login_everywhere(conveyor: Any) -> None:
    task_id = browser_tasks.add.enqueue(1, 2).id
    client = Client()
    for url in (TASKS_URL, f"{TASKS_URL}{task_id}/change/", QUEUES_URL, f"{TASKS_URL}{task_id}/delete/"):
        response = client.get(url)
        assert response.status_code == 302, url
        assert response["Location"].startswith("/admin/login/"), url
    for url in (f"{TASKS_URL}{task_id}/cancel/", f"{QUEUES_URL}pause/"):
        response = csrf_post(client, url, {"queue": "default"})
        assert response.status_code == 302
        assert response["Location"].startswith("/admin/login/")
    assert status_of(conveyor, task_id) == "READY"


def test_staff_without_conveyor_permissions_gets_403(conveyor: Any, make_user: MakeUser) -> None:
    client = client_for(make_user())
    assert client.get(TASKS_URL).status_code == 403
    assert client.get(QUEUES_URL).status_code == 403
    index = client.get("/admin/")
    assert b"conveyor_admin/task/" not in index.content


def test_viewer_sees_pages_but_no_arguments_and_no_buttons(conveyor: Any, make_user: MakeUser) -> None:
    task_id = browser_tasks.send_email.enqueue("ada@example.com").id
    client = client_for(make_user("view_task", "view_queue"))
    index = client.get("/admin/")
    assert b'href="/admin/conveyor_admin/task/"' in index.content
    assert b'href="/admin/conveyor_admin/queue/"' in index.content

    listing = client.get(TASKS_URL)
    assert listing.status_code == 200
    assert task_id.encode() in listing.content
    assert b'name="action"' not in listing.content  # no action the viewer may run

    detail = client.get(f"{TASKS_URL}{task_id}/change/")
    assert detail.status_code == 200
    assert b"ada@example.com" not in detail.content
    assert b"Hidden: arguments and return values" in detail.content
    for button in (b"/retry/", b"/cancel/", b"/delete/"):
        assert button not in detail.content


def test_viewer_gets_403_for_every_action(conveyor: Any, make_user: MakeUser) -> None:
    task_id = browser_tasks.parked.enqueue("keep me").id
    client = client_for(make_user("view_task", "view_queue"))
    for url, data in (
        (f"{TASKS_URL}{task_id}/retry/", {}),
        (f"{TASKS_URL}{task_id}/cancel/", {}),
        (f"{TASKS_URL}{task_id}/delete/", {"post": "yes"}),
        (f"{QUEUES_URL}pause/", {"queue": "parked"}),
        (f"{QUEUES_URL}resume/", {"queue": "parked"}),
        (TASKS_URL, {"action": "cancel", "_selected_action": [task_id]}),
        (TASKS_URL, {"action": "delete", "_selected_action": [task_id], "post": "yes"}),
        (TASKS_URL, {"action": "retry", "_selected_action": [task_id]}),
    ):
        assert csrf_post(client, url, data).status_code == 403, url
    assert client.get(f"{TASKS_URL}{task_id}/delete/").status_code == 403
    assert status_of(conveyor, task_id) == "READY"
    from django.contrib.admin.models import LogEntry

    assert not LogEntry.objects.filter(object_id=task_id).exists()


def test_each_action_needs_its_own_permission(conveyor: Any, make_user: MakeUser) -> None:
    task_id = browser_tasks.parked.enqueue("cancel me").id
    retrier = client_for(make_user("view_task", "retry_task"))
    assert csrf_post(retrier, f"{TASKS_URL}{task_id}/cancel/").status_code == 403
    assert status_of(conveyor, task_id) == "READY"

    canceller = client_for(make_user("view_task", "cancel_task"))
    response = csrf_post(canceller, f"{TASKS_URL}{task_id}/cancel/")
    assert response.status_code == 302
    assert response["Location"] == f"{TASKS_URL}{task_id}/change/"
    assert status_of(conveyor, task_id) == "FAILED"
    from django.contrib.admin.models import LogEntry

    assert LogEntry.objects.filter(object_id=task_id, change_message="Cancelled").exists()


def test_actions_refuse_get_and_need_csrf(conveyor: Any, make_user: MakeUser) -> None:
    task_id = browser_tasks.parked.enqueue("x").id
    client = client_for(make_user(superuser=True))
    assert client.get(f"{TASKS_URL}{task_id}/cancel/").status_code == 405
    assert client.get(f"{TASKS_URL}{task_id}/retry/").status_code == 405
    assert client.get(f"{QUEUES_URL}pause/").status_code == 405
    assert client.post(f"{TASKS_URL}{task_id}/cancel/").status_code == 403  # no CSRF token
    assert status_of(conveyor, task_id) == "READY"


def test_arguments_need_their_own_permission(conveyor: Any, make_user: MakeUser) -> None:
    task_id = browser_tasks.send_email.enqueue("ada@example.com").id
    client = client_for(make_user("view_task", "view_task_arguments"))
    detail = client.get(f"{TASKS_URL}{task_id}/change/")
    assert b"ada@example.com" in detail.content
    assert b"Hidden: arguments" not in detail.content


# -- pages ----------------------------------------------------------------------------------------


def test_detail_shows_errors_tracebacks_and_worker_ids(
    conveyor: Any, make_user: MakeUser, run_batch: Any
) -> None:
    task_id = failed_task(conveyor, run_batch)
    client = client_for(make_user(superuser=True))
    page = client.get(f"{TASKS_URL}{task_id}/change/").content.decode()
    assert "builtins.ConnectionRefusedError" in page
    assert "Traceback (most recent call last)" in page
    assert "mail server refused the address" in page
    assert "Errors (1)" in page
    assert re.search(r"<code>admin-[0-9a-f]{6}</code>", page), "the worker id"
    assert 'value="Retry"' in page


def test_unknown_or_malformed_task_id_goes_back_to_the_list(conveyor: Any, make_user: MakeUser) -> None:
    client = client_for(make_user(superuser=True))
    for task_id in ("doesnotexist", "not%20an%20id"):
        response = client.get(f"{TASKS_URL}{task_id}/change/", follow=True)
        assert response.redirect_chain == [(TASKS_URL, 302)]
        assert "No task has the id" in response.content.decode()


def test_search_by_id_and_filters(conveyor: Any, make_user: MakeUser, run_batch: Any) -> None:
    failed = failed_task(conveyor, run_batch)
    ready = browser_tasks.parked.enqueue("x").id
    client = client_for(make_user(superuser=True))

    found = client.get(TASKS_URL, {"q": failed}).content.decode()
    assert failed in found and ready not in found
    assert "1 result" in found
    assert "0 results" in client.get(TASKS_URL, {"q": "nosuchid"}).content.decode()

    only_failed = client.get(TASKS_URL, {"status": "FAILED"}).content.decode()
    assert failed in only_failed and ready not in only_failed
    parked = client.get(TASKS_URL, {"queue": "parked"}).content.decode()
    assert ready in parked and failed not in parked
    by_path = client.get(TASKS_URL, {"task": "tests.browser.browser_tasks.parked"}).content.decode()
    assert ready in by_path and failed not in by_path
    unknown = client.get(TASKS_URL, {"queue": "nosuchqueue"})
    assert unknown.status_code == 200
    assert "nosuchqueue" in unknown.content.decode()


def test_pages_follow_the_cursor_without_counting(
    conveyor: Any, make_user: MakeUser, monkeypatch: pytest.MonkeyPatch
) -> None:
    from conveyor.contrib.admin.models import Task
    from django.contrib import admin

    monkeypatch.setattr(admin.site._registry[Task], "list_per_page", 3)
    ids = {browser_tasks.add.enqueue(i, i).id for i in range(7)}
    client = client_for(make_user("view_task"))
    seen: list[str] = []
    url: str | None = TASKS_URL
    pages = 0
    while url:
        page = client.get(url).content.decode()
        rows = re.findall(r'<tr data-task-id="([A-Za-z0-9_-]+)">', page)
        assert len(rows) <= 3
        seen += rows
        pages += 1
        found = re.search(r'<a href="(\?[^"]*)" class="showall" rel="next">', page)
        url = TASKS_URL + found.group(1).replace("&amp;", "&") if found else None
        assert pages <= 4
    assert sorted(seen) == sorted(ids)
    assert pages == 3
    assert "First page" in page


def test_list_action_retries_and_deletes_after_confirming(
    conveyor: Any, make_user: MakeUser, run_batch: Any
) -> None:
    first = browser_tasks.send_email.enqueue("a@example.com").id
    second = browser_tasks.send_email.enqueue("b@example.com").id
    run_batch()
    for task_id in (first, second):
        wait_for_status(conveyor, task_id, "FAILED")
    client = client_for(make_user(superuser=True))
    response = csrf_post(client, TASKS_URL, {"action": "retry", "_selected_action": [first, second]})
    assert response.status_code == 302
    assert status_of(conveyor, first) == status_of(conveyor, second) == "READY"

    confirm = csrf_post(client, TASKS_URL, {"action": "delete", "_selected_action": [first, second]})
    assert confirm.status_code == 200
    assert b"Are you sure" in confirm.content
    assert status_of(conveyor, first) == "READY"  # nothing deleted before the confirmation
    done = csrf_post(
        client, TASKS_URL, {"action": "delete", "_selected_action": [first, second], "post": "yes"}
    )
    assert done.status_code == 302
    assert status_of(conveyor, first) is None and status_of(conveyor, second) is None


def test_queues_page_and_pause_resume(conveyor: Any, make_user: MakeUser) -> None:
    browser_tasks.parked.enqueue("x")
    client = client_for(make_user("view_queue", "pause_queue"))
    page = client.get(QUEUES_URL).content.decode()
    assert 'data-queue="parked"' in page
    assert "Active" in page and 'value="Pause"' in page
    response = csrf_post(client, f"{QUEUES_URL}pause/", {"queue": "parked"})
    assert response.status_code == 302
    page = client.get(QUEUES_URL).content.decode()
    assert "Paused queue “parked”" in page
    assert 'value="Resume"' in page
    csrf_post(client, f"{QUEUES_URL}resume/", {"queue": "parked"})
    unknown = csrf_post(client, f"{QUEUES_URL}pause/", {"queue": "nosuchqueue"})
    assert unknown.status_code == 302
    assert "No queue is named" in client.get(QUEUES_URL).content.decode()


def test_unknown_backend_alias_is_404(conveyor: Any, make_user: MakeUser) -> None:
    client = client_for(make_user(superuser=True))
    assert client.get(TASKS_URL, {"backend": "nosuch"}).status_code == 404


def test_second_backend_is_chosen_by_alias(redis_url: str, prefix: str, make_user: MakeUser) -> None:
    tasks = tasks_setting(redis_url, prefix)
    other = {**tasks["default"], "OPTIONS": {**tasks["default"]["OPTIONS"], "KEY_PREFIX": prefix + "-b"}}
    with override_settings(TASKS={**tasks, "other": other}):
        task_id = browser_tasks.add.using(backend="other").enqueue(1, 1).id
        client = client_for(make_user(superuser=True))
        assert task_id not in client.get(TASKS_URL).content.decode()
        page = client.get(TASKS_URL, {"backend": "other"}).content.decode()
        assert task_id in page
        assert f"/admin/conveyor_admin/task/{task_id}/change/?backend=other" in page
        assert '<option value="other" selected>' in page
        assert client.get(f"{TASKS_URL}{task_id}/change/", {"backend": "other"}).status_code == 200


def test_redis_down_is_a_clear_503_not_a_500(redis_url: str, prefix: str, make_user: MakeUser) -> None:
    down = tasks_setting(f"redis://127.0.0.1:{free_port()}/0", prefix, CONNECT_TIMEOUT=0.5)
    client = client_for(make_user(superuser=True))
    with override_settings(TASKS=down):
        for url in (TASKS_URL, f"{TASKS_URL}abc/change/", QUEUES_URL):
            started = time.monotonic()
            response = client.get(url)
            assert response.status_code == 503, url
            assert "Redis is unreachable" in response.content.decode()
            assert time.monotonic() - started < 15
        assert csrf_post(client, f"{TASKS_URL}abc/retry/").status_code == 503


def test_example_project_enqueue_endpoints_are_demo_only(monkeypatch: pytest.MonkeyPatch) -> None:
    # The example project's unauthenticated endpoints answer 404 unless DEBUG is on.
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[2] / "example"))
    from exampleapp import views

    factory = RequestFactory()
    with override_settings(DEBUG=False):
        with pytest.raises(Http404):
            views.enqueue(factory.post("/enqueue/add", b"{}", content_type="application/json"), name="add")
        with pytest.raises(Http404):
            views.result(factory.get("/results/x"), result_id="x")
        assert b"disabled" in views.index(factory.get("/")).content
    with override_settings(DEBUG=True):
        assert b"DEMO ONLY" in views.index(factory.get("/")).content
