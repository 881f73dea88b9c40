"""The Helm chart: lint, schema-valid manifests for Kubernetes 1.30-1.33 and the CRDs, and its invariants."""

from __future__ import annotations

import itertools
import json
import math
import re
import shutil
import subprocess
from pathlib import Path

import kubernetes_validate
import pytest
import yaml
from kubernetes_validate.utils import all_versions as kubernetes_validate_versions

from tests.deploy.helm_chart import (
    CHART,
    CI_VALUES,
    NAMESPACE,
    ROOT,
    SERVICE_MONITOR_API,
    Manifest,
    Render,
    container,
    helm_template,
    plain_env,
    rendered,
    values_file_yaml,
)
from tests.deploy.values_doc import documented_values

pytestmark = pytest.mark.deploy

CI = {path.name.removesuffix("-values.yaml"): path for path in CI_VALUES}
WANTED_KUBERNETES = ("1.30", "1.31", "1.32", "1.33")
SUPPORTED_KUBERNETES = tuple(
    v for v in WANTED_KUBERNETES if v in {".".join(x.split(".")[:2]) for x in kubernetes_validate_versions()}
)
CUSTOM_API_GROUPS = ("keda.sh/", "monitoring.coreos.com/")
WORKER_INTERFACE = ROOT / "docs" / "worker-interface.md"


def ci(name: str) -> Path:
    return CI[name]


def render_all_modes(helm: str) -> dict[str, Render]:
    """Render every ci/ values file, with the ServiceMonitor CRD present."""
    results = {}
    for name, path in CI.items():
        result = helm_template(helm, [path], api_versions=[SERVICE_MONITOR_API])
        assert result.returncode == 0, f"{name}: {result.stderr}"
        results[name] = result
    return results


def worker_deployment(result: Render) -> Manifest:
    return result.one("Deployment", "worker")


def worker_container(result: Render) -> Manifest:
    return container(worker_deployment(result)["spec"]["template"]["spec"], "worker")


# -- the ci/ files cover every mode -----------------------------------------------------------------


def test_ci_values_cover_every_autoscaling_mode() -> None:
    modes = {values_file_yaml(p).get("autoscaling", {}).get("mode") for p in CI_VALUES}
    assert modes == {"none", "hpa", "keda"}
    assert {"none", "hpa", "keda"} <= set(CI)


# -- helm lint ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("values_file", CI_VALUES, ids=lambda p: p.name)
def test_helm_lint_strict(helm: str, values_file: Path) -> None:
    proc = subprocess.run(
        [helm, "lint", "--strict", str(CHART), "-f", str(values_file)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "0 chart(s) failed" in proc.stdout


# -- schemas ------------------------------------------------------------------------------------------


def test_kubernetes_validate_has_the_versions_we_target() -> None:
    print(f"kubernetes-validate {kubernetes_validate.__version__}: validating against {SUPPORTED_KUBERNETES}")
    assert SUPPORTED_KUBERNETES == WANTED_KUBERNETES, (
        f"kubernetes-validate {kubernetes_validate.__version__} lacks some of {WANTED_KUBERNETES}"
    )


@pytest.mark.parametrize("kube", SUPPORTED_KUBERNETES)
@pytest.mark.parametrize("values_file", CI_VALUES, ids=lambda p: p.name)
def test_manifests_are_valid_kubernetes_objects(helm: str, values_file: Path, kube: str) -> None:
    # Given every object the chart renders for this values file (hooks and the test pod included)
    result = helm_template(
        helm, [values_file], kube_version=f"{kube}.0", api_versions=[SERVICE_MONITOR_API, "keda.sh/v1alpha1"]
    )
    assert result.returncode == 0, result.stderr
    builtin = [d for d in result.docs if not d["apiVersion"].startswith(CUSTOM_API_GROUPS)]
    assert len(builtin) >= 4
    # Then each is valid for that Kubernetes version under the strict schema (no unknown fields)
    for doc in builtin:
        try:
            validated = kubernetes_validate.validate(doc, kube, strict=True)
        except kubernetes_validate.ValidationError as exc:
            path = ".".join(str(p) for p in exc.path)
            pytest.fail(f"{doc['kind']}/{doc['metadata']['name']} invalid for {kube}: {path}: {exc.message}")
        assert validated == kube


# Fields of the custom resources that the chart writes, as the public CRDs define them
# (kedacore/keda config/crd/bases, prometheus-operator's ServiceMonitor CRD). HAND-WRITTEN and
# limited to what we use: the CRD-generated validators below check types, enums, patterns and
# required fields but accept unknown fields, which the API server's strict field validation rejects.
ANY = "any"
METADATA = {"name": ANY, "labels": ANY, "annotations": ANY}
REDIS_TRIGGER_METADATA = {
    "listName",
    "listLength",
    "activationListLength",
    "databaseIndex",
    "enableTLS",
    "unsafeSsl",
}
REDIS_AUTH_PARAMETERS = {"address", "host", "port", "username", "password", "tls", "ca", "cert", "key"}
KNOWN_FIELDS: dict[str, dict[str, object]] = {
    "ScaledObject": {
        "apiVersion": ANY,
        "kind": ANY,
        "metadata": METADATA,
        "spec": {
            "scaleTargetRef": {"apiVersion": ANY, "kind": ANY, "name": ANY},
            "minReplicaCount": ANY,
            "maxReplicaCount": ANY,
            "pollingInterval": ANY,
            "cooldownPeriod": ANY,
            "advanced": {
                "horizontalPodAutoscalerConfig": {"behavior": ANY},
                "scalingModifiers": {
                    "formula": ANY,
                    "target": ANY,
                    "activationTarget": ANY,
                    "metricType": ANY,
                },
            },
            "triggers": [{"type": ANY, "name": ANY, "metadata": ANY, "authenticationRef": {"name": ANY}}],
        },
    },
    "TriggerAuthentication": {
        "apiVersion": ANY,
        "kind": ANY,
        "metadata": METADATA,
        "spec": {"secretTargetRef": [{"parameter": ANY, "name": ANY, "key": ANY}]},
    },
    "ServiceMonitor": {
        "apiVersion": ANY,
        "kind": ANY,
        "metadata": METADATA,
        "spec": {
            "namespaceSelector": {"matchNames": ANY},
            "selector": {"matchLabels": ANY},
            "endpoints": [{"port": ANY, "path": ANY, "interval": ANY}],
        },
    },
}


def unknown_fields(value: object, shape: object, path: str = "") -> list[str]:
    """Return the paths in value that shape does not allow."""
    if shape == ANY:
        return []
    if isinstance(shape, list):
        assert isinstance(value, list), path
        return [bad for i, item in enumerate(value) for bad in unknown_fields(item, shape[0], f"{path}[{i}]")]
    assert isinstance(shape, dict) and isinstance(value, dict), path
    found = []
    for key, item in value.items():
        if key not in shape:
            found.append(f"{path}.{key}")
        else:
            found += unknown_fields(item, shape[key], f"{path}.{key}")
    return found


@pytest.fixture(scope="session")
def crd_validator() -> str:
    """Install (once) and return the CRD-schema validator script (deploy/tools/get-crd-validators.sh)."""
    if shutil.which("node") is None or shutil.which("npm") is None:
        pytest.skip(
            "NODE/NPM NOT FOUND: THE KEDA AND SERVICEMONITOR OBJECTS ARE NOT VALIDATED AGAINST THEIR CRDs"
        )
    proc = subprocess.run(
        [str(ROOT / "deploy" / "tools" / "get-crd-validators.sh")],
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip().splitlines()[-1]


def validate_custom_resources(script: str, docs: list[Manifest]) -> list[dict[str, object]]:
    proc = subprocess.run(
        ["node", script], input=json.dumps(docs), capture_output=True, text=True, check=False, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    results: list[dict[str, object]] = json.loads(proc.stdout)
    return results


def test_custom_resources_match_their_crd_schemas(helm: str, crd_validator: str) -> None:
    # Given the KEDA and prometheus-operator objects of every mode
    custom = [
        d
        for r in render_all_modes(helm).values()
        for d in r.docs
        if d["apiVersion"].startswith(CUSTOM_API_GROUPS)
    ]
    kinds = {d["kind"] for d in custom}
    assert kinds == {"ScaledObject", "TriggerAuthentication", "ServiceMonitor"}
    # Then the CRD-generated schemas accept them
    results = validate_custom_resources(crd_validator, custom)
    assert [r for r in results if not r["ok"]] == []
    assert len(results) == len(custom)
    # And they use no field the CRDs lack, and only parameters the redis scaler knows
    for doc in custom:
        assert unknown_fields(doc, KNOWN_FIELDS[doc["kind"]]) == [], doc["kind"]
    for so in (d for d in custom if d["kind"] == "ScaledObject"):
        for trigger in so["spec"]["triggers"]:
            assert set(trigger["metadata"]) <= REDIS_TRIGGER_METADATA
            assert all(isinstance(v, str) for v in trigger["metadata"].values())
    for ta in (d for d in custom if d["kind"] == "TriggerAuthentication"):
        assert {ref["parameter"] for ref in ta["spec"]["secretTargetRef"]} <= REDIS_AUTH_PARAMETERS


def test_crd_validator_rejects_a_broken_scaled_object(helm: str, crd_validator: str) -> None:
    # Given a rendered ScaledObject with a string where the CRD wants an integer
    so = json.loads(json.dumps(rendered(helm, ci("keda")).one("ScaledObject")))
    so["spec"]["minReplicaCount"] = "zero"
    del so["spec"]["triggers"][0]["type"]
    # Then the validator says so (it is not a rubber stamp)
    [result] = validate_custom_resources(crd_validator, [so])
    assert result["ok"] is False
    assert "minReplicaCount" in str(result["error"])
    assert "type" in str(result["error"])


@pytest.mark.parametrize("kube", SUPPORTED_KUBERNETES)
def test_scaled_object_behavior_is_a_valid_hpa_behavior(helm: str, kube: str) -> None:
    # KEDA copies advanced.horizontalPodAutoscalerConfig.behavior into its HPA unchanged.
    so = rendered(helm, ci("keda")).one("ScaledObject")
    behavior = so["spec"]["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]
    hpa = {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": {"name": "keda-hpa"},
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "w"},
            "maxReplicas": 1,
            "behavior": behavior,
        },
    }
    kubernetes_validate.validate(hpa, kube, strict=True)


# -- autoscaling invariants -----------------------------------------------------------------------------


@pytest.mark.parametrize(("mode", "hpas", "scaled_objects"), [("none", 0, 0), ("hpa", 1, 0), ("keda", 0, 1)])
def test_one_autoscaler_at_most_and_never_both(helm: str, mode: str, hpas: int, scaled_objects: int) -> None:
    for result in (rendered(helm, autoscaling__mode=mode), rendered(helm, ci(mode))):
        assert len(result.of_kind("HorizontalPodAutoscaler")) == hpas
        assert len(result.of_kind("ScaledObject")) == scaled_objects
        assert len(result.of_kind("TriggerAuthentication")) == scaled_objects
        targets = [
            d["spec"]["scaleTargetRef"]["name"]
            for d in result.of_kind("HorizontalPodAutoscaler") + result.of_kind("ScaledObject")
        ]
        assert targets == [worker_deployment(result)["metadata"]["name"]] * (hpas + scaled_objects)


def test_every_ci_file_renders_at_most_one_autoscaler(helm: str) -> None:
    for name, result in render_all_modes(helm).items():
        assert len(result.of_kind("HorizontalPodAutoscaler")) + len(result.of_kind("ScaledObject")) <= 1, name


@pytest.mark.parametrize("mode", ["none", "hpa", "keda"])
def test_worker_replicas_only_when_not_autoscaled(helm: str, mode: str) -> None:
    spec = worker_deployment(rendered(helm, autoscaling__mode=mode, worker__replicas=3))["spec"]
    if mode == "none":
        assert spec["replicas"] == 3
    else:
        assert "replicas" not in spec


def desired_replicas(total_ready: int, tasks_per_worker: int, low: int, high: int) -> int:
    """The HPA's steady-state answer for an AverageValue target, clamped to [low, high]."""
    return min(high, max(low, math.ceil(total_ready / tasks_per_worker)))


def queue_depths() -> list[dict[str, int]]:
    """Per-queue depths from empty to far past any maximum."""
    depths = [0, 1, 7, 8, 9, 15, 16, 17, 31, 32, 33, 100, 159, 160, 161, 319, 320, 321, 1000, 10**6]
    return [{"default": d, "emails": (d * 3) // 7} for d in depths]


def test_hpa_scales_on_summed_queue_depth_within_min_and_max(helm: str) -> None:
    # Given the rendered HPA of ci/hpa-values.yaml
    result = rendered(helm, ci("hpa"))
    hpa = result.one("HorizontalPodAutoscaler")["spec"]
    [metric] = hpa["metrics"]
    assert metric["type"] == "External"
    external = metric["external"]
    assert external["metric"]["name"] == "conveyor_queue_ready"
    assert external["target"]["type"] == "AverageValue"
    per_worker = int(external["target"]["averageValue"])
    low, high = hpa["minReplicas"], hpa["maxReplicas"]
    values = values_file_yaml(ci("hpa"))
    assert per_worker == values["autoscaling"]["tasksPerWorker"]
    assert (low, high) == (values["autoscaling"]["minReplicas"], values["autoscaling"]["maxReplicas"])
    # And its selector picks every served queue from the one exporter Service
    selector = external["metric"]["selector"]
    [queues] = [e["values"] for e in selector["matchExpressions"] if e["key"] == "queue"]
    assert queues == ["default", "emails"]
    assert selector["matchLabels"]["service"] == result.one("Service", "queue-metrics")["metadata"]["name"]
    # When the HPA formula is applied to a range of depths (the adapter returns one series per queue,
    # the HPA adds them up)
    answers = []
    for depths in queue_depths():
        total = sum(depths[q] for q in queues)
        replicas = desired_replicas(total, per_worker, low, high)
        answers.append((total, replicas))
        # Then the answer stays within [min, max]
        assert low <= replicas <= high
    # And it is min when idle, max when the backlog exceeds max workers' share, and never shrinks as
    # the backlog grows
    assert answers[0] == (0, low)
    assert answers[-1][1] == high
    assert all(a[1] <= b[1] for a, b in itertools.pairwise(answers))
    assert desired_replicas(per_worker * 5, per_worker, low, high) == 5
    assert desired_replicas(per_worker * 5 + 1, per_worker, low, high) == 6
    assert any(low < r < high for _, r in answers)


def test_keda_aims_at_the_same_sum_as_the_hpa(helm: str) -> None:
    # Given the ScaledObject of ci/keda-values.yaml
    so = rendered(helm, ci("keda")).one("ScaledObject")["spec"]
    values = values_file_yaml(ci("keda"))["autoscaling"]
    per_worker = values["tasksPerWorker"]
    modifiers = so["advanced"]["scalingModifiers"]
    # Then the composite metric adds every trigger and targets tasksPerWorker per worker
    names = [t["name"] for t in so["triggers"]]
    assert sorted(modifiers["formula"].split(" + ")) == sorted(names)
    assert modifiers["metricType"] == "AverageValue"
    assert int(modifiers["target"]) == per_worker
    assert (so["minReplicaCount"], so["maxReplicaCount"]) == (0, values["maxReplicas"])
    for depths in queue_depths():
        replicas = desired_replicas(sum(depths.values()), per_worker, 0, so["maxReplicaCount"])
        assert 0 <= replicas <= so["maxReplicaCount"]
    assert desired_replicas(0, per_worker, 0, so["maxReplicaCount"]) == 0


def test_single_queue_keda_needs_no_modifier(helm: str) -> None:
    so = rendered(helm, autoscaling__mode="keda", worker__queues=["default"]).one("ScaledObject")["spec"]
    assert "scalingModifiers" not in so["advanced"]
    [trigger] = so["triggers"]
    assert trigger["metadata"]["listLength"] == "8"


def test_one_behavior_block_feeds_either_mode(helm: str) -> None:
    behavior = {
        "scaleDown": {
            "stabilizationWindowSeconds": 42,
            "policies": [{"type": "Pods", "value": 1, "periodSeconds": 30}],
        }
    }
    hpa = rendered(helm, autoscaling__mode="hpa", autoscaling__behavior=behavior).one(
        "HorizontalPodAutoscaler"
    )
    so = rendered(helm, autoscaling__mode="keda", autoscaling__behavior=behavior).one("ScaledObject")
    assert hpa["spec"]["behavior"] == so["spec"]["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]
    assert hpa["spec"]["behavior"]["scaleDown"] == behavior["scaleDown"]


@pytest.mark.parametrize("values_file", ["keda", "keda-tls-existing-secret"])
def test_keda_triggers_count_exactly_the_ready_sets(helm: str, values_file: str) -> None:
    # Given a keda ci file and its queues and key prefix
    values = values_file_yaml(ci(values_file))
    prefix = values.get("app", {}).get("keyPrefix", "conveyor")
    queues = values.get("worker", {}).get("queues", ["default", "emails"])
    result = rendered(helm, ci(values_file))
    so = result.one("ScaledObject")
    auth = result.one("TriggerAuthentication")
    # Then there is one redis trigger per queue on {prefix}:queue:<name>, authenticated by the chart's
    # TriggerAuthentication
    triggers = so["spec"]["triggers"]
    assert [t["type"] for t in triggers] == ["redis"] * len(queues)
    assert sorted(t["metadata"]["listName"] for t in triggers) == sorted(
        f"{{{prefix}}}:queue:{q}" for q in queues
    )
    assert {t["authenticationRef"]["name"] for t in triggers} == {auth["metadata"]["name"]}
    for t in triggers:
        assert re.fullmatch(r"\{[^{}]+\}:queue:[^:]+", t["metadata"]["listName"])


def test_keda_reads_credentials_from_the_chart_secret(helm: str) -> None:
    # Given a password-protected URL on database 2 in the chart-made Secret
    result = rendered(helm, ci("keda"))
    secret = result.one("Secret")
    data = secret["stringData"]
    assert data["redis-url"] == "redis://:s3cret@redis-master.data.svc:6379/2"
    assert data["redis-address"] == "redis-master.data.svc:6379"
    assert data["redis-password"] == "s3cret"
    assert data["redis-username"] == ""
    # Then every TriggerAuthentication reference names a key of that Secret
    auth = result.one("TriggerAuthentication")["spec"]["secretTargetRef"]
    assert {r["parameter"] for r in auth} == {"address", "username", "password"}
    for ref in auth:
        assert ref["name"] == secret["metadata"]["name"]
        assert ref["key"] in data
    for trigger in result.one("ScaledObject")["spec"]["triggers"]:
        assert trigger["metadata"]["databaseIndex"] == "2"
        assert trigger["metadata"]["enableTLS"] == "false"


def test_tls_passes_through_to_keda(helm: str) -> None:
    for result in (
        rendered(helm, autoscaling__mode="keda", redis__url="rediss://u:p@cache.example:6380/0"),
        rendered(helm, ci("keda-tls-existing-secret")),
    ):
        for trigger in result.one("ScaledObject")["spec"]["triggers"]:
            assert trigger["metadata"]["enableTLS"] == "true"
    assert (
        rendered(helm, redis__url="rediss://u:p@cache.example:6380/0").one("Secret")["stringData"][
            "redis-address"
        ]
        == "cache.example:6380"
    )


def test_existing_secret_is_used_and_none_is_made(helm: str) -> None:
    result = rendered(helm, ci("keda-tls-existing-secret"))
    assert result.of_kind("Secret") == []
    [redis_url] = [e for e in worker_container(result)["env"] if e["name"] == "REDIS_URL"]
    assert redis_url["valueFrom"]["secretKeyRef"] == {"name": "managed-redis", "key": "url"}
    refs = result.one("TriggerAuthentication")["spec"]["secretTargetRef"]
    assert {(r["parameter"], r["name"], r["key"]) for r in refs} == {
        ("address", "managed-redis", "address"),
        ("username", "managed-redis", "username"),
        ("password", "managed-redis", "password"),
    }


def test_keda_may_scale_to_zero_but_hpa_may_not(helm: str) -> None:
    assert rendered(helm, ci("keda")).one("ScaledObject")["spec"]["minReplicaCount"] == 0
    result = helm_template(helm, set_values={"autoscaling.mode": "hpa", "autoscaling.minReplicas": 0})
    assert result.returncode != 0
    assert "use autoscaling.mode=keda to scale to zero" in result.stderr


# -- the queue-metrics exporter: one place, always on ------------------------------------------------


def test_hpa_metric_comes_from_one_always_on_exporter(helm: str) -> None:
    # Given mode hpa with the ServiceMonitor CRD present
    result = helm_template(helm, [ci("hpa")], api_versions=[SERVICE_MONITOR_API])
    exporter = result.one("Deployment", "queue-metrics")
    # Then the exporter is one replica that no autoscaler targets, running the worker image metrics-only
    assert exporter["spec"]["replicas"] == 1
    autoscaled = {d["spec"]["scaleTargetRef"]["name"] for d in result.of_kind("HorizontalPodAutoscaler")}
    assert exporter["metadata"]["name"] not in autoscaled
    exporter_container = container(exporter["spec"]["template"]["spec"], "queue-metrics")
    assert exporter_container["image"] == worker_container(result)["image"]
    assert exporter_container["command"] == ["conveyor-worker"]
    assert exporter_container["args"] == ["--metrics-only"]
    assert plain_env(exporter_container)["CONVEYOR_METRICS_ONLY"] == "1"
    assert plain_env(exporter_container)["CONVEYOR_QUEUES"] == "default,emails"
    # And the ServiceMonitor scrapes only the exporter's Service, never the workers
    service = result.one("Service", "queue-metrics")
    monitor = result.one("ServiceMonitor")
    selector = monitor["spec"]["selector"]["matchLabels"]
    assert selector.items() <= service["metadata"]["labels"].items()
    assert service["spec"]["selector"] == exporter["spec"]["selector"]["matchLabels"]
    for other in result.of_kind("Service"):
        if other is not service:
            assert not selector.items() <= other["metadata"]["labels"].items()
    worker_labels = worker_deployment(result)["spec"]["template"]["metadata"]["labels"]
    assert not service["spec"]["selector"].items() <= worker_labels.items()
    assert monitor["spec"]["namespaceSelector"]["matchNames"] == [NAMESPACE]
    [endpoint] = monitor["spec"]["endpoints"]
    assert (endpoint["port"], endpoint["path"]) == ("metrics", "/metrics")
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"


def test_service_monitor_only_when_the_crd_exists(helm: str) -> None:
    assert helm_template(helm, [ci("hpa")]).of_kind("ServiceMonitor") == []
    assert (
        len(helm_template(helm, [ci("hpa")], api_versions=[SERVICE_MONITOR_API]).of_kind("ServiceMonitor"))
        == 1
    )
    assert (
        helm_template(helm, [ci("keda")], api_versions=[SERVICE_MONITOR_API]).of_kind("ServiceMonitor") == []
    )


def test_prometheus_adapter_rule_serves_the_hpa_metric(helm: str) -> None:
    # Given the rule shipped with the chart and the HPA's metric
    shipped = yaml.safe_load((CHART / "prometheus-adapter-values.yaml").read_text())
    result = rendered(helm, ci("hpa"))
    config_map = result.one("ConfigMap", "queue-metrics")
    assert yaml.safe_load(config_map["data"]["prometheus-adapter-values.yaml"]) == shipped
    [rule] = shipped["rules"]["external"]
    external = result.one("HorizontalPodAutoscaler")["spec"]["metrics"][0]["external"]["metric"]
    # Then the rule serves that name from that series, namespaced, one series per queue and service
    assert rule["name"]["as"] == external["name"] == "conveyor_queue_ready"
    assert rule["seriesQuery"].startswith("conveyor_queue_ready{")
    assert rule["resources"]["overrides"]["namespace"]["resource"] == "namespace"
    assert "<<.LabelMatchers>>" in rule["metricsQuery"]
    grouped = re.search(r"max by \(([^)]*)\)", rule["metricsQuery"])
    assert grouped, rule["metricsQuery"]
    by_labels = {label.strip() for label in grouped.group(1).split(",")}
    assert set(external["selector"]["matchLabels"]) | {"queue", "namespace"} <= by_labels


# -- the worker Deployment -----------------------------------------------------------------------------


def worker_interface_env_names() -> list[str]:
    """Return every CONVEYOR_* variable the worker's interface document lists."""
    return re.findall(r"^\| `(CONVEYOR_[A-Z_]+)` \|", WORKER_INTERFACE.read_text(), flags=re.M)


def test_every_worker_setting_reaches_the_worker_as_env(helm: str) -> None:
    documented = worker_interface_env_names()
    assert len(documented) >= 15
    # Given values that turn every optional setting on
    result = rendered(
        helm,
        worker__workerId="w-1",
        worker__allowedTaskModules=["exampleapp", "tests"],
        worker__podDeletionCost={"enabled": True},
        autoscaling__mode="hpa",
    )
    env = {e["name"] for e in worker_container(result)["env"]}
    exporter_env = {
        e["name"]
        for e in container(
            result.one("Deployment", "queue-metrics")["spec"]["template"]["spec"], "queue-metrics"
        )["env"]
    }
    # Then every documented variable is set on the worker (metrics-only: on the exporter)
    for name in documented:
        if name == "CONVEYOR_METRICS_ONLY":
            assert name in exporter_env
            assert name not in env
        else:
            assert name in env, name


def test_worker_env_follows_values(helm: str) -> None:
    env = plain_env(
        worker_container(
            rendered(
                helm,
                worker__concurrency=3,
                worker__queues=["a", "b"],
                worker__shutdownTimeout=50,
                worker__terminationGracePeriodSeconds=60,
                worker__batch=True,
                worker__logFormat="text",
                app__settingsModule="mysite.settings",
            )
        )
    )
    assert env["CONVEYOR_CONCURRENCY"] == "3"
    assert env["CONVEYOR_QUEUES"] == "a,b"
    assert env["CONVEYOR_SHUTDOWN_TIMEOUT"] == "50"
    assert env["CONVEYOR_BATCH"] == "1"
    assert env["CONVEYOR_LOG_FORMAT"] == "text"
    assert env["DJANGO_SETTINGS_MODULE"] == "mysite.settings"
    default_env = plain_env(worker_container(rendered(helm)))
    assert default_env["DJANGO_SETTINGS_MODULE"] == "exampleapp.settings"
    assert "CONVEYOR_WORKER_ID" not in default_env


def test_worker_probes_hit_livez_and_readyz_on_the_health_port(helm: str) -> None:
    worker = worker_container(rendered(helm, worker__healthPort=9191))
    [port] = worker["ports"]
    assert (port["name"], port["containerPort"]) == ("health", 9191)
    assert plain_env(worker)["CONVEYOR_HEALTH_PORT"] == "9191"
    assert worker["livenessProbe"]["httpGet"] == {"path": "/livez", "port": "health"}
    assert worker["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "health"}
    assert worker["command"] == ["conveyor-worker"]


def test_redis_url_comes_from_the_secret(helm: str) -> None:
    result = rendered(helm, ci("none"))
    secret = result.one("Secret")
    for name, spec in result.pod_specs():
        for c in spec["containers"]:
            refs = [e for e in c.get("env", []) if e["name"] == "REDIS_URL"]
            assert len(refs) == 1, f"{name}/{c['name']}"
            assert refs[0]["valueFrom"]["secretKeyRef"] == {
                "name": secret["metadata"]["name"],
                "key": "redis-url",
            }


def test_grace_period_exceeds_shutdown_timeout(helm: str) -> None:
    for result in render_all_modes(helm).values():
        pod = worker_deployment(result)["spec"]["template"]["spec"]
        timeout = int(plain_env(container(pod, "worker"))["CONVEYOR_SHUTDOWN_TIMEOUT"])
        assert pod["terminationGracePeriodSeconds"] > timeout


@pytest.mark.parametrize(("grace", "timeout"), [(25, 25), (10, 25), (30, 120)])
def test_rendering_fails_when_grace_period_is_not_longer_than_shutdown_timeout(
    helm: str, grace: int, timeout: int
) -> None:
    result = helm_template(
        helm, set_values={"worker.terminationGracePeriodSeconds": grace, "worker.shutdownTimeout": timeout}
    )
    assert result.returncode != 0
    assert f"worker.terminationGracePeriodSeconds ({grace}) must be greater than" in result.stderr
    assert f"than worker.shutdownTimeout ({timeout})" in result.stderr


def test_checksums_roll_pods_when_secret_or_settings_change(helm: str) -> None:
    def annotations(**values: object) -> dict[str, str]:
        pod = worker_deployment(rendered(helm, **values))["spec"]["template"]
        return pod["metadata"]["annotations"]

    base = annotations()
    other_url = annotations(redis__url="redis://elsewhere:6379/0")
    other_setting = annotations(worker__lease=60)
    assert base["checksum/secret"] != other_url["checksum/secret"]
    assert base["checksum/config"] == other_url["checksum/config"]
    assert base["checksum/config"] != other_setting["checksum/config"]
    assert base == annotations()


def test_worker_pdb_never_blocks_a_drain_at_zero(helm: str) -> None:
    result = rendered(helm, ci("keda"))
    pdb = result.one("PodDisruptionBudget", "worker")
    assert "minAvailable" not in pdb["spec"]
    assert pdb["spec"]["maxUnavailable"] == 1
    assert (
        pdb["spec"]["selector"]["matchLabels"] == worker_deployment(result)["spec"]["selector"]["matchLabels"]
    )


# -- hardening on every pod ----------------------------------------------------------------------------


def test_every_pod_is_hardened(helm: str) -> None:
    checked = set()
    for mode, result in render_all_modes(helm).items():
        for name, spec in result.pod_specs():
            where = f"{mode}: {name}"
            pod_sc = spec["securityContext"]
            assert pod_sc["runAsNonRoot"] is True, where
            assert pod_sc["runAsUser"] == 10001, where
            assert pod_sc["seccompProfile"] == {"type": "RuntimeDefault"}, where
            token = spec.get("automountServiceAccountToken")
            deletion_cost = any(
                e["name"] == "CONVEYOR_POD_DELETION_COST"
                for c in spec["containers"]
                for e in c.get("env", [])
            )
            assert token is deletion_cost, f"{where}: automountServiceAccountToken={token}"
            tmp_volumes = {v["name"] for v in spec["volumes"] if "emptyDir" in v}
            for c in spec.get("initContainers", []) + spec["containers"]:
                sc = c["securityContext"]
                cwhere = f"{where}/{c['name']}"
                assert sc["runAsNonRoot"] is True, cwhere
                assert sc["runAsUser"] == 10001, cwhere
                assert sc["readOnlyRootFilesystem"] is True, cwhere
                assert sc["allowPrivilegeEscalation"] is False, cwhere
                assert sc["capabilities"] == {"drop": ["ALL"]}, cwhere
                assert sc["seccompProfile"] == {"type": "RuntimeDefault"}, cwhere
                assert sc.get("privileged", False) is False, cwhere
                tmp = [m for m in c["volumeMounts"] if m["mountPath"] == "/tmp"]
                assert len(tmp) == 1 and tmp[0]["name"] in tmp_volumes, cwhere
                assert c["resources"].get("requests"), cwhere
                assert c["resources"].get("limits"), cwhere
            checked.add(name)
    names = " ".join(sorted(checked))
    for part in ("worker", "queue-metrics", "web", "migrate", "test-redis"):
        assert part in names, f"no {part} pod was checked"


def test_pod_deletion_cost_wiring(helm: str) -> None:
    # Given the option on
    result = rendered(helm, worker__podDeletionCost={"enabled": True})
    pod = worker_deployment(result)["spec"]["template"]["spec"]
    worker = container(pod, "worker")
    env = {e["name"]: e for e in worker["env"]}
    # Then the worker knows its pod and may patch pods in its namespace through its own account
    assert env["CONVEYOR_POD_DELETION_COST"]["value"] == "1"
    assert env["POD_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    assert env["POD_NAMESPACE"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.namespace"
    account = result.one("ServiceAccount")
    role = result.one("Role")
    binding = result.one("RoleBinding")
    assert pod["serviceAccountName"] == account["metadata"]["name"]
    assert pod["automountServiceAccountToken"] is True
    assert role["rules"] == [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "patch"]}]
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "Role",
        "name": role["metadata"]["name"],
    }
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": account["metadata"]["name"], "namespace": NAMESPACE}
    ]
    # And without it there is no account, no RBAC and no token
    off = rendered(helm)
    assert off.of_kind("ServiceAccount") == off.of_kind("Role") == off.of_kind("RoleBinding") == []
    off_pod = worker_deployment(off)["spec"]["template"]["spec"]
    assert off_pod["automountServiceAccountToken"] is False
    assert "serviceAccountName" not in off_pod
    assert "CONVEYOR_POD_DELETION_COST" not in {e["name"] for e in container(off_pod, "worker")["env"]}


# -- web, migrations, helm test ------------------------------------------------------------------------


def test_web_runs_gunicorn_with_healthz_probes(helm: str) -> None:
    result = rendered(helm, ci("none"))
    web = result.one("Deployment", "web")
    web_container = container(web["spec"]["template"]["spec"], "web")
    command = web_container["command"] + web_container["args"]
    assert command[:4] == ["gunicorn", "exampleapp.wsgi", "--bind", "0.0.0.0:8000"]
    assert "--no-control-socket" in command  # its default path is under $HOME, which the image lacks
    assert web_container["image"].startswith("conveyor-web:")
    assert web_container["ports"] == [{"name": "http", "containerPort": 8000, "protocol": "TCP"}]
    for probe in ("livenessProbe", "readinessProbe"):
        get = web_container[probe]["httpGet"]
        assert (get["path"], get["port"]) == ("/healthz", "http")
        assert {"name": "Host", "value": "localhost"} in get["httpHeaders"]
    service = result.one("Service", "web")
    assert service["spec"]["selector"] == web["spec"]["selector"]["matchLabels"]
    assert service["spec"]["ports"][0]["targetPort"] == "http"
    allowed = plain_env(web_container)["DJANGO_ALLOWED_HOSTS"].split(",")
    assert "localhost" in allowed and service["metadata"]["name"] in allowed
    assert rendered(helm).of_kind("Service") == []


def test_migrations_job_is_a_pre_install_and_pre_upgrade_hook(helm: str) -> None:
    result = rendered(helm, ci("none"))
    job = result.one("Job")
    annotations = job["metadata"]["annotations"]
    assert annotations["helm.sh/hook"] == "pre-install,pre-upgrade"
    migrate = container(job["spec"]["template"]["spec"], "migrate")
    assert migrate["command"] == ["python", "example/manage.py", "migrate", "--noinput"]
    assert migrate["image"].startswith("conveyor-web:")
    # The Secret the Job reads is a hook that runs first
    secret = result.one("Secret")["metadata"]["annotations"]
    assert secret["helm.sh/hook"] == annotations["helm.sh/hook"]
    assert int(secret["helm.sh/hook-weight"]) < int(annotations["helm.sh/hook-weight"])
    assert "annotations" not in rendered(helm).one("Secret")["metadata"]


def test_helm_test_pod_pings_redis(helm: str) -> None:
    pod = rendered(helm).one("Pod")
    assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    [c] = pod["spec"]["containers"]
    assert c["image"].startswith("conveyor-worker:")
    script = c["command"][-1]
    assert c["command"][:2] == ["python", "-c"]
    assert "redis.Redis.from_url" in script and ".ping()" in script
    assert pod["spec"]["restartPolicy"] == "Never"
    compile(script, "helm-test", "exec")


# -- values: schema, docs, NOTES ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"autoscaling.mode": "both"}, "autoscaling.mode"),
        ({"autoscaling.mode": "HPA"}, "autoscaling.mode"),
        ({"worker.replicas": -1}, "worker.replicas"),
        ({"autoscaling.minReplicas": -1}, "autoscaling.minReplicas"),
        ({"autoscaling.maxReplicas": 0}, "autoscaling.maxReplicas"),
        ({"autoscaling.tasksPerWorker": 0}, "autoscaling.tasksPerWorker"),
        ({"worker.concurrency": 0}, "worker.concurrency"),
        ({"worker.concurrency": "8"}, "worker.concurrency"),
        ({"worker.healthPort": 0}, "worker.healthPort"),
        ({"worker.shutdownTimeout": -5}, "worker.shutdownTimeout"),
        ({"worker.logFormat": "xml"}, "worker.logFormat"),
        ({"worker.queues": []}, "worker.queues"),
        ({"worker.queues": ["a,b"]}, "worker.queues"),
        ({"image.worker.repository": ""}, "image.worker.repository"),
        ({"image.web.tag": None}, "image.web"),
        ({"redis.url": "http://redis:6379"}, "redis.url"),
        ({"redis.url": ""}, "redis.url"),
        ({"app.keyPrefix": ""}, "app.keyPrefix"),
        ({"worker.replica": 2}, "replica"),
        ({"autoscalling": {"mode": "hpa"}}, "autoscalling"),
    ],
)
def test_schema_rejects_bad_values(helm: str, values: dict[str, object], message: str) -> None:
    result = helm_template(helm, set_values=values)
    assert result.returncode != 0, f"accepted {values}"
    assert message in result.stderr


@pytest.mark.parametrize(
    ("values", "message"),
    [
        (
            {"autoscaling.minReplicas": 5, "autoscaling.maxReplicas": 2},
            "must not exceed autoscaling.maxReplicas",
        ),
        ({"autoscaling.mode": "keda", "worker.queues": ["*"]}, "must list plain queue names"),
        ({"autoscaling.mode": "hpa", "worker.queues": ["default", "-emails"]}, "must list plain queue names"),
    ],
)
def test_chart_rejects_inconsistent_values(helm: str, values: dict[str, object], message: str) -> None:
    result = helm_template(helm, set_values=values)
    assert result.returncode != 0
    assert message in result.stderr


def test_mode_none_accepts_every_queue(helm: str) -> None:
    env = plain_env(worker_container(rendered(helm, worker__queues=["*", "-emails"])))
    assert env["CONVEYOR_QUEUES"] == "*,-emails"


def test_every_value_is_documented_and_listed_in_the_readme() -> None:
    documented, undocumented = documented_values(CHART / "values.yaml")
    assert undocumented == []
    readme = (CHART / "README.md").read_text()
    missing = [v.path for v in documented if f"| `{v.path}` |" not in readme]
    assert missing == []
    assert len(documented) > 80


def render_notes(helm: str, tmp_path: Path, values_file: Path) -> str:
    """Render NOTES.txt (helm template skips it) by wrapping it in a template of a chart copy."""
    chart = tmp_path / "conveyor"
    shutil.copytree(CHART, chart)
    notes = (chart / "templates" / "NOTES.txt").read_text()
    (chart / "templates" / "_notes.tpl").write_text('{{- define "test.notes" -}}\n' + notes + "{{- end -}}\n")
    (chart / "templates" / "zz-notes.yaml").write_text('notes: {{ include "test.notes" . | toJson }}\n')
    proc = subprocess.run(
        [
            helm,
            "template",
            "rel",
            str(chart),
            "-n",
            NAMESPACE,
            "-f",
            str(values_file),
            "-s",
            "templates/zz-notes.yaml",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    notes_text: str = yaml.safe_load(proc.stdout)["notes"]
    return notes_text


@pytest.mark.parametrize(
    ("mode", "command"),
    [("none", "kubectl scale"), ("hpa", "kubectl get hpa"), ("keda", "kubectl get scaledobject")],
)
def test_notes_tell_how_to_watch_each_mode(helm: str, tmp_path: Path, mode: str, command: str) -> None:
    notes = render_notes(helm, tmp_path, ci(mode))
    assert (
        f"kubectl logs -n {NAMESPACE} -l app.kubernetes.io/instance=rel,app.kubernetes.io/component=worker -f"
        in notes
    )
    assert command in notes
    others = {
        "none": "kubectl scale",
        "hpa": f"kubectl get hpa -n {NAMESPACE} rel-conveyor-worker",
        "keda": "kubectl get scaledobject",
    }
    for other_mode, other in others.items():
        if other_mode != mode:
            assert other not in notes
    assert f"helm test -n {NAMESPACE} rel" in notes
