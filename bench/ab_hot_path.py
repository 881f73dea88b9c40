"""Time the worker's and the web side's per-call Python work in two source trees, for an A/B of a change.

Run: .venv/bin/python bench/ab_hot_path.py TREE [--number 20000]
(TREE: a checkout, e.g. one made with `git worktree add /tmp/old REV`; run it for the old tree
and this one in turns.) No Redis is needed: it times building the script calls of enqueue, claim
and finish and parsing a claim's reply, the best of 7 repeats, in microseconds per call.
"""

from __future__ import annotations

import argparse
import sys
import timeit
from typing import Any


def main() -> None:
    """Time the calls of the tree given and print one line per call."""
    parser = argparse.ArgumentParser()
    parser.add_argument("tree")
    parser.add_argument("--number", type=int, default=20000)
    opts = parser.parse_args()
    sys.path[:0] = [f"{opts.tree}/backend", f"{opts.tree}/worker", opts.tree]
    from conveyor.keys import Keys
    from conveyor.options import parse_options
    from conveyor.store import Store

    store: Any = Store(parse_options({"URL": "redis://127.0.0.1:1/0"})[0], Keys("conveyor"))
    queues = ["default"]
    task_id = "abcdefghijklmnopqrstuvwxyz012345"
    record = {"task": "x", "args": "[]", "kwargs": "{}", "status": "READY"}
    result = {"finished_at": "1", "result": "null"}
    reply = [b"id1", 0, [b"status", b"RUNNING"], b"id2", 0, [b"status", b"RUNNING"], 3]
    if hasattr(store, "claim_calls"):
        claim = lambda: store.claim_calls(queues, "w", 30_000, 8, "w:1")  # noqa: E731
        sent = store.claim_calls(queues, "w", 30_000, 8, "w:1")
        parse = lambda: store.parse_claimed([reply], sent, queues)  # noqa: E731
    else:  # before per-queue hash tags: one claim call
        claim = lambda: store.claim_call(queues, "w", 30_000, 8, "w:1")  # noqa: E731
        parse = lambda: store.parse_claimed(reply, queues)  # noqa: E731
    calls = {
        "enqueue call": lambda: store._enqueue_call(task_id, "default", 0, None, record, None),
        "finish call": lambda: store.finish_call(task_id, "default", "w#1", "SUCCESSFUL", 60, result),
        "claim call": claim,
        "claim reply": parse,
    }
    for name, fn in calls.items():
        best = min(timeit.repeat(fn, number=opts.number, repeat=7)) / opts.number * 1e6
        print(f"{name}: {best:.3f} us")


if __name__ == "__main__":
    main()
