"""The README's first command: the demo runs every feature end to end and says so."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_the_demo_runs_every_feature_and_ends_well(tmp_path: Path) -> None:
    """example/demo.py on its own Redis: web, worker, bulk, waiting, unique, periodic, status; exit 0."""
    env = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "DJANGO_SETTINGS_MODULE")}
    env["TMPDIR"] = str(tmp_path)
    done = subprocess.run(
        [sys.executable, str(ROOT / "example" / "demo.py")],
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    out = done.stdout
    assert done.returncode == 0, out[-4000:] + done.stderr[-2000:]
    for shown in (
        "wait_result(add.enqueue(20, 22))  -> 42",
        "all ran, sum 999,000",
        "enqueued twice while waiting -> one task; again once it ran -> a new task",
        "last tick 'tick: every 2 s'",
        "$ manage.py conveyor schedules",
        "$ manage.py conveyor status",
        "demo: all tasks reached the expected state",
    ):
        assert shown in out, f"{shown!r} missing from the demo's output:\n{out[-4000:]}"
