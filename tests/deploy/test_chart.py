"""The Helm chart: lint, schema-valid manifests for Kubernetes 1.30-1.33 and the CRDs, and its invariants."""

from __future__ import annotations

import itertools
import json
import math
import re
import shutil
import subprocess
from pathlib import Path
from urllib.parse import urlsplit

import kubernetes_validate
import pytest
import yaml
from kubernetes_validate.utils import all_versions as kubernetes_validate_versions

from tests.deploy.helm_chart import (
    CHART,
    CI_VALUES,
    NAMESPACE,
    POD_MONITOR_API,
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
ADMISSION_POLICY_API = "admissionregistration.k8s.io/v1/ValidatingAdmissionPolicy"
COST_ANNOTATION = "controller.kubernetes.io/pod-deletion-cost"


def ci(name: str) -> Path:
    return CI[name]


def render_all_modes(helm: str) -> dict[str, Render]:
    """Render every ci/ values file, with the ServiceMonitor and PodMonitor CRDs present."""
    results = {}
    for name, path in CI.items():
        result = helm_template(helm, [path], api_versions=[SERVICE_MONITOR_API, POD_MONITOR_API])
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
        helm,
        [values_file],
        kube_version=f"{kube}.0",
        api_versions=[SERVICE_MONITOR_API, "keda.sh/v1alpha1", ADMISSION_POLICY_API],
    )
    assert result.returncode == 0, result.stderr
    builtin = [d for d in result.docs if not d["apiVersion"].startswith(CUSTOM_API_GROUPS)]
    assert len(builtin) >= 4
    if values_file_yaml(values_file).get("worker", {}).get("podDeletionCost", {}).get("enabled"):
        assert {"ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding"} <= {
            d["kind"] for d in builtin
        }
    # Then each is valid for that Kubernetes version under the strict schema (no unknown fields)
    for doc in builtin:
        try:
            validated = kubernetes_validate.validate(doc, kube, strict=True)
        except kubernetes_validate.ValidationError as exc:
            path = ".".join(str(p) for p in exc.path)
            pytest.fail(f"{doc['kind']}/{doc['metadata']['name']} invalid for {kube}: {path}: {exc.message}")
        assert validated == kube


# Fields of the custom resources that the chart writes, as the public CRDs define them
# (kedacore/keda config/crd/bases, prometheus-operator's ServiceMonitor and PodMonitor CRDs). HAND-WRITTEN and
# limited to what we use: the CRD-generated validators below check types, enums, patterns and
# required fields but accept unknown fields, which the API server's strict field validation rejects.
ANY = "any"
METADATA = {"name": ANY, "labels": ANY, "annotations": ANY}
METRICS_API_TRIGGER_METADATA = {"url", "format", "valueLocation", "targetValue", "activationTargetValue"}
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
            "advanced": {"horizontalPodAutoscalerConfig": {"behavior": ANY}},
            "triggers": [{"type": ANY, "name": ANY, "metricType": ANY, "metadata": ANY}],
        },
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
    "PodMonitor": {
        "apiVersion": ANY,
        "kind": ANY,
        "metadata": METADATA,
        "spec": {
            "namespaceSelector": {"matchNames": ANY},
            "selector": {"matchLabels": ANY},
            "podMetricsEndpoints": [
                {
                    "port": ANY,
                    "path": ANY,
                    "interval": ANY,
                    "metricRelabelings": [{"sourceLabels": ANY, "regex": ANY, "action": ANY}],
                }
            ],
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
    assert kinds == {"ScaledObject", "ServiceMonitor", "PodMonitor"}
    # Then the CRD-generated schemas accept them
    results = validate_custom_resources(crd_validator, custom)
    assert [r for r in results if not r["ok"]] == []
    assert len(results) == len(custom)
    # And they use no field the CRDs lack, and only parameters the metrics-api scaler knows
    for doc in custom:
        assert unknown_fields(doc, KNOWN_FIELDS[doc["kind"]]) == [], doc["kind"]
    for so in (d for d in custom if d["kind"] == "ScaledObject"):
        for trigger in so["spec"]["triggers"]:
            assert trigger["type"] == "metrics-api"
            assert set(trigger["metadata"]) <= METRICS_API_TRIGGER_METADATA
            assert all(isinstance(v, str) for v in trigger["metadata"].values())


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
        assert result.of_kind("TriggerAuthentication") == []  # KEDA reads the exporter, not Redis
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


def desired_replicas(work: int, tasks_per_worker: int, low: int, high: int) -> int:
    """The HPA's steady-state answer for an AverageValue target, clamped to [low, high]."""
    return min(high, max(low, math.ceil(work / tasks_per_worker)))


def queue_loads() -> list[dict[str, int]]:
    """Per-queue work (ready + due + running) from empty to far past any maximum."""
    loads = [0, 1, 7, 8, 9, 15, 16, 17, 31, 32, 33, 100, 159, 160, 161, 319, 320, 321, 1000, 10**6]
    return [{"default": n, "emails": (n * 3) // 7} for n in loads]


def test_hpa_scales_on_summed_work_per_worker_slot(helm: str) -> None:
    # Given the rendered HPA of ci/hpa-values.yaml, which leaves tasksPerWorker at its default
    result = rendered(helm, ci("hpa"))
    hpa = result.one("HorizontalPodAutoscaler")["spec"]
    [metric] = hpa["metrics"]
    assert metric["type"] == "External"
    external = metric["external"]
    # Then it reads the work gauge (ready + due scheduled + running), one task per worker slot
    assert external["metric"]["name"] == "conveyor_queue_work"
    assert external["target"]["type"] == "AverageValue"
    per_worker = int(external["target"]["averageValue"])
    low, high = hpa["minReplicas"], hpa["maxReplicas"]
    values = values_file_yaml(ci("hpa"))
    assert "tasksPerWorker" not in values["autoscaling"]
    assert per_worker == values["worker"]["concurrency"]
    assert per_worker == int(plain_env(worker_container(result))["CONVEYOR_CONCURRENCY"])
    assert (low, high) == (values["autoscaling"]["minReplicas"], values["autoscaling"]["maxReplicas"])
    # And its selector picks every served queue from the one exporter Service
    selector = external["metric"]["selector"]
    [queues] = [e["values"] for e in selector["matchExpressions"] if e["key"] == "queue"]
    assert queues == ["default", "emails"]
    assert selector["matchLabels"]["service"] == result.one("Service", "queue-metrics")["metadata"]["name"]
    # When the HPA formula is applied to a range of loads (the adapter returns one series per queue,
    # the HPA adds them up)
    answers = []
    for loads in queue_loads():
        total = sum(loads[q] for q in queues)
        replicas = desired_replicas(total, per_worker, low, high)
        answers.append((total, replicas))
        # Then the answer stays within [min, max]
        assert low <= replicas <= high
    # And it is min when idle, max when the work exceeds max workers' slots, and never shrinks as
    # the work grows
    assert answers[0] == (0, low)
    assert answers[-1][1] == high
    assert all(a[1] <= b[1] for a, b in itertools.pairwise(answers))
    assert desired_replicas(per_worker * 5, per_worker, low, high) == 5
    assert desired_replicas(per_worker * 5 + 1, per_worker, low, high) == 6
    assert any(low < r < high for _, r in answers)


def keda_replicas(work: int, running: int, triggers: dict[str, Manifest], low: int, high: int) -> int:
    """KEDA's steady-state answer: zero (at minReplicaCount 0) when no trigger is active, else the
    HPA's: the largest ceil(value / target) over the triggers, clamped to [max(low, 1), high]."""
    values = {"work": work, "running": running}
    active = any(values[n] > float(t["metadata"]["activationTargetValue"]) for n, t in triggers.items())
    if not active:
        return low
    wanted = max(math.ceil(values[n] / float(t["metadata"]["targetValue"])) for n, t in triggers.items())
    return min(high, max(low, 1, wanted))


def test_keda_aims_at_the_same_number_as_the_hpa_and_keeps_a_worker_while_a_task_runs(helm: str) -> None:
    # Given the ScaledObject of ci/keda-values.yaml (scale to zero, activation above 2 tasks of work)
    so = rendered(helm, ci("keda")).one("ScaledObject")["spec"]
    values = values_file_yaml(ci("keda"))["autoscaling"]
    per_worker = values["tasksPerWorker"]
    activation = values["keda"]["activationTasks"]
    assert activation > 0
    low, high = so["minReplicaCount"], so["maxReplicaCount"]
    assert (low, high) == (0, values["maxReplicas"])
    # Then a work trigger and a running trigger read the exporter's sums, per worker, as AverageValue
    triggers = {t["name"]: t for t in so["triggers"]}
    assert set(triggers) == {"work", "running"}
    for name, trigger in triggers.items():
        meta = trigger["metadata"]
        assert (trigger["type"], trigger["metricType"]) == ("metrics-api", "AverageValue")
        assert (meta["format"], meta["valueLocation"]) == ("json", name)
        assert int(meta["targetValue"]) == per_worker
    # And work wakes the workers above activationTasks while running keeps them up above 0
    assert triggers["work"]["metadata"]["activationTargetValue"] == str(activation)
    assert triggers["running"]["metadata"]["activationTargetValue"] == "0"
    assert "scalingModifiers" not in so.get("advanced", {})  # the exporter sums the queues already
    # When KEDA's rules are applied to a range of loads (running <= work: running is part of work)
    for loads in queue_loads():
        work = sum(loads.values())
        for running in {0, 1, work // 2, work}:
            replicas = keda_replicas(work, running, triggers, low, high)
            # Then it is the HPA's answer whenever KEDA is awake, and at least one while a task runs
            assert 0 <= replicas <= high
            if running > 0:
                assert replicas >= 1
            if work > activation or running > 0:
                assert replicas == desired_replicas(work, per_worker, max(low, 1), high)
    # And only idle, with no more waiting than activationTasks, does it sleep
    assert keda_replicas(0, 0, triggers, low, high) == 0
    assert keda_replicas(activation, 0, triggers, low, high) == 0
    assert keda_replicas(1, 1, triggers, low, high) == 1


@pytest.mark.parametrize("mode", ["hpa", "keda"])
@pytest.mark.parametrize(("concurrency", "tasks_per_worker", "target"), [(3, 0, 3), (8, 0, 8), (3, 20, 20)])
def test_tasks_per_worker_defaults_to_the_worker_slots(
    helm: str, mode: str, concurrency: int, tasks_per_worker: int, target: int
) -> None:
    result = rendered(
        helm,
        autoscaling__mode=mode,
        worker__concurrency=concurrency,
        autoscaling__tasksPerWorker=tasks_per_worker,
    )
    if mode == "hpa":
        spec = result.one("HorizontalPodAutoscaler")["spec"]
        targets = [m["external"]["target"]["averageValue"] for m in spec["metrics"]]
    else:
        targets = [t["metadata"]["targetValue"] for t in result.one("ScaledObject")["spec"]["triggers"]]
    assert targets and {int(t) for t in targets} == {target}


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
def test_keda_triggers_read_the_exporter_of_the_worker_queues(helm: str, values_file: str) -> None:
    # Given a keda ci file and its queues and key prefix
    values = values_file_yaml(ci(values_file))
    prefix = values.get("app", {}).get("keyPrefix", "conveyor")
    queues = values.get("worker", {}).get("queues", ["default", "emails"])
    result = rendered(helm, ci(values_file))
    service = result.one("Service", "queue-metrics")
    exporter = result.one("Deployment", "queue-metrics")
    exporter_container = container(exporter["spec"]["template"]["spec"], "queue-metrics")
    # Then every trigger calls /work on the exporter's Service by its cluster DNS name (KEDA runs in
    # another namespace) and port, which leads to the exporter's health port
    [port] = service["spec"]["ports"]
    for trigger in result.one("ScaledObject")["spec"]["triggers"]:
        assert "authenticationRef" not in trigger
        url = urlsplit(trigger["metadata"]["url"])
        assert (url.scheme, url.hostname, url.port, url.path) == (
            "http",
            f"{service['metadata']['name']}.{NAMESPACE}.svc",
            port["port"],
            "/work",
        )
    assert port["targetPort"] == "health"
    [health] = [p for p in exporter_container["ports"] if p["name"] == "health"]
    assert str(health["containerPort"]) == plain_env(exporter_container)["CONVEYOR_HEALTH_PORT"]
    assert service["spec"]["selector"] == exporter["spec"]["selector"]["matchLabels"]
    # And the exporter counts exactly the worker's queues under the worker's key prefix, metrics-only
    exporter_env, worker_env = plain_env(exporter_container), plain_env(worker_container(result))
    assert exporter_env["CONVEYOR_QUEUES"] == worker_env["CONVEYOR_QUEUES"] == ",".join(queues)
    assert exporter_env["CONVEYOR_KEY_PREFIX"] == worker_env["CONVEYOR_KEY_PREFIX"] == prefix
    assert exporter_env["CONVEYOR_METRICS_ONLY"] == "1"
    assert exporter["spec"]["replicas"] == 1


def test_the_chart_secret_holds_only_the_redis_url(helm: str) -> None:
    # Given a password-protected URL on database 2 in the chart-made Secret, in mode keda
    result = rendered(helm, ci("keda"))
    secret = result.one("Secret")
    # Then the Secret holds the URL alone: KEDA reads the exporter, so it needs no Redis credentials
    assert secret["stringData"] == {"redis-url": "redis://:s3cret@redis-master.data.svc:6379/2"}
    assert result.of_kind("TriggerAuthentication") == []
    # And only pods of this chart read it
    readers = {
        name
        for name, spec in result.pod_specs()
        for c in spec["containers"]
        for e in c.get("env", [])
        if e.get("valueFrom", {}).get("secretKeyRef", {}).get("name") == secret["metadata"]["name"]
    }
    assert {
        worker_deployment(result)["metadata"]["name"],
        result.one("Deployment", "queue-metrics")["metadata"]["name"],
    } <= readers


def test_existing_secret_is_used_and_none_is_made(helm: str) -> None:
    result = rendered(helm, ci("keda-tls-existing-secret"))
    assert result.of_kind("Secret") == []
    for name, spec in result.pod_specs():
        for c in spec["containers"]:
            [redis_url] = [e for e in c["env"] if e["name"] == "REDIS_URL"]
            assert redis_url["valueFrom"]["secretKeyRef"] == {"name": "managed-redis", "key": "url"}, name
    assert result.of_kind("TriggerAuthentication") == []


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
    for mode in ("hpa", "keda"):
        assert helm_template(helm, [ci(mode)]).of_kind("ServiceMonitor") == []
        with_crd = helm_template(helm, [ci(mode)], api_versions=[SERVICE_MONITOR_API])
        assert len(with_crd.of_kind("ServiceMonitor")) == 1
    # Mode none runs no exporter unless asked to, so there is nothing to scrape
    none = helm_template(helm, [ci("none")], api_versions=[SERVICE_MONITOR_API])
    assert none.of_kind("ServiceMonitor") == []
    assert [
        d for d in none.docs if d["kind"] == "Deployment" and "queue-metrics" in d["metadata"]["name"]
    ] == []


@pytest.mark.parametrize("mode", ["hpa", "keda"])
def test_every_autoscaling_mode_runs_the_exporter(helm: str, mode: str) -> None:
    result = rendered(helm, autoscaling__mode=mode)
    assert result.one("Deployment", "queue-metrics")["spec"]["replicas"] == 1
    assert result.one("Service", "queue-metrics")


def test_prometheus_adapter_rule_serves_the_hpa_metric(helm: str) -> None:
    # Given the rules shipped with the chart and the HPA's metric
    shipped = yaml.safe_load((CHART / "prometheus-adapter-values.yaml").read_text())
    result = rendered(helm, ci("hpa"))
    config_map = result.one("ConfigMap", "queue-metrics")
    assert yaml.safe_load(config_map["data"]["prometheus-adapter-values.yaml"]) == shipped
    external = result.one("HorizontalPodAutoscaler")["spec"]["metrics"][0]["external"]["metric"]
    [rule] = [r for r in shipped["rules"]["external"] if r["name"]["as"] == external["name"]]
    # Then a rule serves that name from that series, namespaced, one series per queue and service
    assert rule["name"]["as"] == external["name"] == "conveyor_queue_work"
    assert rule["seriesQuery"].startswith("conveyor_queue_work{")
    assert re.fullmatch(rule["name"]["matches"], external["name"])
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
    # Then every documented variable is set on the worker (metrics-only: on the exporter), but the
    # worker id, which each pod must pick for itself
    assert "CONVEYOR_WORKER_ID" in documented
    for name in documented:
        if name == "CONVEYOR_METRICS_ONLY":
            assert name in exporter_env
            assert name not in env
        elif name == "CONVEYOR_WORKER_ID":
            assert name not in env | exporter_env
        else:
            assert name in env, name


def test_no_pod_is_given_a_worker_id(helm: str) -> None:
    # Given every ci file, and the defaults
    results = [*render_all_modes(helm).values(), rendered(helm)]
    for result in results:
        # Then no container of the worker Deployment (or the exporter) sets CONVEYOR_WORKER_ID or
        # --worker-id: each pod takes the worker's default, its pod name + a random suffix
        worker = worker_container(result)
        assert "CONVEYOR_WORKER_ID" not in {e["name"] for e in worker["env"]}
        assert not [a for a in worker.get("args", []) if a.startswith("--worker-id")]
        for _, spec in result.pod_specs():
            for c in spec["containers"]:
                assert "CONVEYOR_WORKER_ID" not in {e["name"] for e in c.get("env", [])}


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
    result = rendered(helm, worker__podDeletionCost={"enabled": True, "admissionPolicy": True})
    pod = worker_deployment(result)["spec"]["template"]["spec"]
    worker = container(pod, "worker")
    env = {e["name"]: e for e in worker["env"]}
    # Then the worker knows its pod and may patch pods in its namespace through its own account,
    # and do nothing else: PodDeletionCost never reads a pod, it only patches its own
    assert env["CONVEYOR_POD_DELETION_COST"]["value"] == "1"
    assert env["POD_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    assert env["POD_NAMESPACE"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.namespace"
    account = result.one("ServiceAccount")
    role = result.one("Role")
    binding = result.one("RoleBinding")
    assert pod["serviceAccountName"] == account["metadata"]["name"]
    assert pod["automountServiceAccountToken"] is True
    assert role["rules"] == [{"apiGroups": [""], "resources": ["pods"], "verbs": ["patch"]}]
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "Role",
        "name": role["metadata"]["name"],
    }
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": account["metadata"]["name"], "namespace": NAMESPACE}
    ]
    # And without it there is no account, no RBAC, no policy and no token
    off = helm_template(helm, api_versions=[ADMISSION_POLICY_API])
    assert off.of_kind("ServiceAccount") == off.of_kind("Role") == off.of_kind("RoleBinding") == []
    assert off.of_kind("ValidatingAdmissionPolicy") == off.of_kind("ValidatingAdmissionPolicyBinding") == []
    off_pod = worker_deployment(off)["spec"]["template"]["spec"]
    assert off_pod["automountServiceAccountToken"] is False
    assert "serviceAccountName" not in off_pod
    assert "CONVEYOR_POD_DELETION_COST" not in {e["name"] for e in container(off_pod, "worker")["env"]}


def admission_policy(helm: str, **values: object) -> tuple[Render, Manifest, Manifest]:
    """Render ci/none-values.yaml (pod deletion cost on) on a cluster that serves the policy API."""
    result = helm_template(
        helm,
        [ci("none")],
        {k.replace("__", "."): v for k, v in values.items()},
        api_versions=[ADMISSION_POLICY_API],
    )
    assert result.returncode == 0, result.stderr
    return result, result.one("ValidatingAdmissionPolicy"), result.one("ValidatingAdmissionPolicyBinding")


def test_admission_policy_pins_the_worker_to_its_own_pod_and_one_annotation(helm: str) -> None:
    # Given pod deletion cost on a cluster that serves admissionregistration.k8s.io/v1
    result, policy, binding = admission_policy(helm)
    account = result.one("ServiceAccount")["metadata"]["name"]
    spec = policy["spec"]
    # Then the binding enforces the policy (Deny) in the release namespace only; both are
    # cluster-scoped, so the namespace is part of their name
    assert binding["spec"]["policyName"] == policy["metadata"]["name"]
    assert binding["spec"]["validationActions"] == ["Deny"]
    assert binding["spec"]["matchResources"]["namespaceSelector"]["matchLabels"] == {
        "kubernetes.io/metadata.name": NAMESPACE
    }
    assert NAMESPACE in policy["metadata"]["name"]
    assert "namespace" not in policy["metadata"] and "namespace" not in binding["metadata"]
    # And it judges pod updates (what a PATCH is at admission) by the worker's ServiceAccount alone,
    # failing closed
    assert spec["failurePolicy"] == "Fail"
    assert spec["matchConstraints"]["resourceRules"] == [
        {"apiGroups": [""], "apiVersions": ["v1"], "operations": ["UPDATE"], "resources": ["pods"]}
    ]
    [condition] = spec["matchConditions"]
    assert condition["expression"] == (
        f"request.userInfo.username == 'system:serviceaccount:{NAMESPACE}:{account}'"
    )
    variables = {v["name"]: " ".join(v["expression"].split()) for v in spec["variables"]}
    rules = [" ".join(v["expression"].split()) for v in spec["validations"]]
    assert all(v["message"] and "\n" not in v["message"] for v in spec["validations"])
    # And the pod must be the one the caller's bound token names (not merely one in the namespace)
    assert variables["tokenPods"] == (
        "request.userInfo.?extra[?'authentication.kubernetes.io/pod-name'].orValue([])"
    )
    assert "object.metadata.name in variables.tokenPods" in rules
    # And every annotation but the deletion cost must stay as it was: none added, changed or removed
    assert variables["costKey"] == f"'{COST_ANNOTATION}'"
    assert variables["newAnnotations"] == "object.metadata.?annotations.orValue({})"
    assert variables["oldAnnotations"] == "oldObject.metadata.?annotations.orValue({})"
    [annotations] = [r for r in rules if "variables.oldAnnotations.all(" in r]
    assert "variables.newAnnotations.all(k, k == variables.costKey ||" in annotations
    assert "variables.oldAnnotations[k] == variables.newAnnotations[k]" in annotations
    assert (
        "variables.oldAnnotations.all(k, k == variables.costKey || k in variables.newAnnotations)"
        in annotations
    )
    # And so must the spec, labels, finalizers and owners
    [rest] = [r for r in rules if "object.spec == oldObject.spec" in r]
    for part in ("labels", "finalizers", "ownerReferences"):
        assert f"object.metadata.?{part}.orValue(" in rest and f"oldObject.metadata.?{part}.orValue(" in rest
    # And the cost it writes must be a whole number
    [number] = [r for r in rules if ".matches(" in r]
    assert "variables.newAnnotations[variables.costKey].matches('^[0-9]{1,9}$')" in number
    assert len(rules) == 4


@pytest.mark.parametrize("kube", SUPPORTED_KUBERNETES)
def test_admission_policy_is_valid_for_every_kubernetes_we_target(helm: str, kube: str) -> None:
    result = helm_template(helm, [ci("none")], kube_version=f"{kube}.0", api_versions=[ADMISSION_POLICY_API])
    assert result.returncode == 0, result.stderr
    for kind in ("ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding"):
        assert kubernetes_validate.validate(result.one(kind), kube, strict=True) == kube


def test_admission_policy_only_where_the_api_is_served_and_wanted(helm: str) -> None:
    # Without the API (Kubernetes 1.29, or helm template without --api-versions) only RBAC is made
    bare = rendered(helm, ci("none"))
    assert bare.of_kind("ValidatingAdmissionPolicy") == bare.of_kind("ValidatingAdmissionPolicyBinding") == []
    assert bare.one("Role")
    # And a release that may not make cluster-scoped objects can turn it off
    off = helm_template(
        helm,
        [ci("none")],
        {"worker.podDeletionCost.admissionPolicy": False},
        api_versions=[ADMISSION_POLICY_API],
    )
    assert off.returncode == 0, off.stderr
    assert off.of_kind("ValidatingAdmissionPolicy") == off.of_kind("ValidatingAdmissionPolicyBinding") == []
    assert off.one("Role")


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
        ({"autoscaling.tasksPerWorker": -1}, "autoscaling.tasksPerWorker"),
        ({"worker.workerId": "w-1"}, "workerId"),
        ({"redis.secretKeys.address": "redis-address"}, "address"),
        ({"autoscaling.keda.unsafeSsl": True}, "unsafeSsl"),
        ({"worker.podDeletionCost.admissionPolicy": "yes"}, "admissionPolicy"),
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
        ({"redis.cluster": "yes"}, "redis.cluster"),
        ({"redis.cluster": 1}, "redis.cluster"),
        ({"redis.hashTagPerQueue": "true"}, "redis.hashTagPerQueue"),
        ({"redis.hashTagPerQueue": None}, "hashTagPerQueue"),
        ({"worker.replica": 2}, "replica"),
        ({"autoscalling": {"mode": "hpa"}}, "autoscalling"),
    ],
)
def test_schema_rejects_bad_values(helm: str, values: dict[str, object], message: str) -> None:
    result = helm_template(helm, set_values=values)
    assert result.returncode != 0, f"accepted {values}"
    # Helm 3 names the value redis.url, Helm 4 by its JSON pointer '/redis/url'
    assert message in result.stderr or f"'/{message.replace('.', '/')}" in result.stderr, result.stderr


@pytest.mark.parametrize(
    ("values", "message"),
    [
        (
            {"autoscaling.minReplicas": 5, "autoscaling.maxReplicas": 2},
            "must not exceed autoscaling.maxReplicas",
        ),
        ({"autoscaling.mode": "keda", "worker.queues": ["*"]}, "must list plain queue names"),
        ({"autoscaling.mode": "hpa", "worker.queues": ["default", "-emails"]}, "must list plain queue names"),
        (
            {"worker.extraEnv": [{"name": "CONVEYOR_WORKER_ID", "value": "w-1"}]},
            "must not set CONVEYOR_WORKER_ID",
        ),
        ({"worker.extraArgs": ["--worker-id", "w-1"]}, "must not pass --worker-id"),
        ({"worker.extraArgs": ["--concurrency=2", "--worker-id=w-1"]}, "must not pass --worker-id"),
        ({"redis.cluster": True, "redis.url": "redis://node-0.redis:6379/2"}, "has only database 0"),
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


def render_notes(helm: str, tmp_path: Path, values_file: Path, *api_versions: str) -> str:
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
            *(arg for api in api_versions for arg in ("--api-versions", api)),
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


@pytest.mark.parametrize(
    ("mode", "reads"),
    [
        ("hpa", f"/apis/external.metrics.k8s.io/v1beta1/namespaces/{NAMESPACE}/conveyor_queue_work"),
        ("keda", "curl -s http://localhost:8080/work"),
    ],
)
def test_notes_show_what_the_autoscaler_reads(helm: str, tmp_path: Path, mode: str, reads: str) -> None:
    notes = render_notes(helm, tmp_path, ci(mode))
    assert reads in notes
    assert "ready + due scheduled + running" in notes
    values = values_file_yaml(ci(mode))
    per_worker = values["autoscaling"].get("tasksPerWorker") or values["worker"]["concurrency"]
    assert f"{per_worker} tasks per worker" in notes


def test_notes_warn_when_pod_deletion_cost_runs_without_its_admission_policy(
    helm: str, tmp_path: Path
) -> None:
    warning = "may patch every pod in namespace"
    assert warning in render_notes(helm, tmp_path / "bare", ci("none"))
    assert warning not in render_notes(helm, tmp_path / "served", ci("none"), ADMISSION_POLICY_API)
    assert warning not in render_notes(helm, tmp_path / "off", ci("hpa"))


# -- Redis TLS files and the worker NetworkPolicy ------------------------------------------------------

TLS_SECRETS = {"redis.tls.caSecret": "redis-ca", "redis.tls.clientSecret": "redis-client"}


def django_pods(result: Render) -> list[tuple[str, Manifest]]:
    """Return (name, pod spec) of every pod that runs Django or talks to Redis (all but none here)."""
    return list(result.pod_specs())


def test_tls_secrets_are_mounted_and_named_in_every_django_container(helm: str) -> None:
    # Given a CA Secret and a client certificate Secret
    result = rendered(
        helm,
        migrations__enabled=True,
        web__enabled=True,
        **{k.replace(".", "__"): v for k, v in TLS_SECRETS.items()},
    )
    pods = django_pods(result)
    names = {n for n, _ in pods}
    assert {
        "rel-conveyor-worker",
        "rel-conveyor-web",
        "rel-conveyor-migrate",
        "rel-conveyor-test-redis",
    } <= names
    for name, pod in pods:
        # Then each pod projects both into one read-only volume...
        [volume] = [v for v in pod["volumes"] if v["name"] == "redis-tls"]
        sources = {s["secret"]["name"]: s["secret"]["items"] for s in volume["projected"]["sources"]}
        assert sources == {
            "redis-ca": [{"key": "ca.crt", "path": "ca.crt"}],
            "redis-client": [{"key": "tls.crt", "path": "tls.crt"}, {"key": "tls.key", "path": "tls.key"}],
        }, name
        assert volume["projected"]["defaultMode"] == 0o440
        for spec in pod["containers"]:
            # ...mounted in every container, whose env names the three files for the settings
            [mount] = [m for m in spec["volumeMounts"] if m["name"] == "redis-tls"]
            assert mount == {"name": "redis-tls", "mountPath": "/etc/conveyor/redis-tls", "readOnly": True}
            env = plain_env(spec)
            assert env["REDIS_SSL_CA_CERTS"] == "/etc/conveyor/redis-tls/ca.crt", name
            assert env["REDIS_SSL_CERTFILE"] == "/etc/conveyor/redis-tls/tls.crt", name
            assert env["REDIS_SSL_KEYFILE"] == "/etc/conveyor/redis-tls/tls.key", name


def test_ca_only_mounts_only_the_ca_and_no_secrets_mount_nothing(helm: str) -> None:
    ca_only = rendered(helm, redis__tls__caSecret="redis-ca", redis__tls__caKey="bundle.pem")
    [volume] = [
        v
        for v in worker_deployment(ca_only)["spec"]["template"]["spec"]["volumes"]
        if v["name"] == "redis-tls"
    ]
    assert volume["projected"]["sources"] == [
        {"secret": {"name": "redis-ca", "items": [{"key": "bundle.pem", "path": "ca.crt"}]}}
    ]
    env = plain_env(worker_container(ca_only))
    assert "REDIS_SSL_CA_CERTS" in env and "REDIS_SSL_CERTFILE" not in env

    plain = rendered(helm)
    for _, pod in django_pods(plain):
        assert [v["name"] for v in pod["volumes"]] == ["tmp"]
        assert not any(k.startswith("REDIS_SSL_") for c in pod["containers"] for k in plain_env(c))


def test_example_settings_read_the_tls_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """The example project passes REDIS_SSL_* to OPTIONS SSL_CA_CERTS/SSL_CERTFILE/SSL_KEYFILE."""
    import importlib.util

    monkeypatch.setenv("REDIS_SSL_CA_CERTS", "/etc/conveyor/redis-tls/ca.crt")
    monkeypatch.setenv("REDIS_SSL_KEYFILE", "/etc/conveyor/redis-tls/tls.key")
    monkeypatch.delenv("REDIS_SSL_CERTFILE", raising=False)
    spec = importlib.util.spec_from_file_location(
        "example_settings", ROOT / "example" / "exampleapp" / "settings.py"
    )
    assert spec is not None and spec.loader is not None
    settings = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(settings)

    options = settings.TASKS["default"]["OPTIONS"]
    assert options["SSL_CA_CERTS"] == "/etc/conveyor/redis-tls/ca.crt"
    assert options["SSL_KEYFILE"] == "/etc/conveyor/redis-tls/tls.key"
    assert "SSL_CERTFILE" not in options


# -- Redis Cluster (docs/cluster.md) -------------------------------------------------------------------

CLUSTER_ENV = {"REDIS_CLUSTER": "1", "REDIS_HASH_TAG_PER_QUEUE": "1"}
EVERY_POD: dict[str, object] = {"web.enabled": True, "migrations.enabled": True, "queueMetrics.enabled": True}
EVERY_POD_NAME = {
    "rel-conveyor-worker",
    "rel-conveyor-queue-metrics",
    "rel-conveyor-web",
    "rel-conveyor-migrate",
    "rel-conveyor-test-redis",
}


def every_container(result: Render) -> list[tuple[str, Manifest]]:
    """Return (pod name, container) of every container and init container the chart rendered."""
    return [
        (name, c)
        for name, pod in result.pod_specs()
        for c in [*pod.get("initContainers", []), *pod["containers"]]
    ]


def test_cluster_values_reach_every_django_container_and_are_off_by_default(helm: str) -> None:
    # Given every pod the chart makes: worker, exporter, web, migrations and the helm test pod
    on = helm_template(helm, set_values={**EVERY_POD, "redis.cluster": True, "redis.hashTagPerQueue": True})
    off = helm_template(helm, set_values=EVERY_POD)
    assert on.returncode == 0, on.stderr
    assert off.returncode == 0, off.stderr
    assert {n for n, _ in on.pod_specs()} == {n for n, _ in off.pod_specs()} == EVERY_POD_NAME
    # Then with both values on every container has both variables, so web and workers agree
    for name, c in every_container(on):
        env = plain_env(c)
        assert {k: env.get(k) for k in CLUSTER_ENV} == CLUSTER_ENV, (name, c["name"])
    # And by default none has either
    for name, c in every_container(off):
        assert not set(CLUSTER_ENV) & {e["name"] for e in c.get("env", [])}, (name, c["name"])


@pytest.mark.parametrize(
    ("value", "variable"), [("cluster", "REDIS_CLUSTER"), ("hashTagPerQueue", "REDIS_HASH_TAG_PER_QUEUE")]
)
def test_each_cluster_value_sets_only_its_own_variable(helm: str, value: str, variable: str) -> None:
    result = helm_template(helm, set_values={**EVERY_POD, f"redis.{value}": True})
    assert result.returncode == 0, result.stderr
    for name, c in every_container(result):
        env = plain_env(c)
        assert env.get(variable) == "1", (name, c["name"])
        assert set(CLUSTER_ENV) & set(env) == {variable}, (name, c["name"])


@pytest.mark.parametrize(
    "values",
    [
        {"redis.url": "redis://node-0.redis:6379"},
        {"redis.url": "rediss://:pw@node-0.redis:6379/0"},
        {"redis.existingSecret": "redis-cluster-url"},  # the chart cannot see that URL's database
    ],
    ids=["no-path", "db0", "existing-secret"],
)
def test_cluster_accepts_database_0_or_none(helm: str, values: dict[str, object]) -> None:
    result = helm_template(helm, set_values={**values, "redis.cluster": True})
    assert result.returncode == 0, result.stderr


def test_helm_test_pod_checks_the_cluster_state_only_with_cluster(helm: str) -> None:
    for cluster in (False, True):
        pod = helm_template(helm, set_values={"redis.cluster": cluster}).one("Pod")
        [c] = pod["spec"]["containers"]
        script = c["command"][-1]
        compile(script, "helm-test", "exec")
        # The script asks CLUSTER INFO only when its env says REDIS_CLUSTER=1 (run for real in
        # test_chart_contract.py against a local cluster and a plain Redis)
        assert 'os.environ.get("REDIS_CLUSTER") == "1"' in script and "cluster_state:ok" in script
        assert ("REDIS_CLUSTER" in plain_env(c)) is cluster


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({}, {}),
        (
            {"REDIS_CLUSTER": "1", "REDIS_HASH_TAG_PER_QUEUE": "1"},
            {"CLUSTER": True, "HASH_TAG_PER_QUEUE": True},
        ),
        ({"REDIS_CLUSTER": "1"}, {"CLUSTER": True}),
        ({"REDIS_HASH_TAG_PER_QUEUE": "1"}, {"HASH_TAG_PER_QUEUE": True}),
        ({"REDIS_CLUSTER": "0", "REDIS_HASH_TAG_PER_QUEUE": ""}, {"CLUSTER": False}),
    ],
    ids=["unset", "both", "cluster-only", "hash-tag-only", "0-and-empty"],
)
def test_example_settings_read_the_cluster_env(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], expected: dict[str, bool]
) -> None:
    """The example project turns REDIS_CLUSTER and REDIS_HASH_TAG_PER_QUEUE ("1") into OPTIONS."""
    import importlib.util

    from conveyor.options import parse_options

    for name in ("REDIS_CLUSTER", "REDIS_HASH_TAG_PER_QUEUE"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    spec = importlib.util.spec_from_file_location(
        "example_settings", ROOT / "example" / "exampleapp" / "settings.py"
    )
    assert spec is not None and spec.loader is not None
    settings = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(settings)

    options = settings.TASKS["default"]["OPTIONS"]
    assert {k: options[k] for k in ("CLUSTER", "HASH_TAG_PER_QUEUE") if k in options} == expected
    # And the backend takes them as they are
    parsed, problems = parse_options(options)
    assert problems == []
    assert (parsed.cluster, parsed.hash_tag_per_queue) == (
        expected.get("CLUSTER", False),
        expected.get("HASH_TAG_PER_QUEUE", False),
    )


NETWORK_POLICY = {
    "networkPolicy.enabled": True,
    "networkPolicy.redis.to": [{"podSelector": {"matchLabels": {"app": "redis"}}}],
    "networkPolicy.redis.ports": [6379, 26379],
    "networkPolicy.metrics.from": [
        {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}
    ],
}


def test_no_network_policy_by_default(helm: str) -> None:
    assert rendered(helm).of_kind("NetworkPolicy") == []


def test_network_policy_lets_the_worker_reach_only_redis_and_dns(helm: str) -> None:
    result = helm_template(helm, set_values=NETWORK_POLICY)
    assert result.returncode == 0, result.stderr
    policy = result.one("NetworkPolicy", "worker")
    spec = policy["spec"]
    worker_labels = worker_deployment(result)["spec"]["template"]["metadata"]["labels"]
    assert spec["podSelector"]["matchLabels"].items() <= worker_labels.items()
    assert spec["policyTypes"] == ["Ingress", "Egress"]
    # Egress: Redis (and the sentinels) on TCP, DNS on UDP and TCP 53, nothing else
    redis_rule, dns_rule = spec["egress"]
    assert redis_rule["to"] == [{"podSelector": {"matchLabels": {"app": "redis"}}}]
    assert redis_rule["ports"] == [{"protocol": "TCP", "port": 6379}, {"protocol": "TCP", "port": 26379}]
    assert dns_rule["to"] == [
        {"namespaceSelector": {}, "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}}}
    ]
    assert dns_rule["ports"] == [{"protocol": "UDP", "port": 53}, {"protocol": "TCP", "port": 53}]
    # Ingress: only the health port, only from the monitoring namespace
    [ingress] = spec["ingress"]
    assert ingress["from"] == NETWORK_POLICY["networkPolicy.metrics.from"]
    health_port = int(plain_env(worker_container(result))["CONVEYOR_HEALTH_PORT"])
    assert ingress["ports"] == [{"protocol": "TCP", "port": health_port}]


def test_network_policy_without_metrics_sources_admits_no_ingress(helm: str) -> None:
    values = {**NETWORK_POLICY, "networkPolicy.metrics.from": []}
    result = helm_template(helm, set_values=values)
    assert result.returncode == 0, result.stderr
    assert result.one("NetworkPolicy", "worker")["spec"]["ingress"] == []


@pytest.mark.parametrize("kube", SUPPORTED_KUBERNETES)
def test_network_policy_is_valid_for_every_kubernetes_we_target(helm: str, kube: str) -> None:
    result = helm_template(helm, set_values=NETWORK_POLICY, kube_version=f"{kube}.0")
    assert result.returncode == 0, result.stderr
    assert kubernetes_validate.validate(result.one("NetworkPolicy"), kube, strict=True) == kube


def test_network_policy_needs_somewhere_to_reach_redis(helm: str) -> None:
    result = helm_template(helm, set_values={"networkPolicy.enabled": True})
    assert result.returncode != 0
    assert "networkPolicy.redis.to" in result.stderr or "'/networkPolicy/redis/to'" in result.stderr


def test_schema_rejects_a_bad_network_policy_peer(helm: str) -> None:
    values = {**NETWORK_POLICY, "networkPolicy.redis.to": [{"ipBlock": {"cird": "10.0.0.0/8"}}]}
    result = helm_template(helm, set_values=values)
    assert result.returncode != 0
    assert "cidr" in result.stderr or "cird" in result.stderr


# -- your own project (docs/your-project.md) ---------------------------------------------------------


def test_your_project_values_reach_every_django_container(helm: str) -> None:
    # Given the values docs/your-project.md shows for a project that is not the example,
    result = rendered(helm, ci("your-project"))
    pods = dict(result.pod_specs())
    # then each workload runs the project's image,
    images = {c["image"] for spec in pods.values() for c in spec["containers"]}
    assert images == {"registry.example.com/mysite-worker:1.4.2", "registry.example.com/mysite-web:1.4.2"}
    # every Django container (worker, exporter, web, migrations) has the project's settings module,
    # the Redis URL from the project's Secret and its whole Secrets and ConfigMaps,
    django_containers = [c for spec in pods.values() for c in spec["containers"] if c["name"] != "redis-ping"]
    assert len(django_containers) == 4
    for c in django_containers:
        assert plain_env(c)["DJANGO_SETTINGS_MODULE"] == "mysite.settings.production", c["name"]
        assert plain_env(c)["CONVEYOR_KEY_PREFIX"] == "mysite", c["name"]
        [redis_url] = [e for e in c["env"] if e["name"] == "REDIS_URL"]
        assert redis_url["valueFrom"]["secretKeyRef"] == {"name": "mysite-redis", "key": "url"}, c["name"]
        [secret_key] = [e for e in c["env"] if e["name"] == "DJANGO_SECRET_KEY"]
        assert secret_key["valueFrom"]["secretKeyRef"]["name"] == "mysite-django", c["name"]
        assert c["envFrom"] == [
            {"configMapRef": {"name": "mysite-config"}},
            {"secretRef": {"name": "mysite-env", "optional": True}},
        ], c["name"]
    # the worker serves the project's queues and runs only its task modules,
    env = plain_env(worker_container(result))
    assert env["CONVEYOR_QUEUES"] == "default,billing"
    assert env["CONVEYOR_ALLOWED_TASK_MODULES"] == "invoices.tasks,mysite.tasks"
    # and the migrations Job runs Django's own entry point, not the example's manage.py.
    (job,) = result.of_kind("Job")
    assert container(job["spec"]["template"]["spec"], "migrate")["command"] == [
        "python",
        "-m",
        "django",
        "migrate",
        "--noinput",
    ]
    assert result.of_kind("Secret") == []


def test_env_from_is_absent_by_default_and_refused_when_malformed(helm: str) -> None:
    for _, spec in rendered(helm, web__enabled=True, migrations__enabled=True).pod_specs():
        assert all("envFrom" not in c for c in spec["containers"])
    # A source must name exactly one of secretRef and configMapRef, and each needs a name.
    for bad in (
        [{"secretRef": {"name": "a"}, "configMapRef": {"name": "b"}}],
        [{"secretRef": {}}],
        [{"prefix": "X_"}],
    ):
        proc = helm_template(helm, [], {"app.envFrom": bad})
        assert proc.returncode != 0, bad
        # Helm 3 names the value app.envFrom, Helm 4 by its JSON pointer '/app/envFrom/0'
        assert "app.envFrom" in proc.stderr or "'/app/envFrom" in proc.stderr, proc.stderr
