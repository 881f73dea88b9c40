"""The health port: /livez, /readyz and /metrics on a small threaded HTTP server."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from conveyor.exceptions import ConveyorError
from conveyor.store import Store

from .metrics import Metrics

logger = logging.getLogger(__name__)


class Probes:
    """Answer liveness, readiness and metrics for one worker process."""

    def __init__(
        self,
        *,
        store: Store,
        metrics: Metrics,
        queues: Callable[[], Sequence[str]],
        alive: Callable[[], bool],
        ready: Callable[[], bool],
    ) -> None:
        self.store = store
        self.metrics = metrics
        self.queues = queues
        self.alive = alive
        self.ready = ready
        self._server: ThreadingHTTPServer | None = None

    def metrics_text(self) -> str:
        """Return /metrics: queue gauges cost four Redis commands per queue, in one round trip."""
        try:
            queues = list(self.queues())
            stats = self.store.queue_stats(queues)
            now_ms = self.store.server_time_ms()
            return self.metrics.render(stats, now_ms, up=True)
        except ConveyorError:
            return self.metrics.render(None, None, up=False)

    def readiness(self) -> bool:
        """Ready when the worker takes work and Redis answers a PING now."""
        if not self.ready():
            return False
        try:
            return self.store.ping()
        except ConveyorError:
            return False

    def start(self, host: str, port: int) -> int:
        """Serve in a daemon thread; return the bound port."""
        probes = self

        class Handler(BaseHTTPRequestHandler):
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

        self._server = ThreadingHTTPServer((host, port), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, name="conveyor-probes", daemon=True).start()
        return int(self._server.server_address[1])

    def stop(self) -> None:
        """Stop serving."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
