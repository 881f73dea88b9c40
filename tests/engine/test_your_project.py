"""A project that is not the example, in an image built from deploy/recipes/Dockerfile.myproject.

tests/engine/byo_project is a second, tiny Django project (settings `byosite.settings`, one app with
one task on its own queue). Its image is built from the recipe unchanged, as docs/your-project.md
tells a user to; Redis is started by testcontainers on the engine in use, with a password. A worker
container from that image runs the task that a one-shot `manage.py` container of the same image
enqueues and then waits for.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from devtools.toolchain import image_available, official_image_present, run_command
from tests.engine.conftest import ROOT, TOOLS, Engine

pytestmark = [pytest.mark.engine, pytest.mark.timeout(600)]

RECIPE = ROOT / "deploy" / "recipes" / "Dockerfile.myproject"
PROJECT = Path(__file__).resolve().parent / "byo_project"
IMAGE = "conveyor-byo:e2e"
# The package's files a wheel is built from (what .dockerignore lets into the repository's images).
PACKAGE_FILES = ("pyproject.toml", "README.md", "backend", "worker")


@dataclass(frozen=True, slots=True, kw_only=True)
class Deployment:
    """The project's image, the network its containers share and the secrets they are given."""

    engine: Engine
    network: str
    secrets_file: Path
    worker_name: str

    def python(self, *args: str) -> str:
        """Run `python ARGS` in a one-shot container of the image (read-only, with the secrets)."""
        proc = subprocess.run(
            [
                "docker",
                "run",
                "--rm",
                "--network",
                self.network,
                "--env-file",
                str(self.secrets_file),
                "--read-only",
                "--entrypoint",
                "python",
                IMAGE,
                *args,
            ],
            capture_output=True,
            text=True,
            env=self.engine.env,
            timeout=120,
            check=False,
        )
        assert proc.returncode == 0, (
            f"python {' '.join(args)} exited {proc.returncode}:\n{proc.stderr[-3000:]}"
        )
        return proc.stdout


def _conveyor_wheel(dest: Path) -> None:
    """Put django-conveyor's wheel into dest: built offline, reproducibly, once per source state."""
    files = sorted(
        f
        for name in PACKAGE_FILES
        for f in ([ROOT / name] if (ROOT / name).is_file() else (ROOT / name).rglob("*"))
        if f.is_file() and "__pycache__" not in f.parts and ".egg-info" not in str(f)
    )
    digest = hashlib.sha256()
    for f in files:
        digest.update(str(f.relative_to(ROOT)).encode() + b"\0" + f.read_bytes())
    cache = TOOLS / "engine" / "conveyor-wheel" / digest.hexdigest()[:16]
    if not list(cache.glob("*.whl")):
        shutil.rmtree(cache.parent, ignore_errors=True)
        source = cache.parent / "src"
        for f in files:
            (source / f.relative_to(ROOT)).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(f, source / f.relative_to(ROOT))
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "wheel",
                "--quiet",
                "--no-deps",
                "--no-index",
                "--find-links",
                str(TOOLS / "wheels"),
                "--wheel-dir",
                str(cache),
                str(source),
            ],
            capture_output=True,
            text=True,
            # A fixed date makes the wheel byte-identical, so the image build stays cached.
            env={**os.environ, "SOURCE_DATE_EPOCH": "1700000000", "PIP_DISABLE_PIP_VERSION_CHECK": "1"},
            timeout=300,
            check=False,
        )
        assert proc.returncode == 0, f"building the conveyor wheel failed:\n{proc.stdout}\n{proc.stderr}"
        shutil.rmtree(source)
    for wheel in cache.glob("*.whl"):
        os.link(wheel, dest / wheel.name)


@pytest.fixture(scope="module")
def project_image(engine: Engine) -> str:
    """Build the project's image from the recipe: the project plus django-conveyor[worker]."""
    # The build context is the project as a user has it, plus a wheelhouse (this engine's
    # containers may have no network; django-conveyor comes from this checkout).
    context = TOOLS / "engine" / "byo-context"
    shutil.rmtree(context, ignore_errors=True)
    shutil.copytree(PROJECT, context, ignore=shutil.ignore_patterns("__pycache__"))
    wheels = context / ".wheels"
    wheels.mkdir()
    for wheel in (TOOLS / "wheels").glob("*.whl"):
        os.link(wheel, wheels / wheel.name)
    _conveyor_wheel(wheels)
    proc = subprocess.run(
        [
            "docker",
            "build",
            "--file",
            str(RECIPE),
            "--tag",
            IMAGE,
            "--build-arg",
            f"PYTHON_IMAGE={engine.images.python}",
            "--build-arg",
            "WHEELHOUSE=.wheels",
            "--build-arg",
            "DJANGO_SETTINGS_MODULE=byosite.settings",
            str(context),
        ],
        capture_output=True,
        text=True,
        env={**engine.env, "DOCKER_BUILDKIT": "0"},
        timeout=600,
        check=False,
    )
    assert proc.returncode == 0, (
        f"docker build of the recipe failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-3000:]}"
    )
    return IMAGE


@pytest.fixture(scope="module")
def deployment(
    engine: Engine, project_image: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Deployment]:
    """Redis (testcontainers, with a password) and one worker container of the project's image."""
    from testcontainers.community.redis import RedisContainer
    from testcontainers.core.config import testcontainers_config
    from testcontainers.core.container import DockerContainer
    from testcontainers.core.network import Network

    password = secrets.token_urlsafe(24)
    secrets_file = tmp_path_factory.mktemp("byo") / "secrets.env"
    secrets_file.write_text(
        f"REDIS_URL=redis://:{password}@redis:6379/0\nDJANGO_SECRET_KEY={secrets.token_urlsafe(50)}\n"
    )
    with pytest.MonkeyPatch.context() as patch:
        # testcontainers reads the engine from DOCKER_HOST. Its reaper (Ryuk) is an image of its
        # own: used when the engine has it or can pull it, else the fixture removes what it starts.
        patch.setenv("DOCKER_HOST", engine.docker_host)
        patch.setattr(testcontainers_config, "ryuk_disabled", not _reaper_available(engine))
        with (
            Network() as network,
            RedisContainer(
                engine.images.redis, password=password, network=network, network_aliases=["redis"]
            ),
        ):
            worker = DockerContainer(
                project_image,
                network=network,
                env={
                    **dict(line.split("=", 1) for line in secrets_file.read_text().splitlines()),
                    "CONVEYOR_QUEUES": "billing",
                    "CONVEYOR_ALLOWED_TASK_MODULES": "invoices.tasks",
                    "CONVEYOR_CONCURRENCY": "2",
                },
                read_only=True,
            )
            with worker:
                yield Deployment(
                    engine=engine,
                    network=network.name,
                    secrets_file=secrets_file,
                    worker_name=worker.get_wrapped_container().name,
                )


def _reaper_available(engine: Engine) -> bool:
    """Tell whether testcontainers' reaper is on the engine, or can be pulled where a registry answers."""
    from testcontainers.core.config import testcontainers_config

    image = testcontainers_config.ryuk_image
    if official_image_present(run_command, engine.docker_host, image):
        return True
    return engine.images.official and image_available(run_command, engine.docker_host, image, pull_timeout=60)


@pytest.mark.timeout(900)  # also builds the image when its layers are not cached
def test_a_task_of_your_project_runs_in_a_worker_built_from_the_recipe(deployment: Deployment) -> None:
    # Given a worker container of the project's image serving the project's queue,
    # when its manage.py enqueues invoices.tasks.total and waits for the result,
    out = deployment.python("manage.py", "invoice_total", "20", "20", "2", "--timeout", "90")
    result = json.loads(out.strip().splitlines()[-1])

    # then the worker ran it once, on the queue the task names.
    assert result["status"] == "SUCCESSFUL", result
    assert result["return_value"] == 42
    assert result["queue"] == "billing"
    (worker_id,) = result["worker_ids"]
    inspect = subprocess.run(
        ["docker", "inspect", "--format", "{{.Config.Hostname}} {{.Config.User}}", deployment.worker_name],
        capture_output=True,
        text=True,
        env=deployment.engine.env,
        timeout=30,
        check=True,
    )
    hostname, user = inspect.stdout.split()
    assert worker_id.startswith(hostname), (worker_id, hostname)
    assert user == "10001:10001"


def test_the_recipe_image_carries_the_project_and_the_worker_extra(deployment: Deployment) -> None:
    probe = (
        "import importlib.util as u, os; "
        "print(os.environ['DJANGO_SETTINGS_MODULE'], u.find_spec('invoices.tasks') is not None, "
        "u.find_spec('kubernetes') is not None, os.path.exists('/app/.wheels'))"
    )
    assert deployment.python("-c", probe).split() == ["byosite.settings", "True", "True", "False"]
