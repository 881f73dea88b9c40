"""The pod-deletion-cost admission policy's CEL, evaluated on sample pod updates.

Kubernetes evaluates these expressions with cel-go against typed objects; here cel-cpp (the
`cel-expr-python` package, with its optional-types and strings extensions) evaluates them against
plain maps, as the API server would see the request. That checks what the rules mean: which updates
they admit and which they refuse. Schema validity is checked in test_chart.py.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import pytest

from tests.deploy.helm_chart import CI_VALUES, NAMESPACE, Manifest, helm_template

cel = pytest.importorskip("cel_expr_python.cel", reason="cel-expr-python is not installed")
ext_optional = pytest.importorskip("cel_expr_python.ext.ext_optional")
ext_strings = pytest.importorskip("cel_expr_python.ext.ext_strings")

pytestmark = pytest.mark.deploy

ADMISSION_POLICY_API = "admissionregistration.k8s.io/v1/ValidatingAdmissionPolicy"
COST = "controller.kubernetes.io/pod-deletion-cost"
POD_NAME_EXTRA = "authentication.kubernetes.io/pod-name"
OWN_POD = "rel-conveyor-worker-5d9c7-x2x4z"

Pod = dict[str, Any]


@pytest.fixture(scope="module")
def policy(helm: str) -> tuple[Manifest, str]:
    """Return the rendered policy and the worker ServiceAccount's user name."""
    [none_values] = [p for p in CI_VALUES if p.name == "none-values.yaml"]
    result = helm_template(helm, [none_values], api_versions=[ADMISSION_POLICY_API])
    assert result.returncode == 0, result.stderr
    account = result.one("ServiceAccount")["metadata"]["name"]
    return result.one("ValidatingAdmissionPolicy"), f"system:serviceaccount:{NAMESPACE}:{account}"


def admit(policy: Manifest, new: Pod, old: Pod, user: str, token_pod: str | None) -> str | list[str]:
    """Run the policy on one pod update; return "not judged", "allowed" or the failed messages."""
    env = cel.NewEnv(
        variables={name: cel.Type.DYN for name in ("object", "oldObject", "request", "variables")},
        extensions=[ext_optional.ExtOptional(), ext_strings.ExtStrings()],
    )

    def run(expression: str, data: dict[str, Any]) -> Any:
        return env.compile(expression).eval(data=data).plain_value()

    extra = {} if token_pod is None else {POD_NAME_EXTRA: [token_pod]}
    data: dict[str, Any] = {
        "object": new,
        "oldObject": old,
        "request": {"userInfo": {"username": user, "extra": extra}},
    }
    spec = policy["spec"]
    if not all(run(c["expression"], data) is True for c in spec["matchConditions"]):
        return "not judged"
    variables: dict[str, Any] = {}
    for variable in spec["variables"]:  # in order: a variable may use the ones before it
        variables[variable["name"]] = run(variable["expression"], {**data, "variables": variables})
    data["variables"] = variables
    failed = [v["message"] for v in spec["validations"] if run(v["expression"], data) is not True]
    return failed or "allowed"


def worker_pod() -> Pod:
    """Return a worker pod as the API server stores it (a few fields are enough)."""
    return {
        "metadata": {
            "name": OWN_POD,
            "namespace": NAMESPACE,
            "labels": {"app.kubernetes.io/component": "worker"},
            "annotations": {"checksum/config": "abc"},
            "ownerReferences": [{"kind": "ReplicaSet", "name": "rel-conveyor-worker-5d9c7"}],
        },
        "spec": {"containers": [{"name": "worker", "image": "conveyor-worker:0.1.0"}]},
    }


def edit(pod: Pod, change: Callable[[Pod], None]) -> Pod:
    copied = copy.deepcopy(pod)
    change(copied)
    return copied


def set_cost(value: str) -> Callable[[Pod], None]:
    return lambda p: p["metadata"].setdefault("annotations", {}).__setitem__(COST, value)


STORED = worker_pod()
WITH_COST = edit(STORED, set_cost("2"))
BARE = edit(STORED, lambda p: p["metadata"].pop("annotations"))

ALLOWED = [
    ("the first cost on its own pod", edit(STORED, set_cost("3")), STORED),
    ("a new cost", edit(WITH_COST, set_cost("0")), WITH_COST),
    ("a cost on a pod with no annotations", edit(BARE, set_cost("1")), BARE),
    ("the cost removed", STORED, WITH_COST),
]
REFUSED = [
    (
        "another annotation added",
        edit(STORED, lambda p: p["metadata"]["annotations"].update(x="1")),
        "annotation",
    ),
    (
        "another annotation changed",
        edit(STORED, lambda p: p["metadata"]["annotations"].update({"checksum/config": "z"})),
        "annotation",
    ),
    (
        "another annotation removed",
        edit(STORED, lambda p: p["metadata"]["annotations"].clear()),
        "annotation",
    ),
    ("a label changed", edit(STORED, lambda p: p["metadata"]["labels"].update(x="1")), "labels"),
    ("the labels removed", edit(STORED, lambda p: p["metadata"].pop("labels")), "labels"),
    ("a finalizer added", edit(STORED, lambda p: p["metadata"].update(finalizers=["x/y"])), "finalizers"),
    ("the owner removed", edit(STORED, lambda p: p["metadata"].pop("ownerReferences")), "owners"),
    ("the image changed", edit(STORED, lambda p: p["spec"]["containers"][0].update(image="evil:1")), "spec"),
    ("a cost that is no number", edit(STORED, set_cost("lots")), "whole number"),
    ("a negative cost", edit(STORED, set_cost("-1")), "whole number"),
]


@pytest.mark.parametrize(("what", "new", "old"), ALLOWED, ids=[c[0] for c in ALLOWED])
def test_the_worker_may_set_its_own_pods_deletion_cost(
    policy: tuple[Manifest, str], what: str, new: Pod, old: Pod
) -> None:
    manifest, user = policy
    assert admit(manifest, new, old, user, OWN_POD) == "allowed"


@pytest.mark.parametrize(("what", "new", "part"), REFUSED, ids=[c[0] for c in REFUSED])
def test_the_worker_may_change_nothing_else(
    policy: tuple[Manifest, str], what: str, new: Pod, part: str
) -> None:
    manifest, user = policy
    [message] = admit(manifest, new, STORED, user, OWN_POD)
    assert part in message


def test_the_worker_may_not_touch_another_pod(policy: tuple[Manifest, str]) -> None:
    manifest, user = policy
    # Given a token bound to another worker pod, or bound to no pod at all (a legacy Secret token)
    for token_pod in ("rel-conveyor-worker-5d9c7-other", None):
        # Then even the one annotation it may set on its own pod is refused here
        [message] = admit(manifest, edit(STORED, set_cost("3")), STORED, user, token_pod)
        assert "only its own pod" in message


def test_nobody_else_is_judged(policy: tuple[Manifest, str]) -> None:
    manifest, _ = policy
    other = f"system:serviceaccount:{NAMESPACE}:someone-else"
    changed = edit(STORED, lambda p: p["spec"]["containers"][0].update(image="new:2"))
    assert admit(manifest, changed, STORED, other, None) == "not judged"
