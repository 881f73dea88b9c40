"""Read the `# --` comments of the chart's values.yaml (helm-docs convention) into documented paths."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import yaml

KEY_RE = re.compile(r"^(?P<indent> *)(?P<key>[A-Za-z0-9_]+):(?P<rest>.*)$")


@dataclass(frozen=True, slots=True, kw_only=True)
class DocumentedValue:
    """One value and the comment above it."""

    path: str
    description: str
    default: object


def _lookup(values: dict[str, object], path: str) -> object:
    node: object = values
    for part in path.split("."):
        assert isinstance(node, dict)
        node = node[part]
    return node


def documented_values(values_file: Path) -> tuple[list[DocumentedValue], list[str]]:
    """Return the documented values and the paths of leaves that carry no `# --` comment.

    A key with a `# --` comment is documented with everything under it; a key without one must be a
    mapping whose every key is documented.
    """
    values = yaml.safe_load(values_file.read_text())
    documented: list[DocumentedValue] = []
    undocumented: list[str] = []
    stack: list[tuple[int, str, bool]] = []  # indent, key, documented
    comment: list[str] = []
    for line in values_file.read_text().splitlines():
        stripped = line.strip()
        if stripped.startswith("# -- "):
            comment = [stripped[5:]]
            continue
        if stripped.startswith("#") and comment:
            comment.append(stripped.lstrip("# "))
            continue
        match = KEY_RE.match(line)
        if not match:
            if stripped and not stripped.startswith("#"):
                comment = []
            continue
        indent = len(match["indent"])
        while stack and stack[-1][0] >= indent:
            stack.pop()
        inherited = any(doc for _, _, doc in stack)
        path = ".".join([key for _, key, _ in stack] + [match["key"]])
        if comment and not inherited:
            documented.append(
                DocumentedValue(path=path, description=" ".join(comment), default=_lookup(values, path))
            )
        elif not inherited:
            node = _lookup(values, path)
            if not isinstance(node, dict) or not node:
                undocumented.append(path)
        stack.append((indent, match["key"], bool(comment) or inherited))
        comment = []
    return documented, undocumented
