"""Composition root: settings -> Django -> logging -> store -> worker -> probes -> run."""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import logging
import os
import signal
import sys
import threading
from collections.abc import Sequence
from types import FrameType
from typing import TYPE_CHECKING

from .settings import WorkerSettings, fail, load_or_exit

if TYPE_CHECKING:
    from conveyor.backend import RedisBackend
    from conveyor.store import Store

    from .exporter import Exporter
    from .loop import Worker
    from .probes import Probes

logger = logging.getLogger("conveyor_worker")


def _setup_django(settings: WorkerSettings) -> RedisBackend:
    if not os.environ.get("DJANGO_SETTINGS_MODULE"):
        fail("DJANGO_SETTINGS_MODULE is not set; point it at your project's settings module")
    import django
    from django.tasks import task_backends
    from django.tasks.exceptions import InvalidTaskBackend

    try:
        django.setup()
    except Exception as exc:
        fail(f"DJANGO_SETTINGS_MODULE={os.environ['DJANGO_SETTINGS_MODULE']} failed to load: {exc}")
    from conveyor.backend import RedisBackend

    try:
        backend = task_backends[settings.backend]
    except InvalidTaskBackend as exc:
        fail(f"CONVEYOR_BACKEND (--backend) {settings.backend!r}: {exc}")
    if not isinstance(backend, RedisBackend):
        fail(f"CONVEYOR_BACKEND (--backend) {settings.backend!r} is not a conveyor.RedisBackend")
    if backend.problems:
        fail("; ".join(f"TASKS[{settings.backend!r}] {p.setting}: {p.message}" for p in backend.problems))
    from .scheduler import plans_of

    try:
        plans_of(backend)  # every SCHEDULE entry names a task it can enqueue, or the worker exits 2
    except ValueError as exc:
        fail(f"TASKS[{settings.backend!r}] {exc}")
    return backend


def _serve_probes(probes: Probes, settings: WorkerSettings) -> int:
    """Start the probe server; a port it cannot bind exits with status 2 and one line."""
    try:
        return probes.start(settings.health_host, settings.health_port)
    except OSError as exc:
        where = f"{settings.health_host}:{settings.health_port}"
        if exc.errno == errno.EADDRINUSE:
            fail(
                f"health port {where} is already in use (another conveyor-worker on this host?); "
                "choose a free one with --health-port / CONVEYOR_HEALTH_PORT, or 0 to turn the probes off"
            )
        fail(
            f"cannot serve the health port on {where}: {exc.strerror or exc}; check --health-host / "
            "CONVEYOR_HEALTH_HOST and --health-port / CONVEYOR_HEALTH_PORT"
        )


def _store(backend: RedisBackend, settings: WorkerSettings) -> Store:
    """Return the worker's Store: a pool large enough for every processor plus the other threads."""
    from conveyor.store import Store

    pool_size = max(backend.settings.max_connections, settings.concurrency + 8)
    return Store(
        dataclasses.replace(backend.settings, max_connections=pool_size),
        backend.keys,
        client_name=f"conveyor-worker:{settings.worker_id}",
    )


def _allowed_modules(backend: RedisBackend, settings: WorkerSettings) -> tuple[str, ...]:
    allowed = settings.allowed_task_modules or backend.allowed_task_modules()
    if not allowed:
        fail(
            "CONVEYOR_ALLOWED_TASK_MODULES (--allowed-task-modules) is empty, OPTIONS has no "
            "ALLOWED_TASK_MODULES, and INSTALLED_APPS has no project app to default to"
        )
    return tuple(allowed)


def _on_signals(worker: Worker | Exporter, settings: WorkerSettings) -> None:
    """The first SIGTERM/SIGINT drains; a second exits at once. An exporter stops on any.

    The handler itself only writes the signal number to a pipe: it runs on the main thread
    wherever that thread was, perhaps inside a lock that is not reentrant (threading.Event's
    own, say), so everything that takes a lock runs on the conveyor-signals thread instead.
    """
    from .exporter import Exporter

    read_end, write_end = os.pipe()
    os.set_blocking(write_end, False)  # a full pipe (a signal storm) drops bytes, never blocks

    def on_signal(signum: int, frame: FrameType | None) -> None:
        with contextlib.suppress(BlockingIOError):
            os.write(write_end, bytes([signum]))

    def relay() -> None:
        seen = 0
        while True:
            signum = os.read(read_end, 1)[0]
            seen += 1
            if seen == 1 or isinstance(worker, Exporter):  # nothing to drain: every signal stops it
                worker.request_stop()
                continue
            logger.warning(
                "second signal: stopping now; running tasks come back when their leases expire",
                extra={"event": "worker_stopped", "worker_id": settings.worker_id, "exit_code": 128 + signum},
            )
            logging.shutdown()
            os._exit(128 + signum)

    threading.Thread(target=relay, name="conveyor-signals", daemon=True).start()
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the worker process; return its exit code."""
    settings = load_or_exit(sys.argv[1:] if argv is None else argv, os.environ)
    backend = _setup_django(settings)

    from .exporter import Exporter
    from .logs import configure_logging
    from .loop import Worker
    from .metrics import Metrics
    from .podcost import PodDeletionCost
    from .probes import Probes

    configure_logging(settings.log_format, settings.log_level)
    allowed = _allowed_modules(backend, settings)
    store = _store(backend, settings)
    metrics = Metrics(settings.concurrency)
    pod_cost = PodDeletionCost.from_environment() if settings.pod_deletion_cost else None
    worker: Worker | Exporter
    if settings.metrics_only:
        worker = Exporter()
    else:
        on_busy = pod_cost.update if pod_cost else None
        worker = Worker(settings, backend, store, allowed, metrics, on_busy_change=on_busy)
    probes = Probes(
        store=store,
        metrics=metrics,
        queues=lambda: settings.queues.resolve(store.known_queues()),
        alive=worker.alive,
        ready=worker.ready if isinstance(worker, Exporter) else lambda: worker.ready,
    )
    port = _serve_probes(probes, settings) if settings.health_port else None
    _on_signals(worker, settings)
    logger.info(
        "worker started",
        extra={
            "event": "worker_started",
            "worker_id": settings.worker_id,
            "concurrency": settings.concurrency,
            "queues": ",".join(settings.queues.names) or "*",
            "health_port": port,
            "state": "metrics-only" if settings.metrics_only else "ready",
        },
    )
    code = worker.run()
    probes.stop()
    if pod_cost:
        pod_cost.stop()
    logger.info(
        "worker stopped",
        extra={"event": "worker_stopped", "worker_id": settings.worker_id, "exit_code": code},
    )
    logging.shutdown()
    if threading.active_count() > 1 and worker.busy:
        os._exit(code)  # tasks still stuck in threads: they were released; do not wait for them
    return code


if __name__ == "__main__":
    sys.exit(main())
