"""The Grafana dashboard and the worker PodMonitor: they read only series that exist; render on request."""

from __future__ import annotations

import json
import re

import kubernetes_validate
import pytest
from conveyor.store import QueueStats
from conveyor_worker.metrics import COUNTERS, Metrics

from tests.deploy.helm_chart import CHART, POD_MONITOR_API, RELEASE, helm_template, rendered

pytestmark = pytest.mark.deploy

DASHBOARD = CHART / "dashboards" / "conveyor.json"
# kube-state-metrics series the Replicas panel reads (documented in docs/metrics.md).
KUBE_STATE_METRICS = {"kube_deployment_spec_replicas", "kube_deployment_status_replicas"}
PROMQL_WORDS = {
    "sum", "max", "min", "avg", "count", "rate", "irate", "increase", "histogram_quantile", "by", "without",
    "on", "ignoring", "and", "or", "unless",
}  # fmt: skip
WANTED_PANELS = {"Queue depth", "Pickup latency", "Throughput", "Failures", "Busy slots", "Replicas"}


def exposed_series() -> set[str]:
    """Return every sample name the worker's /metrics serves once each counter and histogram has a sample."""
    metrics = Metrics(4)
    for name in COUNTERS:
        metrics.count(name, "default")
    metrics.observe("default", 0.1)
    metrics.observe_pickup("default", 0.1)
    stats = QueueStats(
        queue="default", ready=1, scheduled=1, due=1, running=1, oldest_ready_ms=0, read_at_ms=1
    )
    text = metrics.render([stats], up=True, slots={"default": 4})
    return {
        line.split("{")[0].split(" ")[0] for line in text.splitlines() if line and not line.startswith("#")
    }


def metric_names(expr: str) -> set[str]:
    """Return the metric names a PromQL expression reads (what is left without functions, labels, strings)."""
    bare = re.sub(r'"(?:[^"\\]|\\.)*"', "", expr)  # strings
    bare = re.sub(r"\{[^}]*\}|\[[^\]]*\]", "", bare)  # label matchers, ranges
    bare = re.sub(r"\b(?:by|without|on|ignoring)\s*\([^)]*\)", "", bare)  # grouping labels
    names = set(re.findall(r"[A-Za-z_:][A-Za-z0-9_:]*", bare)) - PROMQL_WORDS
    return {n for n in names if not re.fullmatch(r"[0-9.e+-]+", n)}


def panels() -> list[dict[str, object]]:
    return json.loads(DASHBOARD.read_text())["panels"]  # type: ignore[no-any-return]


def test_the_dashboard_has_the_panels_operators_need() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert {p["title"] for p in dashboard["panels"]} == WANTED_PANELS
    assert all(p["targets"] for p in dashboard["panels"])
    assert {v["name"] for v in dashboard["templating"]["list"]} == {
        "datasource",
        "namespace",
        "queue",
        "worker",
    }


def test_every_panel_reads_only_series_the_worker_or_kube_state_metrics_serves() -> None:
    exposed = exposed_series()
    assert {"conveyor_task_pickup_seconds_bucket", "conveyor_queue_saturation"} <= exposed
    read: set[str] = set()
    for panel in panels():
        for target in panel["targets"]:  # type: ignore[attr-defined]
            names = metric_names(target["expr"])
            assert names, target["expr"]
            unknown = names - exposed - KUBE_STATE_METRICS
            assert not unknown, f"{panel['title']}: {sorted(unknown)}"
            read |= names
    # And each panel the issue asks for reads what it says
    assert {"conveyor_task_pickup_seconds_bucket", "conveyor_tasks_succeeded_total"} <= read
    assert {"conveyor_tasks_failed_total", "conveyor_worker_busy_slots"} <= read
    assert read >= KUBE_STATE_METRICS


def test_pickup_latency_is_the_histograms_p50_and_p95() -> None:
    [latency] = [p for p in panels() if p["title"] == "Pickup latency"]
    exprs = [t["expr"] for t in latency["targets"]]  # type: ignore[attr-defined]
    assert [e.split(",")[0] for e in exprs] == ["histogram_quantile(0.5", "histogram_quantile(0.95"]
    assert all("by (le, queue)" in e and "conveyor_task_pickup_seconds_bucket" in e for e in exprs)


def test_metric_names_strips_labels_strings_and_functions() -> None:
    expr = 'histogram_quantile(0.95, sum by (le) (rate(x_bucket{queue=~"a|b"}[5m]))) / on (pod) y'
    assert metric_names(expr) == {"x_bucket", "y"}


def test_dashboard_config_map_only_when_enabled(helm: str) -> None:
    assert all("conveyor.json" not in c.get("data", {}) for c in rendered(helm).of_kind("ConfigMap"))
    result = rendered(helm, metrics__dashboard__enabled=True)
    [config_map] = [c for c in result.of_kind("ConfigMap") if "conveyor.json" in c.get("data", {})]
    # Then the sidecar label is on it, and the dashboard is the chart's file with this release's worker
    assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"
    dashboard = json.loads(config_map["data"]["conveyor.json"])
    [worker] = [v for v in dashboard["templating"]["list"] if v["name"] == "worker"]
    assert worker["query"] == worker["current"]["value"] == f"{RELEASE}-conveyor-worker"
    assert dashboard["panels"] == panels()


def test_dashboard_labels_and_annotations_are_configurable(helm: str) -> None:
    result = rendered(
        helm,
        metrics__dashboard__enabled=True,
        metrics__dashboard__labels={"grafana_dashboard": None, "dashboards": "grafana"},  # null drops a default
        metrics__dashboard__annotations={"grafana_folder": "Tasks"},
    )
    [config_map] = [c for c in result.of_kind("ConfigMap") if "conveyor.json" in c.get("data", {})]
    assert config_map["metadata"]["labels"]["dashboards"] == "grafana"
    assert "grafana_dashboard" not in config_map["metadata"]["labels"]
    assert config_map["metadata"]["annotations"] == {"grafana_folder": "Tasks"}


@pytest.mark.parametrize(
    "bad",
    [
        {"metrics.dashboard.enabled": "yes"},
        {"metrics.dashboard.labels": {"grafana_dashboard": 1}},
        {"metrics.podMonitor.interval": "often"},
        {"metrics.surprise": True},
    ],
)
def test_schema_rejects_bad_metrics_values(helm: str, bad: dict[str, object]) -> None:
    result = helm_template(helm, set_values=bad)
    assert result.returncode != 0
    assert "values don't meet the specifications of the schema" in result.stderr


@pytest.mark.parametrize("kube", ["1.30", "1.33"])
def test_dashboard_config_map_is_a_valid_kubernetes_object(helm: str, kube: str) -> None:
    result = rendered(helm, metrics__dashboard__enabled=True)
    for doc in result.of_kind("ConfigMap"):
        assert kubernetes_validate.validate(doc, kube, strict=True) == kube


def test_pod_monitor_scrapes_workers_without_their_queue_gauges_and_only_when_asked(helm: str) -> None:
    # Given the CRD; the PodMonitor appears only when enabled
    assert helm_template(helm, api_versions=[POD_MONITOR_API]).of_kind("PodMonitor") == []
    assert helm_template(helm, set_values={"metrics.podMonitor.enabled": True}).of_kind("PodMonitor") == []
    result = helm_template(
        helm, set_values={"metrics.podMonitor.enabled": True}, api_versions=[POD_MONITOR_API]
    )
    [monitor] = result.of_kind("PodMonitor")
    # Then it selects the worker pods, reads /metrics on their health port and drops the queue gauges
    worker = result.one("Deployment", "worker")
    assert (
        monitor["spec"]["selector"]["matchLabels"].items()
        <= worker["spec"]["selector"]["matchLabels"].items()
    )
    [endpoint] = monitor["spec"]["podMetricsEndpoints"]
    assert (endpoint["port"], endpoint["path"]) == ("health", "/metrics")
    [drop] = endpoint["metricRelabelings"]
    assert drop["action"] == "drop" and re.fullmatch(drop["regex"], "conveyor_queue_saturation")
    assert not re.fullmatch(drop["regex"], "conveyor_task_pickup_seconds_bucket")


def test_keda_activation_threshold_follows_values(helm: str) -> None:
    # Given scale to zero with an activation threshold of 5 tasks of work
    so = rendered(
        helm, autoscaling__mode="keda", autoscaling__minReplicas=0, autoscaling__keda__activationTasks=5
    ).one("ScaledObject")
    triggers = {t["name"]: t["metadata"] for t in so["spec"]["triggers"]}
    # Then work activates above 5, and a running task above 0
    assert so["spec"]["minReplicaCount"] == 0
    assert triggers["work"]["activationTargetValue"] == "5"
    assert triggers["running"]["activationTargetValue"] == "0"
    assert helm_template(helm, set_values={"autoscaling.keda.activationTasks": -1}).returncode != 0
