"""The admin with 1,000,000 stored results: every page reads a bounded amount, whatever the total."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from typing import Any

import pytest
from conveyor.ops import Operator
from django.tasks import task_backends
from django.test import Client, override_settings

from devtools.redis_server import RedisProcess
from tests.browser import browser_tasks
from tests.browser.conftest import PASSWORD, MakeUser
from tests.conftest import tasks_setting

TASKS_URL = "/admin/conveyor_admin/task/"
RESULTS = 1_000_000
CHUNK = 100_000
# Far above what a page takes here (tens of ms), far below what one pass over a million entries takes.
PAGE_SECONDS = 2.0

# Copy one task record ARGV[3]..ARGV[4] times (RESTORE of its DUMP) and index each copy in the
# FAILED set, 1 ms apart, newest first. KEYS[1] the template's hash, KEYS[2] the index;
# ARGV[1] the task key prefix, ARGV[2] the newest score. Test-only: it builds keys from the
# prefix it is given, which only works on a single server, never on a cluster.
FILL = """
local payload = redis.call('DUMP', KEYS[1])
local newest = tonumber(ARGV[2])
local batch = {}
for i = tonumber(ARGV[3]), tonumber(ARGV[4]) do
  local id = 'copy' .. i
  redis.call('RESTORE', ARGV[1] .. id, 0, payload)
  batch[#batch + 1] = newest - i
  batch[#batch + 1] = id
  if #batch >= 1000 then
    redis.call('ZADD', KEYS[2], unpack(batch))
    batch = {}
  end
end
if #batch > 0 then redis.call('ZADD', KEYS[2], unpack(batch)) end
return 1
"""


@pytest.fixture
def million(own_redis: RedisProcess, prefix: str, database: None) -> Iterator[Any]:
    """Give a private Redis (killed after) a million FAILED results; yield the backend."""
    with override_settings(TASKS=tasks_setting(own_redis.url, prefix, SOCKET_TIMEOUT=60)):
        backend = task_backends["default"]
        template = browser_tasks.parked.enqueue("a record to copy").id
        assert Operator(backend).cancel([template]) == {template: "cancelled"}  # FAILED, no worker needed
        keys = backend.keys
        newest = int(time.time() * 1000) - 1000
        for first in range(1, RESULTS + 1, CHUNK):
            backend.store.call(
                lambda c, first=first: c.eval(
                    FILL,
                    2,
                    keys.task(template),
                    keys.failed("parked"),
                    keys.task_prefix,
                    newest,
                    first,
                    first + CHUNK - 1,
                )
            )
        yield backend
        backend.store.close()


def timed_get(client: Client, url: str, params: dict[str, str] | None = None) -> tuple[str, float]:
    """GET a page; return its HTML and how long it took."""
    started = time.monotonic()
    response = client.get(url, params or {})
    elapsed = time.monotonic() - started
    assert response.status_code == 200, url
    return response.content.decode(), elapsed


def next_link(page: str) -> str | None:
    """Return the query string of the page's "Next page" link."""
    found = re.search(r'<a href="(\?[^"]*)" class="showall" rel="next">', page)
    return found.group(1).replace("&amp;", "&") if found else None


def test_pages_stay_fast_with_a_million_results(million: Any, make_user: MakeUser) -> None:
    client = Client()
    assert client.login(username=make_user(superuser=True).username, password=PASSWORD)
    client.get(TASKS_URL)  # warm up: templates, connections

    # Given a million results, the first pages of the list each read one page's worth.
    seen: set[str] = set()
    query: str | None = ""
    for _ in range(4):
        assert query is not None
        page, elapsed = timed_get(client, TASKS_URL + query)
        assert elapsed < PAGE_SECONDS, f"a page took {elapsed:.2f}s"
        rows = re.findall(r'<tr data-task-id="([A-Za-z0-9_-]+)">', page)
        assert len(rows) == 50
        assert not seen & set(rows)
        seen |= set(rows)
        query = next_link(page)
    assert "copy1" in seen  # newest first

    # Filters, a task-path filter that matches nothing (a bounded scan), an id search, a detail
    # page deep in the index and the queues page: none counts or walks the million.
    for params in (
        {"status": "FAILED", "queue": "parked"},
        {"task": "no.such.task"},
        {"q": "copy999999"},
    ):
        page, elapsed = timed_get(client, TASKS_URL, params)
        assert elapsed < PAGE_SECONDS, f"{params} took {elapsed:.2f}s"
    assert 'data-task-id="copy999999"' in page
    _, elapsed = timed_get(client, f"{TASKS_URL}copy999999/change/")
    assert elapsed < PAGE_SECONDS
    queues, elapsed = timed_get(client, "/admin/conveyor_admin/queue/")
    assert elapsed < PAGE_SECONDS
    assert f">{RESULTS + 1}<" in queues
