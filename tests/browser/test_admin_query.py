"""The admin's query strings and display text, without Redis."""

from __future__ import annotations

from urllib.parse import parse_qsl

import pytest
from conveyor.contrib.admin.display import duration_text, json_text, short_error
from conveyor.contrib.admin.query import BackendChoice, ListQuery
from django.http import QueryDict

DEFAULT = BackendChoice(alias="default", aliases=("default", "other"))
OTHER = BackendChoice(alias="other", aliases=("default", "other"))


def test_query_round_trips_and_drops_bad_values() -> None:
    query = ListQuery.from_params(
        QueryDict("queue=emails&status=FAILED&task=app.tasks.send&cursor=17.abc&q=+"), DEFAULT
    )
    assert (query.queue, query.status, query.task, query.cursor, query.search) == (
        "emails",
        "FAILED",
        "app.tasks.send",
        "17.abc",
        None,
    )
    assert ListQuery.from_params(QueryDict("status=BOGUS"), DEFAULT).status is None
    assert dict(parse_qsl(query.url()[1:])) == {
        "queue": "emails",
        "status": "FAILED",
        "task": "app.tasks.send",
        "cursor": "17.abc",
    }


def test_changing_a_filter_goes_back_to_the_first_page() -> None:
    query = ListQuery(backend=OTHER, queue="emails", cursor="17.abc")
    assert query.url(status="READY") == "?backend=other&queue=emails&status=READY"
    assert query.url(cursor="9.x") == "?backend=other&queue=emails&cursor=9.x"
    assert query.url(queue=None) == "?backend=other"
    choices = query.filter_choices("queue", [("emails", "emails"), ("default", "default")])
    assert [(c.label, c.selected) for c in choices] == [("All", False), ("emails", True), ("default", False)]
    assert query.kept_params("task", "cursor", "q") == [("backend", "other"), ("queue", "emails")]


def test_backend_suffix_only_for_a_non_default_backend() -> None:
    assert DEFAULT.suffix == ""
    assert OTHER.suffix == "?backend=other"


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (None, "—"),
        (0.42, "0.4 s"),
        (12.9, "12 s"),
        (184, "3 min 4 s"),
        (7500, "2 h 5 min"),
        (90000, "1 d 1 h"),
    ],
)
def test_duration_text(seconds: float | None, text: str) -> None:
    assert duration_text(seconds) == text


def test_json_and_error_text() -> None:
    assert json_text({"b": [1], "a": "é"}) == '{\n  "a": "é",\n  "b": [\n    1\n  ]\n}'
    assert json_text({1, 2}).startswith('"{')  # repr() of what JSON cannot hold
    assert short_error("builtins.ZeroDivisionError") == "ZeroDivisionError"
    assert short_error(None) == "—"
