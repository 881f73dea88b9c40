"""Waiting for results a real worker records: retries keep waiters waiting, the final outcome wakes them."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path
from typing import Any

import conveyor
from django.tasks import TaskResultStatus

from tests import tasks

from .conftest import BatchRunner, real_backend


def test_waiters_get_the_outcome_the_worker_records_after_its_retries(
    backend: object, run_batch: BatchRunner, tmp_path: Path
) -> None:
    flaky = tasks.flaky.enqueue(str(tmp_path / "count"), 2)  # fails twice, then succeeds
    failing = tasks.always_fails.enqueue()
    echo = tasks.echo.enqueue(1, a=2)
    results: dict[str, Any] = {}

    def wait(result: Any) -> None:
        results[result.id] = conveyor.wait_result(result, timeout=60)

    async def await_all() -> None:
        done = await asyncio.gather(*(conveyor.await_result(r, timeout=60) for r in (flaky, failing, echo)))
        results.update({"async-" + r.id: r for r in done})

    # Given waiters, sync and async, on tasks nobody has run yet
    waiters = [threading.Thread(target=wait, args=(r,)) for r in (flaky, failing, echo)]
    waiters.append(threading.Thread(target=lambda: asyncio.run(await_all())))
    for w in waiters:
        w.start()
    time.sleep(0.5)

    # When a worker runs them (with their retries)
    run_batch(concurrency=2)
    for w in waiters:
        w.join(timeout=30)

    # Then every waiter has the final outcome: not an intermediate failure
    for prefix in ("", "async-"):
        assert results[prefix + flaky.id].status == TaskResultStatus.SUCCESSFUL
        assert results[prefix + flaky.id].return_value == 3
        assert results[prefix + failing.id].status == TaskResultStatus.FAILED
        assert len(results[prefix + failing.id].errors) == 2
        assert results[prefix + echo.id].return_value == real_backend().get_result(echo.id).return_value
