"""A module the worker must never import: importing it leaves a marker file."""

from __future__ import annotations

import os
from pathlib import Path

_marker = os.environ.get("CONVEYOR_TEST_MARKER")
if _marker:
    Path(_marker).write_text("imported\n")


def run() -> None:
    """Would run if the worker imported this module."""
