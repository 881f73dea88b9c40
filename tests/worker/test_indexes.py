"""The finished-task indexes: every worker's maintenance trims them as results expire."""

from __future__ import annotations

from django.test import override_settings

from tests import tasks
from tests.conftest import tasks_setting

from .conftest import WorkerFactory, real_backend, wait_finished, wait_until, zscore


def test_finished_tasks_leave_their_index_once_their_results_expire(
    backend: object, make_worker: WorkerFactory, redis_url: str, prefix: str
) -> None:
    """Given RESULT_TTL=1 and a long FAILED_RESULT_TTL, the success leaves its index, the failure stays."""
    with override_settings(TASKS=tasks_setting(redis_url, prefix, RESULT_TTL=1, FAILED_RESULT_TTL=3600)):
        b = real_backend()
        succeeded, failed = b.keys.succeeded("default"), b.keys.failed("default")
        ok = tasks.noop_task.enqueue()
        bad = tasks.failing_task_value_error.enqueue()
        handle = make_worker(lease=2.0).start()  # reclaims, and trims, every half second
        wait_finished(b, ok.id)
        wait_finished(b, bad.id)

        # When: the success's result expires, the next trim drops its index entry.
        wait_until(lambda: zscore(b, succeeded, ok.id) is None, what="the success to leave its index")
        record = b.keys.task(ok.id)
        wait_until(lambda: b.store.call(lambda c: c.exists(record)) == 0, what="its record to expire")

        # Then: the failure, whose result is kept an hour, is still indexed.
        assert zscore(b, failed, bad.id) is not None
        assert handle.stop() == 0
