"""A task module that raises while it is imported (a bug in the user's code)."""

from __future__ import annotations

raise RuntimeError("this module fails at import time")
