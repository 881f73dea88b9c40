"""The record schema is one table (codec.SCHEMA): every writer keeps to it and the README shows it."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from importlib import resources

import pytest
from conveyor import codec

from tests.conftest import ROOT

# Fields of hashes that are not task records: {P}:reclaim, and a schedule entry (tick.lua, whose
# task record is written by _lib.lua's store_ready_task from codec.new_record, as enqueue's).
NOT_TASK_FIELDS = {"tick", "hold", "next", "fp", "skipped", "last_id", "last_at"}
WRITES = re.compile(r"redis\.call\('(HSET|HSETNX|HINCRBY|HDEL)',\s*(.*?)\)\n", re.DOTALL)


def fields_written_by_scripts() -> dict[str, set[str]]:
    """Return transition -> field names its script writes by name (HSET, HSETNX, HINCRBY, HDEL)."""
    written: dict[str, set[str]] = {}
    for script in (resources.files("conveyor") / "scripts").iterdir():
        if script.name.endswith(".lua") and not script.name.startswith("_"):
            text = script.read_text()
            names = {n for m in WRITES.finditer(text) for n in re.findall(r"'([a-z_]+)'", m.group(2))}
            written[script.name.removesuffix(".lua")] = names - NOT_TASK_FIELDS
    return written


def test_every_field_a_script_writes_is_in_the_schema_with_that_script() -> None:
    """A script writing a field the table does not name, or does not list it for, fails here."""
    for transition, names in fields_written_by_scripts().items():
        for name in names:
            assert name in codec.SCHEMA_BY_NAME, f"{transition}.lua writes {name!r}, not in codec.SCHEMA"
            assert transition in codec.SCHEMA_BY_NAME[name].written_by, (transition, name)


@pytest.mark.parametrize(
    ("transition", "fields"),
    [
        (
            "enqueue",
            codec.new_record(
                task_path="a.b",
                queue="q",
                priority=0,
                backend="default",
                run_after=datetime.now(UTC),
                args_json="[]",
                kwargs_json="{}",
                enqueued_at=datetime.now(UTC),
            ),
        ),
        ("finish", codec.success_fields(datetime.now(UTC), "1")),
        ("finish", codec.failure_fields(datetime.now(UTC), [])),
        ("retry", codec.retry_fields([])),
    ],
)
def test_fields_codec_builds_are_in_the_schema(transition: str, fields: dict[str, str]) -> None:
    """The fields Python hands a script (enqueue's record, finish's and retry's outcome) are in the table."""
    for name in fields:
        assert transition in codec.SCHEMA_BY_NAME[name].written_by, (transition, name)


def test_the_readme_shows_the_schema_table() -> None:
    """The README's table of task hash fields is codec.schema_table(), word for word."""
    assert codec.schema_table() in (ROOT / "README.md").read_text()
