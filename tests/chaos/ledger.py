"""The chaos ledger: one SQLite row per execution of a task body, written by the task itself.

Tasks run in worker subprocesses that may be SIGKILLed or SIGSTOPped at any instant, so the
ledger is a SQLite file in WAL mode written in autocommit: a row is inserted when the body
starts and its end time set when the body returns. A row without an end is an execution
that was cut off (its process was killed). Wall-clock times order executions for people;
CLOCK_MONOTONIC times (one clock for every process of the machine on Linux) decide overlaps.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SCHEMA = """
CREATE TABLE IF NOT EXISTS executions (
    row INTEGER PRIMARY KEY AUTOINCREMENT,
    task_id TEXT NOT NULL,
    key TEXT NOT NULL,
    pid INTEGER NOT NULL,
    worker_id TEXT,
    attempt INTEGER,
    started REAL NOT NULL,
    ended REAL,
    started_mono REAL NOT NULL,
    ended_mono REAL
);
CREATE INDEX IF NOT EXISTS executions_task ON executions (task_id);
CREATE INDEX IF NOT EXISTS executions_key ON executions (key);
"""
BUSY_TIMEOUT = 120.0  # seconds a writer waits for the lock (a frozen writer holds it at most briefly)

_local = threading.local()


def create(path: Path) -> Path:
    """Create an empty ledger in WAL mode; return its path."""
    with sqlite3.connect(path, timeout=BUSY_TIMEOUT) as conn:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.executescript(SCHEMA)
    conn.close()
    return path


def _writer(path: str) -> sqlite3.Connection:
    """Return this thread's autocommit connection to a ledger (one per thread and file)."""
    conns: dict[str, sqlite3.Connection] = getattr(_local, "conns", None) or {}
    _local.conns = conns
    conn = conns.get(path)
    if conn is None:
        conn = sqlite3.connect(path, timeout=BUSY_TIMEOUT, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL survives a killed process
        conns[path] = conn
    return conn


def record_start(path: str, *, task_id: str, key: str, worker_id: str | None, attempt: int | None) -> int:
    """Insert the row of an execution that starts now; return its row id (called by tasks)."""
    cursor = _writer(path).execute(
        "INSERT INTO executions (task_id, key, pid, worker_id, attempt, started, started_mono)"
        " VALUES (?, ?, ?, ?, ?, ?, ?)",
        (task_id, key, os.getpid(), worker_id, attempt, time.time(), time.monotonic()),
    )
    row = cursor.lastrowid
    assert row is not None
    return row


def record_end(path: str, row: int) -> None:
    """Set the end time of an execution (called by tasks when the body returns)."""
    _writer(path).execute(
        "UPDATE executions SET ended = ?, ended_mono = ? WHERE row = ?",
        (time.time(), time.monotonic(), row),
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class Execution:
    """One row of the ledger."""

    row: int
    task_id: str
    key: str
    pid: int
    worker_id: str | None
    attempt: int | None
    started: float
    ended: float | None
    started_mono: float
    ended_mono: float | None

    @property
    def finished(self) -> bool:
        """Tell whether the body returned (False: its process was killed or is still running it)."""
        return self.ended is not None


@dataclass(frozen=True, slots=True)
class Ledger:
    """Read a ledger from the test process."""

    path: Path

    def _query(self, sql: str, params: tuple[Any, ...] = ()) -> list[Any]:
        conn = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, timeout=BUSY_TIMEOUT)
        try:
            return conn.execute(sql, params).fetchall()
        finally:
            conn.close()

    def executions(self) -> list[Execution]:
        """Return every execution in the order they started."""
        rows = self._query(
            "SELECT row, task_id, key, pid, worker_id, attempt, started, ended, started_mono, ended_mono"
            " FROM executions ORDER BY row"
        )
        return [
            Execution(
                row=r[0],
                task_id=r[1],
                key=r[2],
                pid=r[3],
                worker_id=r[4],
                attempt=r[5],
                started=r[6],
                ended=r[7],
                started_mono=r[8],
                ended_mono=r[9],
            )
            for r in rows
        ]

    def by_task(self) -> dict[str, list[Execution]]:
        """Return the executions of each task id, in the order they started."""
        grouped: dict[str, list[Execution]] = defaultdict(list)
        for execution in self.executions():
            grouped[execution.task_id].append(execution)
        return dict(grouped)

    def by_key(self) -> dict[str, list[Execution]]:
        """Return the executions of each test-chosen key, in the order they started."""
        grouped: dict[str, list[Execution]] = defaultdict(list)
        for execution in self.executions():
            grouped[execution.key].append(execution)
        return dict(grouped)

    def count(self, *, finished: bool = False) -> int:
        """Return how many executions started (or, with finished=True, returned)."""
        where = " WHERE ended IS NOT NULL" if finished else ""
        return int(self._query(f"SELECT COUNT(*) FROM executions{where}")[0][0])

    def pids(self) -> set[int]:
        """Return the pids of every process that ran something."""
        return {r[0] for r in self._query("SELECT DISTINCT pid FROM executions")}

    def started_after(self, moment: float) -> list[Execution]:
        """Return the executions whose body started after a wall-clock moment."""
        return [e for e in self.executions() if e.started > moment]


def overlapping(
    executions: list[Execution], deaths: Mapping[int, float], now_mono: float
) -> list[tuple[Execution, Execution]]:
    """Return pairs of executions (of one task) whose bodies ran at the same time.

    An execution without an end ran until its process died (deaths: pid -> monotonic time
    by which the test had seen it dead), or is still running (until now_mono).
    """
    pairs = []
    ordered = sorted(executions, key=lambda e: e.started_mono)
    for i, first in enumerate(ordered):
        end = first.ended_mono if first.ended_mono is not None else deaths.get(first.pid, now_mono)
        pairs.extend((first, later) for later in ordered[i + 1 :] if later.started_mono < end)
    return pairs
