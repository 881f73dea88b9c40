"""The admin in a real browser: headless Chromium against a live server, a real worker and real Redis."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import expect

from tests.browser import browser_tasks
from tests.browser.conftest import DEADLINE, PASSWORD, MakeUser, status_of, wait_for_status

TASKS_PATH = "/admin/conveyor_admin/task/"
QUEUES_PATH = "/admin/conveyor_admin/queue/"
VIEWPORT = {"width": 1440, "height": 900}


@dataclass(frozen=True, slots=True, kw_only=True)
class World:
    """What the scenario runs against: tasks in each state, a worker, and two users."""

    base: str
    backend: Any
    worker_id: str
    flaky: str  # FAILED once in queue "reports"; succeeds when retried
    refused: str  # FAILED in queue "emails", for good
    parked: str  # READY in queue "parked", which the worker does not serve
    admin: Any
    viewer: Any


@pytest.fixture
def world(
    conveyor: Any, live_server: str, spawn_worker: Any, make_user: MakeUser, tmp_path: Path
) -> Iterator[World]:
    """Enqueue tasks, run a worker until they settle, and create the users."""
    flaky = browser_tasks.flaky_report.enqueue(str(tmp_path / "flaky.marker"), email="ada@example.com").id
    refused = browser_tasks.send_email.enqueue("grace@example.com").id
    done = [browser_tasks.add.enqueue(i, 40).id for i in range(3)]
    parked = browser_tasks.parked.enqueue("waits for a worker on 'parked'").id
    worker = spawn_worker("--queues", "default,reports,emails", "--concurrency", "2")
    wait_for_status(conveyor, flaky, "FAILED")
    wait_for_status(conveyor, refused, "FAILED")
    for task_id in done:
        wait_for_status(conveyor, task_id, "SUCCESSFUL")
    yield World(
        base=live_server,
        backend=conveyor,
        worker_id=worker.worker_id,
        flaky=flaky,
        refused=refused,
        parked=parked,
        admin=make_user(superuser=True),
        viewer=make_user("view_task", "view_queue"),
    )


def log_in(browser: Any, world: World, user: Any) -> Any:
    """Open a fresh browser context, log in through the admin's form, and return its page."""
    page = browser.new_context(viewport=VIEWPORT).new_page()
    page.goto(world.base + "/admin/")
    assert "/admin/login/" in page.url
    page.fill("#id_username", user.username)
    page.fill("#id_password", PASSWORD)
    page.click("input[type=submit]")
    page.wait_for_url(world.base + "/admin/")
    return page


def reload_until(page: Any, selector: str, text: str, timeout: float = DEADLINE) -> None:
    """Reload the page until the element's text holds text."""
    deadline = time.monotonic() + timeout
    while text not in page.inner_text(selector):
        assert time.monotonic() < deadline, f"{selector} never showed {text!r}: {page.inner_text(selector)!r}"
        time.sleep(0.3)
        page.reload()


def post_from(page: Any, path: str, form: dict[str, str] | None = None) -> int:
    """POST a form from inside the page's session (its cookies and CSRF token); return the status."""
    token = next(c["value"] for c in page.context.cookies() if c["name"] == "csrftoken")
    response = page.request.post(
        page.url.split("/admin/")[0] + path,
        form={"csrfmiddlewaretoken": token, **(form or {})},
        headers={"Referer": page.url},
        max_redirects=0,
    )
    return int(response.status)


def test_admin_filters_opens_and_retries_a_failed_task(
    chromium: Any, world: World, screenshots: Path
) -> None:
    page = log_in(chromium, world, world.admin)
    conveyor_module = page.locator(".app-conveyor_admin")
    assert conveyor_module.get_by_role("link", name="Tasks").is_visible()
    assert conveyor_module.get_by_role("link", name="Queues").is_visible()

    page.click(".app-conveyor_admin >> text=Tasks")
    expect(page.locator("#result_list tbody tr")).to_have_count(6)
    page.screenshot(path=str(screenshots / "admin-task-list.png"), full_page=True)

    # Filter by status FAILED, then by queue "reports": only the flaky task is left.
    page.click("#changelist-filter details[data-filter-title=status] >> text=Failed")
    expect(page).to_have_url(world.base + TASKS_PATH + "?status=FAILED")
    expect(page.locator("#result_list tbody tr")).to_have_count(2)
    page.click("#changelist-filter details[data-filter-title=queue] >> text=reports")
    expect(page).to_have_url(world.base + TASKS_PATH + "?queue=reports&status=FAILED")
    rows = page.locator("#result_list tbody tr")
    expect(rows).to_have_count(1)
    expect(rows.first).to_have_attribute("data-task-id", world.flaky)

    # Search by id finds it too.
    page.fill("#searchbar", world.refused)
    page.press("#searchbar", "Enter")
    expect(page).to_have_url(world.base + TASKS_PATH + f"?q={world.refused}")
    expect(page.locator("#result_list tbody tr")).to_have_count(1)
    expect(page.locator("#result_list tbody tr").first).to_have_attribute("data-task-id", world.refused)

    # Open the flaky task: its traceback and (for this user) its arguments are there.
    page.goto(world.base + TASKS_PATH + "?status=FAILED&queue=reports")
    page.click(f"tr[data-task-id='{world.flaky}'] .field-id a")
    expect(page).to_have_url(world.base + TASKS_PATH + f"{world.flaky}/change/")
    expect(page.locator(".field-status")).to_contain_text("FAILED")
    assert "RuntimeError" in page.inner_text(".conveyor-errors")
    assert "Traceback (most recent call last)" in page.inner_text(".conveyor-traceback")
    assert "ada@example.com" in page.inner_text(".conveyor-arguments")
    assert world.worker_id in page.inner_text(".field-workers")
    page.screenshot(path=str(screenshots / "admin-task-detail.png"), full_page=True)

    # Retry: the worker runs it again and it succeeds; the first error stays on record.
    page.click("input[value=Retry]")
    expect(page.locator(".messagelist")).to_contain_text("Retried 1 task")
    reload_until(page, ".field-status", "SUCCESSFUL")
    assert "report sent to ada@example.com" in page.inner_text(".field-return")
    assert "Errors (1)" in page.inner_text(".conveyor-errors")
    assert page.inner_text(".field-attempts").startswith("Attempts:\n2")
    assert status_of(world.backend, world.flaky) == "SUCCESSFUL"


def test_admin_pauses_and_resumes_a_queue_and_sees_the_worker(
    chromium: Any, world: World, screenshots: Path
) -> None:
    page = log_in(chromium, world, world.admin)
    page.goto(world.base + QUEUES_PATH)
    reports = page.locator("tr[data-queue=reports]")
    assert "Active" in reports.inner_text()
    assert world.worker_id in page.inner_text("#worker_list")

    page.click("input[aria-label='Pause reports']")
    expect(page.locator(".messagelist")).to_contain_text("Paused queue “reports”")
    expect(page.locator("tr[data-queue=reports]")).to_contain_text("Paused")
    # While paused, a new task in it waits.
    waiting = browser_tasks.flaky_report.enqueue("/nonexistent/marker", email="x@example.com").id
    time.sleep(1.5)
    assert status_of(world.backend, waiting) == "READY"

    page.click("input[aria-label='Resume reports']")
    expect(page.locator(".messagelist")).to_contain_text("Resumed queue “reports”")
    expect(page.locator("tr[data-queue=reports]")).to_contain_text("Active")
    wait_for_status(world.backend, waiting, "FAILED", "SUCCESSFUL")
    page.reload()
    page.screenshot(path=str(screenshots / "admin-queues.png"), full_page=True)


def test_admin_cancels_a_ready_task(chromium: Any, world: World) -> None:
    page = log_in(chromium, world, world.admin)
    page.goto(world.base + TASKS_PATH + f"{world.parked}/change/")
    assert "READY" in page.inner_text(".field-status")
    page.click("input[value='Cancel task']")
    expect(page.locator(".messagelist")).to_contain_text("Cancelled 1 task")
    expect(page.locator(".field-status")).to_contain_text("FAILED")
    expect(page.locator(".conveyor-errors")).to_contain_text("TaskCancelled")
    assert status_of(world.backend, world.parked) == "FAILED"


def test_viewer_gets_403_on_actions_and_never_sees_arguments(chromium: Any, world: World) -> None:
    page = log_in(chromium, world, world.viewer)
    page.goto(world.base + TASKS_PATH)
    assert page.locator("select[name=action]").count() == 0
    page.goto(world.base + TASKS_PATH + f"{world.flaky}/change/")
    content = page.content()
    assert "ada@example.com" not in content
    assert "Hidden: arguments and return values" in page.inner_text(".conveyor-arguments")
    assert page.locator("input[value=Retry]").count() == 0

    for path, form in (
        (f"{TASKS_PATH}{world.flaky}/retry/", {}),
        (f"{TASKS_PATH}{world.parked}/cancel/", {}),
        (f"{TASKS_PATH}{world.parked}/delete/", {"post": "yes"}),
        (f"{QUEUES_PATH}pause/", {"queue": "reports"}),
        (f"{QUEUES_PATH}resume/", {"queue": "reports"}),
    ):
        assert post_from(page, path, form) == 403, path
    assert status_of(world.backend, world.flaky) == "FAILED"
    assert status_of(world.backend, world.parked) == "READY"
    page.goto(world.base + QUEUES_PATH)
    assert page.locator("input[value=Pause]").count() == 0


def test_anonymous_browser_is_sent_to_login(chromium: Any, world: World) -> None:
    page = chromium.new_context(viewport=VIEWPORT).new_page()
    for path in (TASKS_PATH, f"{TASKS_PATH}{world.flaky}/change/", QUEUES_PATH):
        page.goto(world.base + path)
        assert "/admin/login/" in page.url, path
        assert "ada@example.com" not in page.content()
    # A POST with a valid CSRF token but no session is sent to the login page too; nothing happens.
    assert post_from(page, f"{TASKS_PATH}{world.flaky}/retry/") == 302
    assert status_of(world.backend, world.flaky) == "FAILED"
