"""Tasks of the chaos tier (module path tests.chaos.chaos_tasks.*): each execution writes the ledger."""

from __future__ import annotations

import os
import signal
import sqlite3
import time
from typing import Any

from django.tasks import TaskContext, task

from tests.chaos import ledger as ledger_rows


def run_ledgered(context: TaskContext, ledger: str, key: str, seconds: float) -> dict[str, Any]:
    """Record the execution in the ledger around a sleep; return who ran it."""
    result = context.task_result
    worker_id = result.worker_ids[-1] if result.worker_ids else None
    row = ledger_rows.record_start(
        ledger, task_id=result.id, key=key, worker_id=worker_id, attempt=context.attempt
    )
    if seconds > 0:
        time.sleep(seconds)
    ledger_rows.record_end(ledger, row)
    return {"key": key, "pid": os.getpid(), "worker_id": worker_id, "attempt": context.attempt}


@task(takes_context=True)
def ledgered(context: TaskContext, ledger: str, key: str, seconds: float = 0.0) -> dict[str, Any]:
    """Sleep for seconds between two ledger writes; return the key, pid, worker id and attempt."""
    return run_ledgered(context, ledger, key, seconds)


@task(takes_context=True)
def poison_pill(context: TaskContext, ledger: str, key: str, companions: list[str], wait: float) -> None:
    """SIGKILL the worker running this task, once its companions run beside it (or after wait seconds)."""
    result = context.task_result
    ledger_rows.record_start(
        ledger,
        task_id=result.id,
        key=key,
        worker_id=result.worker_ids[-1] if result.worker_ids else None,
        attempt=context.attempt,
    )
    deadline = time.monotonic() + wait
    marks = ",".join("?" * len(companions))
    while time.monotonic() < deadline:
        with sqlite3.connect(f"file:{ledger}?mode=ro", uri=True, timeout=60) as conn:
            (beside,) = conn.execute(
                f"SELECT COUNT(DISTINCT key) FROM executions WHERE pid = ? AND key IN ({marks})",
                (os.getpid(), *companions),
            ).fetchone()
        conn.close()
        if beside >= len(companions):
            break
        time.sleep(0.02)
    time.sleep(0.1)  # let the companions get into their bodies
    os.kill(os.getpid(), signal.SIGKILL)


def not_a_task(ledger: str, key: str) -> None:
    """A plain function beside the tasks: the worker must refuse to call it (it would write the ledger)."""
    ledger_rows.record_start(ledger, task_id="not-a-task", key=key, worker_id=None, attempt=None)
