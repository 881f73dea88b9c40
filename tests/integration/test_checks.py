"""check(): conveyor.E001 for bad OPTIONS, conveyor.E002 for an unreachable Redis, and never an exception."""

from __future__ import annotations

import math
from typing import Any

import pytest
from conveyor import RedisBackend
from django.core import checks
from django.core.management import call_command
from django.core.management.base import SystemCheckError

from .conftest import BackendFactory


@pytest.mark.parametrize(
    ("options", "option"),
    [
        ({"URL": "redis://cache:notaport/0"}, "URL"),
        ({"URL": "http://cache:6379/0"}, "URL"),
        ({"URL": "redis://cache/0?db=x"}, "URL"),
        ({"URL": 12}, "URL"),
        ({"NOPE": True}, "NOPE"),
        ({"URL": None, "PORT": "x"}, "PORT"),
        ({"RESULT_TTL": 0}, "RESULT_TTL"),
        ({"FAILED_RESULT_TTL": -1}, "FAILED_RESULT_TTL"),
        ({"SSL_CERT_REQS": "maybe"}, "SSL_CERT_REQS"),
        ({"KEY_PREFIX": "{braces}"}, "KEY_PREFIX"),
        ({"HOST": "cache"}, "URL"),
        ({"CONNECT_TIMEOUT": math.nan}, "CONNECT_TIMEOUT"),
        ({"MAX_CONNECTIONS": 0}, "MAX_CONNECTIONS"),
        ({"ENQUEUE_ON_COMMIT": "yes"}, "ENQUEUE_ON_COMMIT"),
    ],
)
def test_bad_options_are_e001_with_hint_and_option_name(
    make_backend: BackendFactory, options: dict[str, Any], option: str
) -> None:
    """Report each bad option as conveyor.E001 naming it, with a hint, without touching Redis."""
    backend = make_backend(**options)

    errors = backend.check()

    assert [e.id for e in errors] == ["conveyor.E001"]
    [error] = errors
    assert isinstance(error, checks.Error)
    assert f"OPTIONS {option}:" in error.msg
    assert "TASKS['default']" in error.msg
    assert error.hint
    assert error.obj is backend
    assert backend.store._client is None


def test_every_bad_option_is_reported_at_once(make_backend: BackendFactory) -> None:
    """List all problems in one check run, so a deploy needs one fix cycle, not several."""
    backend = make_backend(URL=None, PORT="x", RESULT_TTL=0, SSL_CERT_REQS="maybe", TYPO=1)

    errors = backend.check()

    assert {e.id for e in errors} == {"conveyor.E001"}
    assert len(errors) == 4
    for name in ("PORT", "RESULT_TTL", "SSL_CERT_REQS", "TYPO"):
        assert any(f"OPTIONS {name}:" in e.msg for e in errors), name


@pytest.mark.parametrize(
    "raw", [None, "redis://x", ["URL"], {1: 2}, {"PORT": object()}, {"URL": b"redis://"}]
)
def test_check_never_raises(raw: Any) -> None:
    """Return errors, never raise, whatever OPTIONS holds."""
    backend = RedisBackend("default", {"OPTIONS": raw})

    errors = backend.check()

    assert errors
    assert {e.id for e in errors} == {"conveyor.E001"}


def test_unreachable_host_is_e002_naming_the_url(make_backend: BackendFactory, closed_port: int) -> None:
    """Report a Redis that cannot be reached as conveyor.E002 naming the URL, without its password."""
    backend = make_backend(
        URL=f"redis://:hunter2@127.0.0.1:{closed_port}/3", CONNECT_TIMEOUT=0.5, SOCKET_TIMEOUT=0.5
    )

    [error] = backend.check()

    assert error.id == "conveyor.E002"
    assert f"redis://127.0.0.1:{closed_port}/3" in error.msg
    assert "hunter2" not in error.msg
    assert "USERNAME/PASSWORD" in error.hint


def test_unreachable_host_settings_are_named(make_backend: BackendFactory, closed_port: int) -> None:
    """Name HOST/PORT/DB in E002 when the connection is given as separate options."""
    backend = make_backend(URL=None, HOST="127.0.0.1", PORT=closed_port, DB=2, CONNECT_TIMEOUT=0.5)

    [error] = backend.check()

    assert error.id == "conveyor.E002"
    assert f"redis://127.0.0.1:{closed_port}/2 (OPTIONS HOST/PORT/DB)" in error.msg


def test_healthy_backend_has_no_errors(make_backend: BackendFactory) -> None:
    """Return [] when OPTIONS are valid and Redis answers."""
    assert make_backend().check() == []


def test_django_check_framework_runs_the_backend_check(
    configure_tasks: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    """Surface conveyor's errors through manage.py check (django.tasks registers backend checks)."""
    with configure_tasks(RESULT_TTL=0), pytest.raises(SystemCheckError, match=r"conveyor\.E001"):
        call_command("check")
    with configure_tasks():
        call_command("check")
    assert "no issues" in capsys.readouterr().out
