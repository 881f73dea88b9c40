"""Fixtures of the engine tier: a Docker engine, the compose stack on it, and a project's own image.

The engine is the machine's when one answers (DOCKER_HOST, else /var/run/docker.sock), else
conveyor's own, started by deploy/engine/provision.sh; the builds use the official base images
when the engine has or can pull them, else the stand-ins base-images.sh builds; Compose is the
machine's v2 when there is one (devtools/toolchain.py decides each). When what is missing cannot be
provisioned the tier FAILS with the reason, unless CONVEYOR_ENGINE_OPTIONAL=1, in which case it is
skipped with a loud message (and only this tier).
"""

from __future__ import annotations

import fcntl
import json
import os
import secrets
import shlex
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
import warnings
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import pytest

from devtools.redis_server import free_port
from devtools.toolchain import (
    BaseImages,
    choose_base_images,
    compose_candidates,
    existing_engine,
    run_command,
    usable_compose,
)

ROOT = Path(__file__).resolve().parents[2]
ENGINE_DIR = ROOT / "deploy" / "engine"
COMPOSE_FILE = ROOT / "deploy" / "compose" / "compose.yaml"
TOOLS = ROOT / ".tools"
PROVISION_LOG = TOOLS / "engine" / "provision.log"
PROJECT = "conveyor-e2e"
# Machine-wide: /run when we may write there (root), else the temporary directory.
LOCK_PATH = (
    Path("/run" if os.access("/run", os.W_OK) else tempfile.gettempdir()) / "conveyor-engine-tier.lock"
)
LOCK_TIMEOUT = 1200
PROVISION_TIMEOUT = 1200  # cold: debootstrap + apt in a chroot; warm: seconds
UP_TIMEOUT = 900  # cold: two image builds; warm: cached layers


def _loud(config: pytest.Config, message: str) -> None:
    """Write a line to the terminal even while output is captured."""
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    capture = config.pluginmanager.get_plugin("capturemanager")
    if reporter is None or capture is None:
        print(message)
        return
    with capture.global_and_fixture_disabled():
        reporter.write_line("")
        reporter.write_line(message, red=True, bold=True)


def _unavailable(config: pytest.Config, reason: str) -> None:
    """Fail the tier with the reason, or skip it loudly when CONVEYOR_ENGINE_OPTIONAL=1."""
    if os.environ.get("CONVEYOR_ENGINE_OPTIONAL") == "1":
        message = (
            "ENGINE TIER SKIPPED (CONVEYOR_ENGINE_OPTIONAL=1): "
            f"no Docker engine could be provisioned: {reason}"
        )
        _loud(config, message)
        warnings.warn(message, stacklevel=1)
        pytest.skip(message)
    pytest.fail(f"the engine tier needs a Docker engine and could not provision one: {reason}", pytrace=False)


@dataclass(frozen=True, slots=True, kw_only=True)
class Engine:
    """The Docker engine in use, the Compose command that drives it and the base images to build on."""

    docker_host: str
    compose_cmd: tuple[str, ...]
    images: BaseImages

    @property
    def env(self) -> dict[str, str]:
        """The environment for docker and docker-compose: this engine, no bake, no stray settings."""
        env = {k: v for k, v in os.environ.items() if not k.startswith(("DOCKER_", "COMPOSE_", "CONVEYOR_"))}
        env.update(DOCKER_HOST=self.docker_host, COMPOSE_BAKE="false")
        return env


@pytest.fixture(scope="session")
def engine(request: pytest.FixtureRequest) -> Iterator[Engine]:
    """Find or provision the engine (and stop it at the end if this session started it)."""
    config = request.config
    # One engine-tier session at a time on this machine: they share the engine, the project name
    # and the published port range, and the session that started the engine stops it.
    lock = _session_lock(config)
    try:
        yield from _provisioned_engine(config)
    finally:
        lock.close()


def _session_lock(config: pytest.Config) -> IO[str]:
    """Hold LOCK_PATH exclusively, waiting a bounded time for another session to finish."""
    handle = LOCK_PATH.open("a+")
    deadline = time.monotonic() + LOCK_TIMEOUT
    announced = False
    while True:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if time.monotonic() > deadline:
                handle.close()
                pytest.fail(f"{LOCK_PATH} stayed locked {LOCK_TIMEOUT}s by another session", pytrace=False)
            if not announced:
                _loud(config, f"waiting for another engine-tier session to release {LOCK_PATH}")
                announced = True
            time.sleep(2)
            continue
        handle.seek(0)
        handle.truncate()
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        return handle


def _provisioned_engine(config: pytest.Config) -> Iterator[Engine]:
    """Use the machine's engine and Compose when they answer; provision what is missing."""
    began = time.monotonic()
    PROVISION_LOG.parent.mkdir(parents=True, exist_ok=True)
    PROVISION_LOG.write_text("")
    found = existing_engine(run_command, os.environ)
    started_here = False
    if found is None:
        _require_root(config, "starting conveyor's own engine")
        started_here = (
            subprocess.run(
                ["bash", str(ENGINE_DIR / "engine.sh"), "status"], capture_output=True, check=False
            ).returncode
            != 0
        )
        _provision(config, ["engine"], {}, stop_on_failure=started_here)
    docker_host = found or _docker_host()
    try:
        images = choose_base_images(run_command, docker_host)
        compose = usable_compose(run_command, compose_candidates()[:-1])
        steps = [
            *([] if images.official else ["base-images"]),
            "wheelhouse",
            *([] if compose else ["compose"]),
        ]
        if not images.official:
            _require_root(config, "building the stand-in base images (no registry answered)")
        # base-images.sh imports into the machine's engine when we use that one.
        _provision(
            config, steps, {"CONVEYOR_DOCKER_HOST": docker_host} if found else {}, stop_on_failure=False
        )
        compose = compose or (str(TOOLS / "bin" / "docker-compose"),)
        whose = "the machine's" if found else "conveyor's own"
        _loud(
            config,
            f"engine {docker_host} ({whose}), base {images.python}, compose {' '.join(compose)}: "
            f"ready in {time.monotonic() - began:.0f}s (log: {PROVISION_LOG})",
        )
        yield Engine(docker_host=docker_host, compose_cmd=compose, images=images)
    finally:
        if started_here and os.environ.get("CONVEYOR_ENGINE_KEEP") != "1":
            _stop_engine()


def _require_root(config: pytest.Config, what: str) -> None:
    if os.geteuid() != 0:
        _unavailable(config, f"{what} needs root (dockerd, debootstrap, chroot); this is not root")


def _provision(
    config: pytest.Config, steps: list[str], env: dict[str, str], *, stop_on_failure: bool
) -> None:
    """Run provision.sh STEPS (log appended to .tools/engine/provision.log); fail or skip with its tail."""
    try:
        with PROVISION_LOG.open("a") as log:
            proc = subprocess.run(
                ["bash", str(ENGINE_DIR / "provision.sh"), *steps],
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, **env},
                timeout=PROVISION_TIMEOUT,
                check=False,
            )
        failure = None if proc.returncode == 0 else f"provision.sh {' '.join(steps)} exited {proc.returncode}"
    except subprocess.TimeoutExpired:
        failure = f"provision.sh {' '.join(steps)} took longer than {PROVISION_TIMEOUT}s"
    if failure is not None:
        tail = "\n".join(PROVISION_LOG.read_text().splitlines()[-25:])
        if stop_on_failure:
            _stop_engine()
        _unavailable(config, f"{failure}; last lines of {PROVISION_LOG}:\n{tail}")


def _docker_host() -> str:
    """The engine's DOCKER_HOST, as engine.sh computes it (honouring its CONVEYOR_ENGINE_* overrides)."""
    out = subprocess.run(
        ["bash", str(ENGINE_DIR / "engine.sh"), "env"], capture_output=True, text=True, timeout=30, check=True
    ).stdout
    return shlex.split(out.strip().removeprefix("export DOCKER_HOST="))[0]


def _stop_engine() -> None:
    subprocess.run(
        ["bash", str(ENGINE_DIR / "engine.sh"), "stop"], capture_output=True, timeout=120, check=False
    )


class ComposeError(AssertionError):
    """A compose command failed; the message carries its output."""


@dataclass(kw_only=True)
class Stack:
    """The compose stack of deploy/compose, up on the engine, and an HTTP client for its web app."""

    engine: Engine
    env_file: Path
    web_port: int
    first_result_id: str | None = field(default=None)

    @property
    def web_url(self) -> str:
        return f"http://127.0.0.1:{self.web_port}"

    def compose(self, *args: str, timeout: float = 120) -> str:
        """Run docker-compose on the stack; return stdout, raise with the output on failure."""
        cmd = [
            *self.engine.compose_cmd,
            "--project-name",
            PROJECT,
            "--env-file",
            str(self.env_file),
            "-f",
            str(COMPOSE_FILE),
            *args,
        ]
        proc = subprocess.run(
            cmd, capture_output=True, text=True, env=self.engine.env, timeout=timeout, check=False
        )
        if proc.returncode != 0:
            raise ComposeError(
                f"{' '.join(args)} exited {proc.returncode}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
            )
        return proc.stdout

    def docker(self, *args: str) -> str:
        proc = subprocess.run(
            ["docker", *args], capture_output=True, text=True, env=self.engine.env, timeout=60, check=True
        )
        return proc.stdout

    def containers(self, service: str | None = None) -> list[dict[str, Any]]:
        """`compose ps --all` as a list of objects (one per container)."""
        out = self.compose("ps", "--all", "--format", "json", *([service] if service else []))
        out = out.strip()
        if not out:
            return []
        if out.startswith("["):
            return list(json.loads(out))
        return [json.loads(line) for line in out.splitlines() if line.strip()]

    def request(self, method: str, path: str, body: object | None = None) -> tuple[int, dict[str, Any]]:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.web_url + path, data=data, method=method)
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:
                return resp.status, json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            payload = exc.read()
            try:
                return exc.code, json.loads(payload)
            except ValueError:
                return exc.code, {"raw": payload.decode(errors="replace")[:500]}

    def enqueue(self, task: str, *args: object) -> str:
        """POST /enqueue/<task>; return the new task's id."""
        status, body = self.request("POST", f"/enqueue/{task}", {"args": list(args)})
        assert status == 202, (status, body)
        return str(body["id"])

    def result(self, task_id: str) -> dict[str, Any]:
        status, body = self.request("GET", f"/results/{task_id}")
        assert status == 200, (status, body)
        return body

    def wait_until_finished(self, ids: Iterable[str], timeout: float) -> dict[str, dict[str, Any]]:
        """Poll until every task is SUCCESSFUL or FAILED; fail with the stragglers after timeout."""
        pending = set(ids)
        done: dict[str, dict[str, Any]] = {}
        deadline = time.monotonic() + timeout
        while pending:
            for task_id in sorted(pending):
                found = self.result(task_id)
                if found["status"] in ("SUCCESSFUL", "FAILED"):
                    done[task_id] = found
                    pending.discard(task_id)
            if not pending:
                break
            if time.monotonic() > deadline:
                states = {i: self.result(i)["status"] for i in sorted(pending)}
                pytest.fail(f"{len(pending)} task(s) unfinished after {timeout}s: {states}", pytrace=False)
            time.sleep(0.25)
        return done


@pytest.fixture(scope="session")
def stack(
    engine: Engine, tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> Iterator[Stack]:
    """`docker compose up --build --wait`, then `down -v` at the end (logs kept in .tools/engine)."""
    env_file = tmp_path_factory.mktemp("compose") / "e2e.env"
    web_port = free_port()
    env_file.write_text(
        f"DJANGO_SECRET_KEY={secrets.token_urlsafe(50)}\n"
        f"WEB_PORT={web_port}\n"
        "CONVEYOR_WHEELHOUSE=.tools/wheels\n"
        f"CONVEYOR_PYTHON_IMAGE={engine.images.python}\n"
        f"CONVEYOR_REDIS_IMAGE={engine.images.redis}\n"
        "CONVEYOR_CONCURRENCY=4\n"
        "CONVEYOR_SHUTDOWN_TIMEOUT=25\n"
        "CONVEYOR_STOP_GRACE_PERIOD=35s\n"
    )
    stack = Stack(engine=engine, env_file=env_file, web_port=web_port)
    # A stack left over by an interrupted run would hold the project's names.
    stack.compose("down", "--volumes", "--remove-orphans", "--timeout", "5", timeout=120)
    began = time.monotonic()
    try:
        stack.compose("up", "--build", "--detach", "--wait", "--wait-timeout", "300", timeout=UP_TIMEOUT)
        _loud(request.config, f"compose stack built and healthy in {time.monotonic() - began:.0f}s")
        yield stack
    finally:
        log_path = TOOLS / "engine" / "compose-e2e.log"
        try:
            log_path.write_text(stack.compose("logs", "--no-color", "--timestamps", timeout=60))
        except (ComposeError, subprocess.TimeoutExpired) as exc:
            log_path.write_text(f"could not collect logs: {exc}\n")
        stack.compose("down", "--volumes", "--remove-orphans", "--timeout", "40", timeout=180)
        # Images of this project replaced by this run's builds (compose labels what it builds); no
        # other image, on the machine's engine someone else's, and not the cached stages of
        # test_your_project.py's build.
        stack.docker("image", "prune", "--force", "--filter", f"label=com.docker.compose.project={PROJECT}")
