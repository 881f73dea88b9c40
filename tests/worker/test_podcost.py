"""PodDeletionCost: patch the pod annotation only on change, at most every min_interval seconds."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
from conveyor_worker.podcost import ANNOTATION, PodDeletionCost

from .conftest import wait_until


class FakeCoreV1:
    """Records patch_namespaced_pod calls (with when they happened); can be told to fail."""

    def __init__(self) -> None:
        self.calls: list[tuple[float, str, str, dict[str, Any]]] = []
        self.fail = False
        self._lock = threading.Lock()

    def patch_namespaced_pod(self, name: str, namespace: str, body: dict[str, Any]) -> None:
        if self.fail:
            raise RuntimeError("apiserver said no")
        with self._lock:
            self.calls.append((time.monotonic(), name, namespace, body))

    def values(self) -> list[str]:
        with self._lock:
            return [c[3]["metadata"]["annotations"][ANNOTATION] for c in self.calls]


@pytest.fixture
def api() -> FakeCoreV1:
    return FakeCoreV1()


def test_the_first_change_is_patched_on_the_named_pod(api: FakeCoreV1) -> None:
    """A busy count is written as the annotation of POD_NAME in POD_NAMESPACE."""
    cost = PodDeletionCost(api, "worker-0", "jobs", min_interval=0.2)
    cost.update(3)
    wait_until(api.values, what="a patch")
    cost.stop()
    _, name, namespace, body = api.calls[0]
    assert (name, namespace) == ("worker-0", "jobs")
    assert body == {"metadata": {"annotations": {ANNOTATION: "3"}}}


def test_changes_within_the_interval_are_coalesced_into_one_later_patch(api: FakeCoreV1) -> None:
    """Bursts of updates produce one patch per interval, carrying the latest value."""
    interval = 0.5
    cost = PodDeletionCost(api, "worker-0", "jobs", min_interval=interval)
    cost.update(1)
    wait_until(lambda: api.values() == ["1"], what="the first patch")
    for busy in (2, 3, 4, 2, 5):
        cost.update(busy)

    wait_until(lambda: len(api.values()) == 2, what="the second patch")
    cost.stop()
    assert api.values() == ["1", "5"]
    first_at, second_at = api.calls[0][0], api.calls[1][0]
    assert second_at - first_at >= interval  # never two patches closer than min_interval


def test_an_unchanged_value_is_not_patched_again(api: FakeCoreV1) -> None:
    """Updating to the value already sent costs no API call."""
    cost = PodDeletionCost(api, "worker-0", "jobs", min_interval=0.05)
    cost.update(2)
    wait_until(lambda: api.values() == ["2"], what="the first patch")
    cost.update(2)
    cost.update(4)
    cost.update(2)  # back to what was sent before the interval ended
    time.sleep(0.3)  # several intervals: a needless patch would have happened by now
    cost.stop()
    assert api.values() == ["2"]


def test_a_failed_patch_is_retried_after_the_interval(api: FakeCoreV1) -> None:
    """An API error is logged, not raised; the same value is tried again later."""
    api.fail = True
    cost = PodDeletionCost(api, "worker-0", "jobs", min_interval=0.05)
    cost.update(7)
    time.sleep(0.2)
    api.fail = False
    wait_until(lambda: api.values() == ["7"], what="the retried patch")
    cost.stop()


def test_from_environment_is_none_outside_kubernetes(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without POD_NAME, POD_NAMESPACE and KUBERNETES_SERVICE_HOST there is nothing to patch."""
    for name in ("POD_NAME", "POD_NAMESPACE", "KUBERNETES_SERVICE_HOST"):
        monkeypatch.delenv(name, raising=False)
    assert PodDeletionCost.from_environment() is None
    monkeypatch.setenv("POD_NAME", "worker-0")
    monkeypatch.setenv("POD_NAMESPACE", "jobs")
    assert PodDeletionCost.from_environment() is None  # still no KUBERNETES_SERVICE_HOST


def test_from_environment_is_none_without_a_service_account(monkeypatch: pytest.MonkeyPatch) -> None:
    """In a pod whose in-cluster config cannot load, the worker runs without the annotation."""
    monkeypatch.setenv("POD_NAME", "worker-0")
    monkeypatch.setenv("POD_NAMESPACE", "jobs")
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "10.0.0.1")
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", "443")
    assert PodDeletionCost.from_environment() is None


def test_the_worker_reports_its_busy_slots_as_they_change(backend: object, make_worker: Any) -> None:
    """on_busy_change (what feeds the annotation) sees the busy count rise and fall back to 0."""
    from conveyor import RedisBackend
    from conveyor_worker.loop import Worker

    from tests import tasks

    from .conftest import real_backend

    seen: list[int] = []
    handle = make_worker(batch=True, concurrency=2)
    b: RedisBackend = real_backend()
    handle.worker = Worker(
        handle.worker.settings, b, handle.store, ("tests",), handle.metrics, on_busy_change=seen.append
    )
    for _ in range(3):
        tasks.sleep_for.enqueue(0.2)

    assert handle.start().join() == 0

    assert max(seen) >= 1
    assert seen[-1] == 0
    assert all(0 <= n <= 2 for n in seen)


class OnlyPatch(FakeCoreV1):
    """A CoreV1 stand-in that records every API method the code looks up."""

    def __init__(self) -> None:
        super().__init__()
        self.looked_up: set[str] = set()

    def __getattribute__(self, name: str) -> Any:
        if not name.startswith("_") and name not in {"calls", "fail", "values", "looked_up"}:
            object.__getattribute__(self, "looked_up").add(name)
        return object.__getattribute__(self, name)


def test_the_only_api_call_is_a_patch_of_one_annotation_on_its_own_pod() -> None:
    """What the chart's Role (verbs: patch) and admission policy allow is all the worker uses."""
    api = OnlyPatch()
    cost = PodDeletionCost(api, "worker-0", "jobs", min_interval=0.05)
    for busy in (1, 0, 2):
        cost.update(busy)
        wait_until(lambda b=busy: api.values()[-1:] == [str(b)], what=f"the patch to {busy}")
    cost.stop()
    assert api.looked_up == {"patch_namespaced_pod"}
    assert {(name, namespace) for _, name, namespace, _ in api.calls} == {("worker-0", "jobs")}
    assert all(
        body == {"metadata": {"annotations": {ANNOTATION: body["metadata"]["annotations"][ANNOTATION]}}}
        for *_, body in api.calls
    )
    assert all(value.isdigit() for value in api.values())
