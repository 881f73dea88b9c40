"""What a page asks for: which conveyor backend, and the task list's filters, search and position."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, fields, replace
from typing import get_args
from urllib.parse import parse_qsl, urlencode

from django.http import Http404, QueryDict
from django.tasks import DEFAULT_TASK_BACKEND_ALIAS, task_backends
from django.tasks.exceptions import InvalidTaskBackend

from conveyor.backend import RedisBackend
from conveyor.ops import StatusName

STATUSES: tuple[StatusName, ...] = get_args(StatusName)


def conveyor_aliases() -> tuple[str, ...]:
    """Return the TASKS aliases whose backend is a conveyor RedisBackend, in settings order."""
    aliases = []
    for alias in task_backends.settings:
        try:
            backend = task_backends[alias]
        except InvalidTaskBackend:
            continue  # Django's own checks report it
        if isinstance(backend, RedisBackend):
            aliases.append(alias)
    return tuple(aliases)


@dataclass(frozen=True, slots=True, kw_only=True)
class BackendChoice:
    """The conveyor backend a page works on, and the others it could switch to."""

    alias: str
    aliases: tuple[str, ...]

    @classmethod
    def from_params(cls, params: QueryDict) -> BackendChoice:
        """Return the backend named by ?backend= (default: "default", else the first); 404 for another."""
        aliases = conveyor_aliases()
        if not aliases:
            raise Http404("No conveyor backend is configured in TASKS.")
        asked = params.get("backend")
        if asked is None:
            asked = DEFAULT_TASK_BACKEND_ALIAS if DEFAULT_TASK_BACKEND_ALIAS in aliases else aliases[0]
        if asked not in aliases:
            raise Http404(f"No conveyor backend is named {asked!r}.")
        return cls(alias=asked, aliases=aliases)

    @property
    def is_default(self) -> bool:
        """Tell whether links may leave ?backend= out."""
        default = (
            DEFAULT_TASK_BACKEND_ALIAS if DEFAULT_TASK_BACKEND_ALIAS in self.aliases else self.aliases[0]
        )
        return self.alias == default

    @property
    def backend(self) -> RedisBackend:
        """Return this thread's backend object for the alias."""
        backend = task_backends[self.alias]
        assert isinstance(backend, RedisBackend)
        return backend

    @property
    def suffix(self) -> str:
        """Return the query string that keeps this backend on a link ('' for the default one)."""
        return "" if self.is_default else "?" + urlencode({"backend": self.alias})


@dataclass(frozen=True, slots=True, kw_only=True)
class FilterChoice:
    """One link of a filter in the list's sidebar."""

    label: str
    url: str
    selected: bool


@dataclass(frozen=True, slots=True, kw_only=True)
class ListQuery:
    """The task list's filters, id search and cursor, as read from (and written back to) the query string."""

    backend: BackendChoice
    queue: str | None = None
    status: StatusName | None = None
    task: str | None = None
    search: str | None = None
    cursor: str | None = None

    @classmethod
    def from_params(cls, params: QueryDict, backend: BackendChoice) -> ListQuery:
        """Read the query string; an unknown status or a blank value counts as no filter."""

        def text(name: str) -> str | None:
            value = params.get(name, "").strip()
            return value or None

        status = text("status")
        return cls(
            backend=backend,
            queue=text("queue"),
            status=next((s for s in STATUSES if s == status), None),
            task=text("task"),
            search=text("q"),
            cursor=text("cursor"),
        )

    @property
    def has_filters(self) -> bool:
        """Tell whether a filter or a search narrows the list."""
        return any((self.queue, self.status, self.task, self.search))

    def with_changes(self, **changes: str | None) -> ListQuery:
        """Return this query with fields changed; changing a filter goes back to the first page."""
        if "cursor" not in changes:
            changes = {**changes, "cursor": None}
        return replace(self, **changes)  # type: ignore[arg-type]

    def url(self, **changes: str | None) -> str:
        """Return the query string ("?..." or "?") of this query with fields changed."""
        query = self.with_changes(**changes) if changes else self
        pairs: list[tuple[str, str]] = []
        if not query.backend.is_default:
            pairs.append(("backend", query.backend.alias))
        names = {"search": "q"}
        for field in fields(query):
            value = getattr(query, field.name)
            if field.name != "backend" and value:
                pairs.append((names.get(field.name, field.name), value))
        return "?" + urlencode(pairs)

    def filter_choices(self, name: str, values: Iterable[tuple[str, str]]) -> tuple[FilterChoice, ...]:
        """Return a filter's links, "All" first, from (value, label) pairs."""
        current = getattr(self, name)
        return (
            FilterChoice(label="All", url=self.url(**{name: None}), selected=current is None),
            *(
                FilterChoice(label=label, url=self.url(**{name: value}), selected=current == value)
                for value, label in values
            ),
        )

    def kept_params(self, *dropped: str) -> list[tuple[str, str]]:
        """Return the (name, value) pairs a GET form must carry as hidden fields, less some."""
        return [(k, v) for k, v in parse_qsl(self.url()[1:]) if k not in dropped]
