"""Settings: environment and flags into one frozen dataclass; a bad value exits 2 at once."""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Callable
from typing import Any

import pytest
from conveyor_worker.settings import SPEC, QueueSelection, SettingError, WorkerSettings, load_settings

from tests.conftest import ROOT

from .conftest import DEADLINE, worker_env


def _documented_defaults() -> dict[str, tuple[str, str]]:
    """Return env variable -> (flag, default cell) from the table in docs/worker-interface.md."""
    rows = {}
    for line in (ROOT / "docs" / "worker-interface.md").read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 4 and cells[0].startswith("`CONVEYOR_"):
            rows[cells[0].strip("`")] = (cells[1].strip("`"), cells[2])
    return rows


def test_defaults_match_the_interface_document() -> None:
    """Every setting is in the document with its flag, and its documented default is the default."""
    documented = _documented_defaults()
    spec = {env: (name, flag) for name, env, flag, _, _ in SPEC}
    assert set(documented) == set(spec)
    defaults = load_settings([], {})
    for env, (flag, cell) in documented.items():
        name, real_flag = spec[env]
        assert flag == real_flag, env
        literal = re.match(r"`([^`]*)`|(off)$", cell)
        if literal is None:  # derived: the host name plus a suffix, or the project's INSTALLED_APPS
            assert name in ("worker_id", "allowed_task_modules"), env
            continue
        # The documented default, set explicitly, gives the same settings as setting nothing.
        explicit = load_settings([], {env: literal.group(1) or literal.group(2)})
        assert getattr(explicit, name) == getattr(defaults, name), (env, cell)
    assert defaults.worker_id  # host name plus a random suffix
    assert defaults.allowed_task_modules is None  # the project's INSTALLED_APPS, less django.*


def test_flags_win_over_the_environment() -> None:
    """A flag overrides its environment variable; the environment overrides the default."""
    env = {"CONVEYOR_CONCURRENCY": "5", "CONVEYOR_LEASE": "9", "CONVEYOR_BATCH": "no"}
    s = load_settings(["--concurrency", "3", "--batch"], env)
    assert s.concurrency == 3
    assert s.lease == 9.0
    assert s.batch is True


def test_a_flag_wins_even_over_a_bad_environment_value() -> None:
    """The environment value a flag replaces is not even parsed."""
    assert load_settings(["--concurrency", "2"], {"CONVEYOR_CONCURRENCY": "lots"}).concurrency == 2


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("*", QueueSelection()),
        ("high,low", QueueSelection(names=("high", "low"), all_queues=False)),
        ("*,-slow", QueueSelection(excluded=frozenset({"slow"}))),
        (" a , ,b ", QueueSelection(names=("a", "b"), all_queues=False)),
    ],
)
def test_queue_selections(text: str, expected: QueueSelection) -> None:
    """--queues takes names, '*' and '-name' exclusions."""
    assert load_settings(["--queues", text], {}).queues == expected


def test_queue_selection_resolves_against_known_queues() -> None:
    """'*' means every known queue plus named ones, less exclusions."""
    assert QueueSelection(excluded=frozenset({"b"})).resolve({"a", "b", "c"}) == ["a", "c"]
    assert QueueSelection(names=("x",), all_queues=False).resolve({"a"}) == ["x"]


def test_blocking_is_bounded_by_a_quarter_lease() -> None:
    """An idle worker never blocks on Redis longer than a quarter of its lease."""
    assert load_settings(["--lease", "2"], {}).block_seconds == 0.5
    assert load_settings([], {}).block_seconds == 2.0


def test_booleans_accept_the_documented_spellings() -> None:
    """1/true/yes/on and 0/false/no/off, any case."""
    for text in ("1", "true", "YES", "On"):
        assert load_settings([], {"CONVEYOR_BATCH": text}).batch is True
    for text in ("0", "false", "No", "OFF"):
        assert load_settings([], {"CONVEYOR_BATCH": text}).batch is False


def test_settings_are_frozen() -> None:
    """The settings object cannot be changed after parsing."""
    s = WorkerSettings()
    with pytest.raises(AttributeError):
        s.concurrency = 2  # type: ignore[misc]


BAD_VALUES = [
    ("CONVEYOR_CONCURRENCY", "0"),
    ("CONVEYOR_CONCURRENCY", "many"),
    ("CONVEYOR_WORKER_ID", "has space"),
    ("CONVEYOR_WORKER_ID", "x" * 129),
    ("CONVEYOR_BATCH", "maybe"),
    ("CONVEYOR_MAX_TASKS", "-1"),
    ("CONVEYOR_SHUTDOWN_TIMEOUT", "nan"),
    ("CONVEYOR_SHUTDOWN_TIMEOUT", "-1"),
    ("CONVEYOR_LEASE", "0.5"),
    ("CONVEYOR_LEASE", "inf"),
    ("CONVEYOR_HEALTH_PORT", "70000"),
    ("CONVEYOR_HEALTH_PORT", "http"),
    ("CONVEYOR_LOG_FORMAT", "xml"),
    ("CONVEYOR_LOG_LEVEL", "LOUD"),
    ("CONVEYOR_ALLOWED_TASK_MODULES", "tests, not a module"),
    ("CONVEYOR_ALLOWED_TASK_MODULES", " , "),
    ("CONVEYOR_MAX_DELIVERIES", "0"),
    ("CONVEYOR_METRICS_ONLY", "2"),
    ("CONVEYOR_POD_DELETION_COST", "enabled"),
    ("CONVEYOR_QUEUES", ","),
    ("CONVEYOR_QUEUES", "*,-"),
]


@pytest.mark.parametrize(("variable", "value"), BAD_VALUES, ids=[f"{v}={x[:12]}" for v, x in BAD_VALUES])
def test_a_bad_value_raises_naming_the_variable_and_its_flag(variable: str, value: str) -> None:
    """Each bad value is refused with the variable and the flag in the message."""
    with pytest.raises(SettingError, match=rf"^{variable} \(--"):
        load_settings([], {variable: value})


@pytest.mark.subprocess
@pytest.mark.parametrize(
    ("variable", "value"),
    [("CONVEYOR_CONCURRENCY", "many"), ("CONVEYOR_LEASE", "0.5"), ("CONVEYOR_BATCH", "maybe")],
)
def test_the_process_exits_2_with_one_line_naming_a_bad_variable(
    run_cli: Callable[..., Any], variable: str, value: str
) -> None:
    """A bad environment value stops the worker before it connects, with one line on stderr."""
    done = run_cli(**{variable: value})

    assert done.returncode == 2
    assert done.stdout == ""
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith(f"conveyor-worker: {variable} (--")


@pytest.mark.subprocess
def test_a_flag_overrides_a_bad_environment_value_in_the_process(
    backend: object, run_cli: Callable[..., Any]
) -> None:
    """--concurrency 2 wins over CONVEYOR_CONCURRENCY=many: the worker runs (and, with --batch, exits 0)."""
    done = run_cli("--batch", "--concurrency", "2", CONVEYOR_CONCURRENCY="many")
    assert done.returncode == 0, done.stderr
    assert '"concurrency": 2' in done.stdout


@pytest.mark.subprocess
@pytest.mark.parametrize(
    ("env", "fragment"),
    [
        ({"DJANGO_SETTINGS_MODULE": ""}, "DJANGO_SETTINGS_MODULE is not set"),
        ({"DJANGO_SETTINGS_MODULE": "tests.no_such_settings"}, "failed to load"),
        ({"CONVEYOR_BACKEND": "nope"}, "CONVEYOR_BACKEND (--backend) 'nope'"),
        (
            {"CONVEYOR_ALLOWED_TASK_MODULES": "", "CONVEYOR_TEST_ALLOW_LIST": "none"},
            "INSTALLED_APPS has no project app",
        ),
        ({"CONVEYOR_TEST_MAX_ATTEMPTS": "three"}, "TASKS['default'] MAX_ATTEMPTS: MAX_ATTEMPTS must be"),
    ],
    ids=[
        "no-settings-module",
        "bad-settings-module",
        "unknown-backend",
        "empty-allow-list",
        "bad-max-attempts",
    ],
)
def test_project_problems_exit_2_with_one_line(
    redis_url: str, prefix: str, env: dict[str, str], fragment: str
) -> None:
    """A project the worker cannot use is reported in one line, exit 2, before any work."""
    full = worker_env(redis_url, prefix, CONVEYOR_HEALTH_PORT="0")
    for name, value in env.items():
        if value:
            full[name] = value
        else:
            full.pop(name, None)
    done = subprocess.run(
        [sys.executable, "-m", "conveyor_worker"],
        env=full,
        cwd=str(ROOT),
        capture_output=True,
        text=True,
        timeout=DEADLINE,
        check=False,
    )
    assert done.returncode == 2, done.stdout + done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and fragment in lines[0], done.stderr
