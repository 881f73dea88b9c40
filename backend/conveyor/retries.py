"""Django's proposed retry API (new-features #142): how many attempts a task gets, and when the next runs.

A task's own settings win over its backend's: max_attempts over MAX_ATTEMPTS; backoff, or
retry_backoff/retry_backoff_max, over BACKOFF. MAX_ATTEMPTS and BACKOFF sit at the top level of
TASKS[alias], beside BACKEND, where the proposal puts them. The worker calls the backoff.
"""

from __future__ import annotations

import inspect
import random
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any

from django.tasks.base import Task, TaskResult, TaskResultStatus

from .exceptions import BackoffFailed
from .options import Problem

TOP_LEVEL_SETTINGS = ("MAX_ATTEMPTS", "BACKOFF")
DEFAULT_MAX_ATTEMPTS = 1
DEFAULT_RETRY_BACKOFF = 1.0  # seconds before the first retry of conveyor's own exponential backoff
DEFAULT_RETRY_BACKOFF_MAX = 300.0  # its cap, before jitter
# A delay beyond a year is a bug in the backoff, not a plan; refusing it also keeps due times exact.
BACKOFF_MAX_SECONDS = 366 * 86_400.0

Backoff = Callable[..., Any]  # (exception, task_result) -> seconds | timedelta | None; or (task_result)


@dataclass(frozen=True, slots=True, kw_only=True)
class RetryDefaults:
    """The backend's MAX_ATTEMPTS and BACKOFF, for tasks that do not set their own."""

    max_attempts: int = DEFAULT_MAX_ATTEMPTS
    backoff: Backoff | None = None  # None: conveyor's exponential backoff with jitter


def backoff_arity(backoff: Any) -> int:
    """Return the positional arguments a backoff takes: 2 (exception, task_result), 1 (task_result) or 0."""
    try:
        signature = inspect.signature(backoff)
    except (TypeError, ValueError):  # some builtins have no signature: call them the proposal's way
        return 2
    for arity in (2, 1):
        try:
            signature.bind(*([None] * arity))
        except TypeError:
            continue
        return arity
    return 0


def backoff_problem(backoff: Any) -> str | None:
    """Return why a backoff cannot be used, or None when it can."""
    if not callable(backoff):
        return f"backoff must be a function of (exception, task_result), not {type(backoff).__name__}"
    if inspect.iscoroutinefunction(backoff):
        return "backoff must be a plain function; the worker does not await it"
    if backoff_arity(backoff) == 0:
        return "backoff must accept (exception, task_result), or (task_result) alone"
    return None


def max_attempts_problem(value: Any) -> str | None:
    """Return why a number of attempts cannot be used, or None when it can."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        return f"must be a whole number of at least 1, not {value!r}"
    return None


def parse_retry_defaults(params: dict[str, Any]) -> tuple[RetryDefaults, list[Problem]]:
    """Read MAX_ATTEMPTS and BACKOFF from a TASKS entry; return usable defaults and every problem."""
    problems: list[Problem] = []
    values: dict[str, Any] = {}
    if "MAX_ATTEMPTS" in params:
        reason = max_attempts_problem(params["MAX_ATTEMPTS"])
        if reason:
            problems.append(
                Problem(
                    option="MAX_ATTEMPTS",
                    message=f"MAX_ATTEMPTS {reason}.",
                    hint="Set MAX_ATTEMPTS to the attempts a task gets in all (1 = no retry).",
                    top_level=True,
                )
            )
        else:
            values["max_attempts"] = params["MAX_ATTEMPTS"]
    if params.get("BACKOFF") is not None:
        reason = backoff_problem(params["BACKOFF"])
        if reason:
            problems.append(
                Problem(
                    option="BACKOFF",
                    message=f"BACKOFF: {reason}.",
                    hint="Set BACKOFF to a function (exception, task_result) -> seconds or None, or omit it.",
                    top_level=True,
                )
            )
        else:
            values["backoff"] = params["BACKOFF"]
    return RetryDefaults(**values), problems


def sets_exponential_backoff(task: Task) -> bool:
    """Tell whether a task gives conveyor's own retry_backoff or retry_backoff_max."""
    return (
        getattr(task, "retry_backoff", None) is not None
        or getattr(task, "retry_backoff_max", None) is not None
    )


def max_attempts_for(task: Task, defaults: RetryDefaults) -> int:
    """Return the attempts a task gets in all: its own max_attempts, else the backend's MAX_ATTEMPTS."""
    own = getattr(task, "max_attempts", None)
    return defaults.max_attempts if own is None else int(own)


def backoff_for(task: Task, defaults: RetryDefaults) -> Backoff | None:
    """Return the backoff function deciding a task's retries, or None for conveyor's exponential backoff."""
    own = getattr(task, "backoff", None)
    if own is not None:
        return own  # type: ignore[no-any-return]
    if sets_exponential_backoff(task):
        return None
    return defaults.backoff


def exponential_backoff(task: Task, failures: int) -> float:
    """Return conveyor's jittered exponential delay before the next attempt (retry_backoff, ..._max)."""
    base = getattr(task, "retry_backoff", None)
    cap = getattr(task, "retry_backoff_max", None)
    base = DEFAULT_RETRY_BACKOFF if base is None else float(base)
    cap = DEFAULT_RETRY_BACKOFF_MAX if cap is None else float(cap)
    delay = min(cap, base * 2 ** max(0, failures - 1))
    return float(delay / 2 + random.uniform(0, delay / 2))


def failed_view(result: TaskResult) -> TaskResult:
    """Return a copy of a result as its failed attempt left it, for a backoff to read (not to change)."""
    view = replace(
        result,
        status=TaskResultStatus.FAILED,
        finished_at=datetime.now(UTC),
        errors=list(result.errors),
        worker_ids=list(result.worker_ids),
    )
    return view


def call_backoff(backoff: Backoff, exc: BaseException, task_result: TaskResult) -> float | None:
    """Call a backoff; return seconds before the next attempt, or None for no retry.

    Raise BackoffFailed, chained to the cause, when it raises or returns anything else.
    """
    name = getattr(backoff, "__qualname__", None) or repr(backoff)
    try:
        value = backoff(exc, task_result) if backoff_arity(backoff) == 2 else backoff(task_result)
    except BaseException as error:  # the project's code, like the task: record what it raised
        raise BackoffFailed(f"backoff {name} raised {error!r}; the task is not retried") from error
    if value is None:
        return None
    if isinstance(value, timedelta):
        seconds: Any = value.total_seconds()
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        seconds = float(value)
    else:
        if inspect.iscoroutine(value):
            value.close()  # never awaited: close it rather than leave a warning behind
        seconds = None
    if seconds is None or not 0 <= seconds <= BACKOFF_MAX_SECONDS:  # also refuses NaN
        raise BackoffFailed(
            f"backoff {name} returned {value!r}; it must return seconds (a number or a timedelta, "
            f"0 to {BACKOFF_MAX_SECONDS:.0f}) or None; the task is not retried"
        )
    return float(seconds)
