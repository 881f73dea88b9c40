"""A task module under the allowed prefix that raises while it is imported (a bug in the user's code)."""

from __future__ import annotations

raise RuntimeError("tests.chaos.raises_on_import fails at import time")
