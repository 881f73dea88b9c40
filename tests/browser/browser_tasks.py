"""Tasks the admin tier runs (module path tests.browser.browser_tasks.*)."""

from __future__ import annotations

from pathlib import Path

from django.tasks import task


@task(queue_name="reports")
def flaky_report(marker: str, email: str) -> str:
    """Fail the first time (no marker file yet), succeed every time after."""
    path = Path(marker)
    if not path.exists():
        path.write_text("failed once\n")
        raise RuntimeError("report backend busy; will work next time")  # no personal data in errors
    return f"report sent to {email}"


@task(queue_name="emails")
def send_email(address: str) -> str:
    """Always fail, as if the mail server refused the address."""
    raise ConnectionRefusedError("mail server refused the address")  # no personal data in errors


@task()
def add(a: int, b: int) -> int:
    """Add two numbers."""
    return a + b


@task(queue_name="parked")
def parked(note: str) -> str:
    """Run only if a worker serves the "parked" queue (the tier's worker does not)."""
    return note
