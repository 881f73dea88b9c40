"""Example tasks the demo, the compose stack and the images run."""

from __future__ import annotations

import asyncio
import time

from django.tasks import TaskContext, task


@task()
def add(a: int, b: int) -> int:
    """Add two numbers."""
    return a + b


@task(queue_name="emails", priority=10)
def send_welcome_email(address: str) -> str:
    """Pretend to send an email (a high-priority task on its own queue)."""
    time.sleep(0.05)
    return f"sent welcome email to {address}"


@task()
async def fetch_title(url: str) -> str:
    """An async task: pretend to fetch a page."""
    await asyncio.sleep(0.05)
    return f"title of {url}"


@task()
def divide(a: float, b: float) -> float:
    """Fail with ZeroDivisionError when b is 0."""
    return a / b


@task(max_attempts=3, retry_backoff=0.2, takes_context=True)
def flaky_report(context: TaskContext, fail_until: int) -> str:
    """Fail until the given attempt, then succeed: shows retries with backoff."""
    if context.attempt < fail_until:
        raise RuntimeError(f"report backend busy on attempt {context.attempt}")
    return f"report ready on attempt {context.attempt}"


@task()
def sleep(seconds: float) -> float:
    """Sleep for a while: useful to watch draining and scaling."""
    time.sleep(seconds)
    return seconds


@task(unique_for=60)
def rebuild_search_index(section: str) -> str:
    """Rebuild one section's index: unique, so an enqueue while one still waits returns that one."""
    time.sleep(0.2)
    return f"rebuilt the {section} index"


@task()
def tick(label: str) -> str:
    """What the demo's periodic schedule enqueues."""
    return f"tick: {label}"
