"""_lib.lua, the encodings every script shares, agrees with Python's (run by the real server's Lua)."""

from __future__ import annotations

import json
from typing import Any

import pytest
import redis
from conveyor import codec
from conveyor.transport import script_library


@pytest.fixture
def client(redis_url: str) -> Any:
    c = redis.Redis.from_url(redis_url, decode_responses=True)
    yield c
    c.close()


def lua(client: Any, body: str, *args: Any) -> Any:
    """Evaluate body after _lib.lua (as every bundled script runs), with ARGV = args."""
    return client.eval(script_library() + body, 0, *args)


@pytest.mark.parametrize(("priority", "seq"), [(100, 1), (0, 1), (-100, 1), (42, 2**40), (-100, 2**44 - 1)])
def test_the_ready_score_is_the_same_in_lua_and_python(client: Any, priority: int, seq: int) -> None:
    """enqueue.lua and promote.lua score a task exactly as codec.ready_score does."""
    scored = lua(client, "return ready_score(ARGV[1], ARGV[2])", priority, seq)
    assert int(scored) == codec.ready_score(priority, seq)


def test_higher_priority_scores_lower_and_order_holds_within_one() -> None:
    """ZPOPMIN takes the highest priority first, and the oldest within a priority."""
    assert codec.ready_score(100, 2**44 - 1) < codec.ready_score(99, 1)
    assert codec.ready_score(0, 1) < codec.ready_score(0, 2)
    assert codec.ready_score(-100, 2**44 - 1) < 2**53  # exact as a double score


LISTS: list[list[Any]] = [[], ["w-1"], ["w-1", "w:2"], [{"a": 1}], [{"a": 1}, {"b": [2, "x"]}]]


@pytest.mark.parametrize("items", LISTS)
def test_appending_to_a_json_list_matches_python(client: Any, items: list[Any]) -> None:
    """Appending an item to a stored list (worker_ids, errors) gives the longer list, as Python reads it."""
    new = {"exception_class_path": "conveyor.exceptions.WorkerLost", "traceback": 'lost "w" \\ é/ here\n'}
    append = "return json_list_append(ARGV[1], cjson.encode(cjson.decode(ARGV[2])))"
    assert json.loads(lua(client, append, codec.dumps(items), json.dumps(new))) == [*items, new]


def test_appending_to_a_missing_list_starts_one(client: Any) -> None:
    """A record without the field yet (HGET gives false) gets a one-item list."""
    assert lua(client, "return json_list_append(false, json_worker_id(ARGV[1]))", "w-1") == '["w-1"]'


@pytest.mark.parametrize("ids", [["w-1"], ["w-0", "w-1"], ["w-1", "w-0", "w-1"]])
def test_a_worker_id_appended_then_dropped_gives_the_list_back(client: Any, ids: list[str]) -> None:
    """claim.lua appends this worker's id; release and postpone drop it from the end again."""
    appended = lua(
        client, "return json_list_append(ARGV[1], json_worker_id(ARGV[2]))", codec.dumps(ids), "w-9"
    )
    assert appended == codec.dumps([*ids, "w-9"])
    dropped = lua(client, "return json_list_drop_last(ARGV[1], json_worker_id(ARGV[2]))", appended, "w-9")
    assert dropped == codec.dumps(ids)


def test_dropping_an_id_that_is_not_last_changes_nothing(client: Any) -> None:
    """Only the id this delivery appended, at the end, is taken back."""
    kept = lua(
        client,
        "return json_list_drop_last(ARGV[1], json_worker_id(ARGV[2])) or 'kept'",
        '["w-9","w-1"]',
        "w-9",
    )
    assert kept == "kept"
    emptied = lua(client, "return json_list_drop_last(ARGV[1], json_worker_id(ARGV[2]))", '["w-9"]', "w-9")
    assert emptied == "[]"
