"""devtools.toolchain: which engine, Helm, Compose and base images the tiers use, from faked outcomes."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from devtools.toolchain import (
    DEFAULT_DOCKER_HOST,
    OFFICIAL_PYTHON_IMAGE,
    OFFICIAL_REDIS_IMAGE,
    STAND_IN_PYTHON_IMAGE,
    STAND_IN_REDIS_IMAGE,
    Outcome,
    choose_base_images,
    existing_engine,
    redis_image,
    usable_compose,
    usable_helm,
)


class FakeRunner:
    """Answer commands from a table keyed by (DOCKER_HOST, argv); record every call."""

    def __init__(self, answers: Mapping[tuple[str, tuple[str, ...]], Outcome]) -> None:
        self.answers = answers
        self.calls: list[tuple[str, tuple[str, ...], float]] = []

    def __call__(self, argv: Sequence[str], extra_env: Mapping[str, str], timeout: float) -> Outcome:
        host = extra_env.get("DOCKER_HOST", "")
        self.calls.append((host, tuple(argv), timeout))
        return self.answers.get((host, tuple(argv)), Outcome(returncode=1))


INFO = ("docker", "info", "--format", "{{.ServerVersion}}")
ANSWERS = Outcome(returncode=0, stdout="28.2.2\n")
MINE = "tcp://10.0.0.5:2376"


def test_docker_host_that_answers_is_used() -> None:
    run = FakeRunner({(MINE, INFO): ANSWERS})
    assert existing_engine(run, {"DOCKER_HOST": MINE}) == MINE
    assert [c[0] for c in run.calls] == [MINE]


def test_default_socket_is_used_when_docker_host_is_unset_and_it_answers() -> None:
    run = FakeRunner({(DEFAULT_DOCKER_HOST, INFO): ANSWERS})
    assert existing_engine(run, {}) == DEFAULT_DOCKER_HOST


def test_default_socket_is_tried_when_docker_host_does_not_answer() -> None:
    run = FakeRunner({(DEFAULT_DOCKER_HOST, INFO): ANSWERS})
    assert existing_engine(run, {"DOCKER_HOST": MINE}) == DEFAULT_DOCKER_HOST
    assert [c[0] for c in run.calls] == [MINE, DEFAULT_DOCKER_HOST]


def test_no_engine_when_nothing_answers() -> None:
    # `docker info` exits 1 when the daemon is down, 127 without a client, 124 on a timeout;
    # a zero exit with no server version (a client without a daemon) is no engine either.
    for outcome in (
        Outcome(returncode=1),
        Outcome(returncode=127),
        Outcome(returncode=124),
        Outcome(returncode=0),
    ):
        run = FakeRunner({(MINE, INFO): outcome, (DEFAULT_DOCKER_HOST, INFO): outcome})
        assert existing_engine(run, {"DOCKER_HOST": MINE}) is None
        assert all(timeout <= 10 for _, _, timeout in run.calls)


def test_helm_3_on_path_is_preferred_to_the_provisioned_one() -> None:
    run = FakeRunner(
        {("", ("/usr/bin/helm", "version", "--short")): Outcome(returncode=0, stdout="v3.14.2+gc309b6f\n")}
    )
    assert usable_helm(run, ["/usr/bin/helm", ".tools/bin/helm"]) == "/usr/bin/helm"


def test_helm_of_another_major_version_is_passed_over() -> None:
    run = FakeRunner(
        {
            ("", ("/usr/bin/helm", "version", "--short")): Outcome(returncode=0, stdout="v4.0.0+g1234\n"),
            ("", ("/opt/helm2", "version", "--short")): Outcome(
                returncode=0, stdout="Client: v2.17.0+ga690bad\n"
            ),
            ("", (".tools/bin/helm", "version", "--short")): Outcome(returncode=0, stdout="v3.18.0+g1234\n"),
        }
    )
    assert usable_helm(run, ["/usr/bin/helm", "/opt/helm2", ".tools/bin/helm"]) == ".tools/bin/helm"
    assert usable_helm(run, ["/usr/bin/helm", "/opt/helm2"]) is None
    # The chart is also tested with Helm 4: a machine's `helm` of major 4 serves that run.
    assert usable_helm(run, ["/usr/bin/helm", ".tools/bin/helm"], major=4) == "/usr/bin/helm"


def test_compose_v2_plugin_or_binary_and_never_v1() -> None:
    plugin = ("/usr/bin/docker", "compose")
    v1 = ("/usr/bin/docker-compose",)
    provisioned = (".tools/bin/docker-compose",)
    run = FakeRunner(
        {
            ("", (*plugin, "version", "--short")): Outcome(returncode=0, stdout="2.29.1\n"),
            ("", (*v1, "version", "--short")): Outcome(returncode=0, stdout="1.29.2\n"),
            ("", (*provisioned, "version", "--short")): Outcome(returncode=0, stdout="v2.40.3\n"),
        }
    )
    assert usable_compose(run, [plugin, v1, provisioned]) == plugin
    assert usable_compose(run, [v1, provisioned]) == provisioned
    assert usable_compose(run, [v1]) is None
    # A docker client without the compose plugin: "unknown command", exit 1.
    assert usable_compose(FakeRunner({}), [plugin]) is None


def _inspect(image: str) -> tuple[str, ...]:
    return (
        "docker",
        "image",
        "inspect",
        "--format",
        '{{ index .Config.Labels "dev.conveyor.rootfs-key" }}',
        image,
    )


def _pull(image: str) -> tuple[str, ...]:
    return ("docker", "pull", "--quiet", image)


def test_official_images_already_on_the_engine_are_used_without_a_pull() -> None:
    run = FakeRunner(
        {
            (MINE, _inspect(OFFICIAL_PYTHON_IMAGE)): Outcome(returncode=0, stdout="<no value>\n"),
            (MINE, _inspect(OFFICIAL_REDIS_IMAGE)): Outcome(returncode=0, stdout="\n"),
        }
    )
    images = choose_base_images(run, MINE)
    assert (images.python, images.redis, images.official) == (
        OFFICIAL_PYTHON_IMAGE,
        OFFICIAL_REDIS_IMAGE,
        True,
    )
    assert not [c for c in run.calls if c[1][1] == "pull"]


def test_official_images_are_pulled_when_a_registry_answers() -> None:
    run = FakeRunner(
        {
            (MINE, _pull(OFFICIAL_PYTHON_IMAGE)): Outcome(returncode=0),
            (MINE, _pull(OFFICIAL_REDIS_IMAGE)): Outcome(returncode=0),
        }
    )
    assert choose_base_images(run, MINE, pull_timeout=7).official is True
    assert [timeout for _, argv, timeout in run.calls if argv[1] == "pull"] == [7, 7]


def test_stand_ins_when_the_pull_fails_or_a_stand_in_holds_the_official_tag() -> None:
    # A stand-in imported under the official tag (by an older base-images.sh) carries its rootfs key.
    run = FakeRunner(
        {
            (MINE, _inspect(OFFICIAL_PYTHON_IMAGE)): Outcome(returncode=0, stdout="0123456789abcdef\n"),
            (MINE, _pull(OFFICIAL_PYTHON_IMAGE)): Outcome(returncode=1),
        }
    )
    images = choose_base_images(run, MINE)
    assert (images.python, images.redis, images.official) == (
        STAND_IN_PYTHON_IMAGE,
        STAND_IN_REDIS_IMAGE,
        False,
    )
    # A pull that hangs is cut by the timeout (124) and counts as no registry.
    hung = FakeRunner({(MINE, _pull(OFFICIAL_PYTHON_IMAGE)): Outcome(returncode=124)})
    assert choose_base_images(hung, MINE).official is False


def test_redis_image_is_the_official_one_or_the_stand_in_or_none() -> None:
    official = FakeRunner({(MINE, _pull(OFFICIAL_REDIS_IMAGE)): Outcome(returncode=0)})
    assert redis_image(official, MINE) == OFFICIAL_REDIS_IMAGE
    inspect = ("docker", "image", "inspect", STAND_IN_REDIS_IMAGE)
    stand_in = FakeRunner({(MINE, inspect): Outcome(returncode=0)})
    assert redis_image(stand_in, MINE) == STAND_IN_REDIS_IMAGE
    assert redis_image(FakeRunner({}), MINE) is None
