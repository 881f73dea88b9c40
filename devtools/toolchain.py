"""Choose the container tooling the deploy and engine tiers use: what the machine has, else our own.

Each choice is a small function that takes the command runner, so tests can feed it the outcomes
of `docker info`, `helm version` and `docker pull` without a Docker engine. The command line
(`python -m devtools.toolchain helm|compose|engine|base-images`) prints one choice for `./dev`.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TOOLS_BIN = ROOT / ".tools" / "bin"
DEFAULT_DOCKER_HOST = "unix:///var/run/docker.sock"
# The images the Dockerfiles and compose.yaml name, and the stand-ins deploy/engine/base-images.sh
# builds under their own tags when no registry answers (so an official tag never names a stand-in).
OFFICIAL_PYTHON_IMAGE = "python:3.12-slim-bookworm"
OFFICIAL_REDIS_IMAGE = "redis:7"
STAND_IN_PYTHON_IMAGE = "conveyor-local/python:3.12-slim-bookworm"
STAND_IN_REDIS_IMAGE = "conveyor-local/redis:7"
STAND_IN_LABEL = "dev.conveyor.rootfs-key"
INFO_TIMEOUT = 10.0
PULL_TIMEOUT = 60.0


@dataclass(frozen=True, slots=True, kw_only=True)
class Outcome:
    """What one command did: its exit status and standard output."""

    returncode: int
    stdout: str = ""


# run(argv, extra_env, timeout) -> Outcome; a missing program or a timeout is a non-zero status.
Run = Callable[[Sequence[str], Mapping[str, str], float], Outcome]


def run_command(argv: Sequence[str], extra_env: Mapping[str, str], timeout: float) -> Outcome:
    """Run a command with extra environment variables; never raise for a failure."""
    try:
        proc = subprocess.run(
            list(argv),
            capture_output=True,
            text=True,
            env={**os.environ, **extra_env},
            timeout=timeout,
            check=False,
        )
    except FileNotFoundError:
        return Outcome(returncode=127)
    except subprocess.TimeoutExpired:
        return Outcome(returncode=124)
    return Outcome(returncode=proc.returncode, stdout=proc.stdout)


def existing_engine(run: Run, environ: Mapping[str, str]) -> str | None:
    """Return the DOCKER_HOST of an engine that answers `docker info`: $DOCKER_HOST, else the default."""
    candidates = [environ["DOCKER_HOST"]] if environ.get("DOCKER_HOST") else []
    candidates += [DEFAULT_DOCKER_HOST] if DEFAULT_DOCKER_HOST not in candidates else []
    for host in candidates:
        answer = run(
            ["docker", "info", "--format", "{{.ServerVersion}}"], {"DOCKER_HOST": host}, INFO_TIMEOUT
        )
        if answer.returncode == 0 and answer.stdout.strip():
            return host
    return None


def _major_minor(text: str) -> tuple[int, int] | None:
    """Return the first `X.Y` version in text, without a leading v."""
    match = re.search(r"v?(\d+)\.(\d+)", text)
    return (int(match.group(1)), int(match.group(2))) if match else None


def usable_helm(run: Run, candidates: Sequence[str], major: int = 3) -> str | None:
    """Return the first candidate binary that is Helm of that major version."""
    for binary in candidates:
        answer = run([binary, "version", "--short"], {}, INFO_TIMEOUT)
        version = _major_minor(answer.stdout) if answer.returncode == 0 else None
        if version is not None and version[0] == major:
            return binary
    return None


def usable_compose(run: Run, candidates: Sequence[Sequence[str]]) -> tuple[str, ...] | None:
    """Return the first candidate command (`docker compose`, `docker-compose`) that is Compose v2."""
    for command in candidates:
        answer = run([*command, "version", "--short"], {}, INFO_TIMEOUT)
        version = _major_minor(answer.stdout) if answer.returncode == 0 else None
        if version is not None and version[0] == 2:
            return tuple(command)
    return None


def helm_candidates(name: str = "helm") -> list[str]:
    """Return name and helm on PATH (the machine's own) before .tools/bin/<name> (get-helm.sh's)."""
    path = _path_without_tools()
    found = [shutil.which(n, path=path) for n in dict.fromkeys((name, "helm"))]
    return list(dict.fromkeys(c for c in (*found, str(TOOLS_BIN / name)) if c is not None))


def compose_candidates() -> list[tuple[str, ...]]:
    """Return `docker compose` and docker-compose on PATH before .tools/bin/docker-compose."""
    found: list[tuple[str, ...]] = []
    docker = shutil.which("docker", path=_path_without_tools())
    if docker is not None:
        found.append((docker, "compose"))
    standalone = shutil.which("docker-compose", path=_path_without_tools())
    if standalone is not None:
        found.append((standalone,))
    found.append((str(TOOLS_BIN / "docker-compose"),))
    return found


def _path_without_tools() -> str:
    """Return PATH less .tools/bin, so the machine's own tools are found first."""
    parts = os.environ.get("PATH", os.defpath).split(os.pathsep)
    return os.pathsep.join(p for p in parts if Path(p).resolve() != TOOLS_BIN.resolve())


@dataclass(frozen=True, slots=True, kw_only=True)
class BaseImages:
    """The Python and Redis images the builds and the stack use, and whether they are the official ones."""

    python: str
    redis: str
    official: bool


def official_image_present(run: Run, docker_host: str, image: str) -> bool:
    """Tell whether the engine holds image under its official tag and it is not one of our stand-ins."""
    answer = run(
        [
            "docker",
            "image",
            "inspect",
            "--format",
            f'{{{{ index .Config.Labels "{STAND_IN_LABEL}" }}}}',
            image,
        ],
        {"DOCKER_HOST": docker_host},
        INFO_TIMEOUT,
    )
    # An image without labels prints "<no value>"; a stand-in prints its rootfs key.
    return answer.returncode == 0 and answer.stdout.strip() in ("", "<no value>")


def image_available(run: Run, docker_host: str, image: str, pull_timeout: float = PULL_TIMEOUT) -> bool:
    """Tell whether the engine holds image (its official build) or can pull it."""
    if official_image_present(run, docker_host, image):
        return True
    return (
        run(["docker", "pull", "--quiet", image], {"DOCKER_HOST": docker_host}, pull_timeout).returncode == 0
    )


def redis_image(run: Run, docker_host: str, pull_timeout: float = PULL_TIMEOUT) -> str | None:
    """Return the official Redis image when the engine has or pulls it, else the stand-in if present."""
    if image_available(run, docker_host, OFFICIAL_REDIS_IMAGE, pull_timeout):
        return OFFICIAL_REDIS_IMAGE
    present = run(
        ["docker", "image", "inspect", STAND_IN_REDIS_IMAGE], {"DOCKER_HOST": docker_host}, INFO_TIMEOUT
    )
    return STAND_IN_REDIS_IMAGE if present.returncode == 0 else None


def choose_base_images(run: Run, docker_host: str, pull_timeout: float = PULL_TIMEOUT) -> BaseImages:
    """Use the official images when the engine has them or can pull them, else the local stand-ins."""
    for image in (OFFICIAL_PYTHON_IMAGE, OFFICIAL_REDIS_IMAGE):
        if not image_available(run, docker_host, image, pull_timeout):
            return BaseImages(python=STAND_IN_PYTHON_IMAGE, redis=STAND_IN_REDIS_IMAGE, official=False)
    return BaseImages(python=OFFICIAL_PYTHON_IMAGE, redis=OFFICIAL_REDIS_IMAGE, official=True)


def main(argv: Sequence[str]) -> int:
    """Print one choice: the helm binary, the compose command, an engine's DOCKER_HOST, or the base images."""
    what = argv[0] if argv else ""
    if what == "helm":
        helm = usable_helm(run_command, helm_candidates())
        print(helm or "")
        return 0 if helm else 1
    if what == "compose":
        compose = usable_compose(run_command, compose_candidates())
        print(" ".join(compose or ()))
        return 0 if compose else 1
    if what == "engine":
        host = existing_engine(run_command, os.environ)
        print(host or "")
        return 0 if host else 1
    if what == "base-images" and len(argv) == 2:
        images = choose_base_images(run_command, argv[1])
        print(f"CONVEYOR_PYTHON_IMAGE={images.python}\nCONVEYOR_REDIS_IMAGE={images.redis}")
        return 0 if images.official else 1
    print(
        "usage: python -m devtools.toolchain helm | compose | engine | base-images DOCKER_HOST",
        file=sys.stderr,
    )
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
