"""A Redis that loses tasks silently (eviction, no persistence) is reported by check() and at worker start."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator

import pytest
import redis
from conveyor import RedisBackend
from django.core import checks

from devtools.redis_server import RedisProcess, find_server_binary
from tests import tasks
from tests.conftest import SAVE_POINTS

from .conftest import BackendFactory, start_worker


@pytest.fixture
def server(request: pytest.FixtureRequest) -> Iterator[RedisProcess]:
    """Start a private server with the save points, arguments and default user's ACL rules of the param."""
    save, extra, *acl = request.param
    binary = find_server_binary()
    assert binary, "a redis-server or valkey-server binary is needed"
    started = RedisProcess(binary, save=save, extra_args=extra, lifetime=120)
    started.start()
    if acl:
        redis.Redis(port=started.port).execute_command("ACL", "SETUSER", "default", *acl)
    yield started
    started.stop()


EVICTING = (SAVE_POINTS, ("--maxmemory-policy", "allkeys-lru"))
EPHEMERAL = ("", ("--appendonly", "no"))
BOTH = ("", ("--maxmemory-policy", "volatile-ttl"))
DURABLE_AOF = ("", ("--appendonly", "yes", "--appendfsync", "everysec"))
# An ACL user that may do everything but CONFIG, as on managed Redis services
NO_CONFIG = ("", (), "-config")


def warnings_of(backend: RedisBackend) -> dict[str, str]:
    found = backend.check()
    assert all(isinstance(m, checks.Warning) for m in found), found
    return {m.id or "": m.msg for m in found}


@pytest.mark.parametrize("server", [EVICTING], indirect=True)
def test_check_warns_about_an_evicting_redis(server: RedisProcess, make_backend: BackendFactory) -> None:
    """maxmemory-policy allkeys-lru is conveyor.W001, naming the policy and noeviction."""
    found = warnings_of(make_backend(URL=server.url))

    assert list(found) == ["conveyor.W001"]
    assert "allkeys-lru" in found["conveyor.W001"] and "noeviction" in found["conveyor.W001"]


@pytest.mark.parametrize("server", [EPHEMERAL], indirect=True)
def test_check_warns_about_a_redis_without_persistence(
    server: RedisProcess, make_backend: BackendFactory
) -> None:
    """--save '' --appendonly no is conveyor.W002, naming appendonly."""
    found = warnings_of(make_backend(URL=server.url))

    assert list(found) == ["conveyor.W002"]
    assert "appendonly" in found["conveyor.W002"]


@pytest.mark.parametrize("server", [BOTH], indirect=True)
def test_check_reports_both_risks(server: RedisProcess, make_backend: BackendFactory) -> None:
    """Eviction and no persistence together are two warnings."""
    assert sorted(warnings_of(make_backend(URL=server.url))) == ["conveyor.W001", "conveyor.W002"]


@pytest.mark.parametrize("server", [DURABLE_AOF], indirect=True)
def test_check_is_quiet_with_aof_and_noeviction(server: RedisProcess, make_backend: BackendFactory) -> None:
    """AOF on and noeviction (the default) is nothing to report."""
    assert make_backend(URL=server.url).check() == []


@pytest.mark.parametrize("server", [NO_CONFIG], indirect=True)
def test_check_says_only_at_info_level_when_config_is_refused(
    server: RedisProcess, make_backend: BackendFactory, caplog: pytest.LogCaptureFixture
) -> None:
    """A user without CONFIG gets no warning and no error, and an INFO log line says it was not verified."""
    backend = make_backend(URL=server.url)
    with caplog.at_level(logging.INFO, logger="conveyor"):
        assert backend.check() == []

    assert any("could not verify" in r.getMessage() and r.levelno == logging.INFO for r in caplog.records)


def test_check_of_an_unreachable_redis_reports_only_that(
    make_backend: BackendFactory, closed_port: int
) -> None:
    """With Redis down at check time, the durability check adds nothing to conveyor.E002."""
    found = make_backend(URL=f"redis://127.0.0.1:{closed_port}/0", CONNECT_TIMEOUT=0.5).check()

    assert [m.id for m in found] == ["conveyor.E002"]


def worker_start_records(backend: RedisBackend, caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    """Start a worker, wait until it is ready, stop it; return its conveyor_worker log records."""
    with caplog.at_level(logging.DEBUG, logger="conveyor_worker"):
        worker = start_worker(backend)
        deadline = time.monotonic() + 30
        while not worker.worker.ready and time.monotonic() < deadline:
            time.sleep(0.02)
        assert worker.stop() == 0
        worker.store.close()
    return [r for r in caplog.records if r.name == "conveyor_worker"]


@pytest.mark.parametrize("server", [BOTH], indirect=True)
def test_worker_logs_one_risk_line_at_start(
    server: RedisProcess, make_backend: BackendFactory, caplog: pytest.LogCaptureFixture
) -> None:
    """The worker logs one WARNING line, event redis_durability_risk, with both reasons."""
    records = worker_start_records(make_backend(URL=server.url), caplog)

    [line] = [r for r in records if getattr(r, "event", None) == "redis_durability_risk"]
    assert line.levelno == logging.WARNING
    assert "volatile-ttl" in line.reason and "persistence is off" in line.reason  # type: ignore[attr-defined]


@pytest.mark.parametrize("server", [NO_CONFIG], indirect=True)
def test_worker_logs_unverified_at_info_when_config_is_refused(
    server: RedisProcess, make_backend: BackendFactory, caplog: pytest.LogCaptureFixture
) -> None:
    """CONFIG refused: one INFO line, event redis_durability_unverified, and the worker runs on."""
    records = worker_start_records(make_backend(URL=server.url), caplog)

    events = [getattr(r, "event", None) for r in records]
    assert events.count("redis_durability_unverified") == 1
    assert "redis_durability_risk" not in events
    [line] = [r for r in records if getattr(r, "event", None) == "redis_durability_unverified"]
    assert line.levelno == logging.INFO


@pytest.mark.parametrize("server", [DURABLE_AOF], indirect=True)
def test_worker_is_quiet_about_a_durable_redis(
    server: RedisProcess, make_backend: BackendFactory, caplog: pytest.LogCaptureFixture
) -> None:
    """AOF and noeviction: no durability line at all."""
    records = worker_start_records(make_backend(URL=server.url), caplog)

    assert not [r for r in records if str(getattr(r, "event", "")).startswith("redis_durability")]


def test_a_worker_warns_of_tasks_kept_under_the_other_key_layout(
    make_backend: BackendFactory, caplog: pytest.LogCaptureFixture
) -> None:
    """Tasks enqueued before HASH_TAG_PER_QUEUE was switched are named at start, per queue: they wait."""
    before = make_backend()
    for queue in ("default", "default", "emails"):
        before.enqueue(tasks.noop_task.using(queue_name=queue), (), {})
    after = make_backend(HASH_TAG_PER_QUEUE=True)
    assert after.store.stranded(["default", "emails", "other"]) == {"default": 2, "emails": 1}

    records = worker_start_records(after, caplog)

    [line] = [r for r in records if getattr(r, "event", None) == "tasks_in_other_layout"]
    assert line.levelno == logging.WARNING
    assert line.queues == {"default": 2, "emails": 1}  # type: ignore[attr-defined]
    assert "HASH_TAG_PER_QUEUE off" in line.getMessage()
    # And the other way round: a task enqueued with it on is named by a worker with it off.
    after.enqueue(tasks.noop_task.using(queue_name="emails"), (), {})
    assert before.store.stranded(["default", "emails"]) == {"emails": 1}
