"""Render the conveyor chart with a real Helm binary and pick objects out of the result."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import yaml

from devtools.toolchain import helm_candidates, run_command, usable_helm

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "deploy" / "helm" / "conveyor"
CI_VALUES = sorted((CHART / "ci").glob("*-values.yaml"))
RELEASE = "rel"
NAMESPACE = "jobs"
SERVICE_MONITOR_API = "monitoring.coreos.com/v1/ServiceMonitor"
POD_MONITOR_API = "monitoring.coreos.com/v1/PodMonitor"

Manifest = dict[str, Any]


# The Helm majors the chart is tested with, by the binary name deploy/tools/get-helm.sh installs.
HELM_BINARIES = {"3": "helm", "4": "helm4"}


def find_helm(major: str = "3") -> str | None:
    """Return the machine's Helm of that major on PATH, else .tools/bin/helm or helm4 (get-helm.sh's)."""
    return usable_helm(run_command, helm_candidates(HELM_BINARIES[major]), int(major))


@dataclass(frozen=True, slots=True, kw_only=True)
class Render:
    """What one `helm template` printed."""

    returncode: int
    stdout: str
    stderr: str
    docs: tuple[Manifest, ...] = field(default=())

    def of_kind(self, kind: str) -> list[Manifest]:
        """Return every object of one kind."""
        return [d for d in self.docs if d["kind"] == kind]

    def one(self, kind: str, component: str | None = None) -> Manifest:
        """Return the single object of a kind (and component label), failing if not exactly one."""
        found = [d for d in self.of_kind(kind) if component is None or component_of(d) == component]
        assert len(found) == 1, f"expected one {kind} {component or ''}, found {len(found)}"
        return found[0]

    def pod_specs(self) -> Iterator[tuple[str, Manifest]]:
        """Yield (object name, pod spec) of every Deployment, Job and Pod, hooks and tests included."""
        for doc in self.docs:
            if doc["kind"] in {"Deployment", "Job"}:
                yield doc["metadata"]["name"], doc["spec"]["template"]["spec"]
            elif doc["kind"] == "Pod":
                yield doc["metadata"]["name"], doc["spec"]


def component_of(doc: Manifest) -> str | None:
    """Return an object's app.kubernetes.io/component label."""
    return (doc["metadata"].get("labels") or {}).get("app.kubernetes.io/component")


@cache
def _helm_template(
    helm: str,
    values_files: tuple[str, ...],
    set_json: str,
    kube_version: str | None,
    api_versions: tuple[str, ...],
) -> Render:
    args = [helm, "template", RELEASE, str(CHART), "--namespace", NAMESPACE]
    for values_file in values_files:
        args += ["-f", values_file]
    for key, value in json.loads(set_json).items():
        args += ["--set-json", f"{key}={json.dumps(value)}"]
    if kube_version:
        args += ["--kube-version", kube_version]
    for api in api_versions:
        args += ["--api-versions", api]
    proc = subprocess.run(args, capture_output=True, text=True, check=False, timeout=60)
    docs: tuple[Manifest, ...] = ()
    if proc.returncode == 0:
        docs = tuple(d for d in yaml.safe_load_all(proc.stdout) if d)
    return Render(returncode=proc.returncode, stdout=proc.stdout, stderr=proc.stderr, docs=docs)


def helm_template(
    helm: str,
    values_files: Sequence[Path] = (),
    set_values: dict[str, object] | None = None,
    kube_version: str | None = None,
    api_versions: Sequence[str] = (),
) -> Render:
    """Run `helm template` (cached per arguments); values are passed with --set-json."""
    return _helm_template(
        helm,
        tuple(str(p) for p in values_files),
        json.dumps(set_values or {}, sort_keys=True),
        kube_version,
        tuple(api_versions),
    )


def rendered(helm: str, *values_files: Path, **set_values: object) -> Render:
    """Render and fail the test with Helm's message if rendering failed."""
    result = helm_template(helm, values_files, {k.replace("__", "."): v for k, v in set_values.items()})
    assert result.returncode == 0, result.stderr
    return result


def container(pod_spec: Manifest, name: str) -> Manifest:
    """Return one container of a pod spec by name."""
    found = [c for c in pod_spec["containers"] if c["name"] == name]
    assert len(found) == 1, f"no single container {name!r}"
    return found[0]


def plain_env(container_spec: Manifest) -> dict[str, str]:
    """Return the env entries that have a plain value."""
    return {e["name"]: e["value"] for e in container_spec.get("env", []) if "value" in e}


def values_file_yaml(path: Path) -> Manifest:
    """Load one values file."""
    return yaml.safe_load(path.read_text()) or {}
