"""Turn operator values into the text the pages show."""

from __future__ import annotations

import json
from typing import Any


def duration_text(seconds: float | None) -> str:
    """Return a short human duration ("—" for none): "0.4 s", "12 s", "3 min 4 s", "2 h 5 min", "3 d 1 h"."""
    if seconds is None:
        return "—"
    if seconds < 10:
        return f"{max(seconds, 0):.1f} s"
    whole = int(seconds)
    for unit, size, smaller, smaller_size in (("d", 86400, "h", 3600), ("h", 3600, "min", 60)):
        if whole >= size:
            return f"{whole // size} {unit} {whole % size // smaller_size} {smaller}"
    if whole >= 60:
        return f"{whole // 60} min {whole % 60} s"
    return f"{whole} s"


def json_text(value: Any) -> str:
    """Return a value as indented JSON (repr() for what JSON cannot hold)."""
    return json.dumps(value, indent=2, sort_keys=True, ensure_ascii=False, default=repr)


def short_error(exception_path: str | None) -> str:
    """Return an exception class path without its module ("—" for none)."""
    if not exception_path:
        return "—"
    return exception_path.rsplit(".", 1)[-1]
