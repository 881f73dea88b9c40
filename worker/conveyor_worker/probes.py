"""The health port: /livez, /readyz, /metrics and /work on a small, bounded threaded HTTP server."""

from __future__ import annotations

import contextlib
import json
import logging
import socket
import threading
from collections.abc import Callable, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from conveyor.exceptions import ConveyorError
from conveyor.store import Store

from .metrics import Metrics, live_slots, work_document

logger = logging.getLogger(__name__)

REQUEST_TIMEOUT = 5.0  # seconds a connection gets to send its request, and again to take the answer
MAX_HANDLERS = 16  # handler threads at once; a probe, a scrape and KEDA need a few
SLOT_WAIT = 0.5  # seconds a new connection waits for the slot of a connection it cut


class HandlerSlots:
    """Own the cap on handler threads and the connections still sending their request, under one lock.

    A connection holds a slot from accept until its handler thread ends. When every slot is taken,
    the connection that has waited longest for its request to arrive is cut, so half-sent requests
    can never lock the kubelet's probe out; if every slot is busy answering instead, the new
    connection is closed at once.
    """

    def __init__(self, limit: int) -> None:
        self._free = threading.BoundedSemaphore(limit)
        self._lock = threading.Lock()
        self._reading: dict[socket.socket, None] = {}  # insertion order: the longest waiting first

    def take(self, conn: socket.socket) -> bool:
        """Reserve a slot for a new connection; False when none frees up."""
        if not self._free.acquire(blocking=False):
            self._cut_oldest_reader()
            if not self._free.acquire(timeout=SLOT_WAIT):
                return False
        with self._lock:
            self._reading[conn] = None
        return True

    def request_read(self, conn: socket.socket) -> None:
        """Note that a connection has sent its whole request head (it is no longer cut)."""
        with self._lock:
            self._reading.pop(conn, None)

    def give_back(self, conn: socket.socket) -> None:
        """Free a connection's slot once its handler thread is done with it."""
        with self._lock:
            self._reading.pop(conn, None)
        self._free.release()

    def _cut_oldest_reader(self) -> None:
        with self._lock:
            oldest = next(iter(self._reading), None)
            if oldest is None:
                return
            del self._reading[oldest]
        with contextlib.suppress(OSError):  # already closed by its own thread
            oldest.shutdown(socket.SHUT_RDWR)  # its blocked read returns at once; the thread ends


class ProbeServer(ThreadingHTTPServer):
    """A ThreadingHTTPServer whose handler threads are capped by HandlerSlots."""

    daemon_threads = True
    request_queue_size = 64

    def __init__(
        self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler], slots: HandlerSlots
    ) -> None:
        self.slots = slots
        super().__init__(address, handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        """Start a handler thread if a slot is free (or frees up); else close the connection."""
        if not self.slots.take(request):
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self.slots.give_back(request)
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        """Handle one connection in its thread and give its slot back."""
        try:
            super().process_request_thread(request, client_address)
        finally:
            self.slots.give_back(request)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Log a broken connection quietly: a client that hangs up is no worker problem."""
        logger.debug("probe connection from %s failed", client_address, exc_info=True)


class Probes:
    """Answer liveness, readiness, metrics and queue work for one worker process."""

    def __init__(
        self,
        *,
        store: Store,
        metrics: Metrics,
        queues: Callable[[], Sequence[str]],
        alive: Callable[[], bool],
        ready: Callable[[], bool],
        request_timeout: float = REQUEST_TIMEOUT,
        max_handlers: int = MAX_HANDLERS,
    ) -> None:
        self.store = store
        self.metrics = metrics
        self.queues = queues
        self.alive = alive
        self.ready = ready
        self.request_timeout = request_timeout
        self.max_handlers = max_handlers
        self._server: ProbeServer | None = None

    def metrics_text(self) -> str:
        """Return /metrics: queue counts (TIME, six commands per queue) and live slots (two commands)."""
        try:
            queues = list(self.queues())
            stats = self.store.queue_stats(queues)
            now_ms = stats[0].read_at_ms if stats else None
            _, beats = self.store.live_workers(now_ms)
        except ConveyorError:
            return self.metrics.render(None, up=False)
        return self.metrics.render(stats, up=True, slots=live_slots(beats, queues))

    def work_json(self) -> tuple[int, str]:
        """Return /work (status, body): the queues' work for KEDA; 503 when Redis does not answer."""
        try:
            stats = self.store.queue_stats(list(self.queues()))
        except ConveyorError as exc:
            # Never zeros: an autoscaler would read them as "no work" and scale running tasks away.
            # The details (Redis's address) stay in the log, not on an unauthenticated port.
            logger.debug("/work: %s", exc)
            return 503, json.dumps({"error": "Redis is unavailable"}) + "\n"
        return 200, json.dumps(work_document(stats), sort_keys=True) + "\n"

    def readiness(self) -> bool:
        """Ready when the worker takes work and Redis answers a PING now."""
        if not self.ready():
            return False
        try:
            return self.store.ping()
        except ConveyorError:
            return False

    def start(self, host: str, port: int) -> int:
        """Bind, serve in a daemon thread and return the bound port (OSError if it cannot bind)."""
        probes = self
        slots = HandlerSlots(self.max_handlers)

        class Handler(BaseHTTPRequestHandler):
            timeout = probes.request_timeout  # socket timeout of every read and write

            def parse_request(self) -> bool:
                ok = super().parse_request()
                slots.request_read(self.connection)
                return ok

            def do_GET(self) -> None:
                path = self.path.split("?", 1)[0]
                if path == "/livez":
                    ok = probes.alive()
                    self._send(200 if ok else 503, "ok\n" if ok else "stalled\n")
                elif path == "/readyz":
                    ok = probes.readiness()
                    self._send(200 if ok else 503, "ready\n" if ok else "not ready\n")
                elif path == "/metrics":
                    self._send(200, probes.metrics_text(), "text/plain; version=0.0.4; charset=utf-8")
                elif path == "/work":
                    self._send(*probes.work_json(), "application/json")
                else:
                    self._send(404, "not found\n")

            def _send(self, code: int, body: str, kind: str = "text/plain; charset=utf-8") -> None:
                data = body.encode()
                self.send_response(code)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: object) -> None:
                return  # probes every few seconds would drown the task log

        self._server = ProbeServer((host, port), Handler, slots)
        threading.Thread(target=self._server.serve_forever, name="conveyor-probes", daemon=True).start()
        return int(self._server.server_address[1])

    def stop(self) -> None:
        """Stop serving."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
