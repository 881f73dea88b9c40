"""Keep this pod's deletion cost current so scale-in removes idle workers before busy ones."""

from __future__ import annotations

import logging
import os
import threading
from typing import Any

logger = logging.getLogger(__name__)
ANNOTATION = "controller.kubernetes.io/pod-deletion-cost"
MIN_INTERVAL = 10.0  # seconds between two patches of the same pod


class PodDeletionCost:
    """Patch the pod annotation with the busy slot count, at most every MIN_INTERVAL seconds.

    Its one API call is a PATCH of that annotation on its own pod, never a read: the chart's Role
    grants only `patch` on pods, and its admission policy admits nothing else from this account.
    """

    def __init__(self, api: Any, name: str, namespace: str, min_interval: float = MIN_INTERVAL) -> None:
        self.api = api
        self.name = name
        self.namespace = namespace
        self.min_interval = min_interval
        self._wanted = 0
        self._sent: int | None = None
        self._changed = threading.Event()
        self._stop = threading.Event()
        threading.Thread(target=self._run, name="conveyor-pod-cost", daemon=True).start()

    @classmethod
    def from_environment(cls) -> PodDeletionCost | None:
        """Build one from POD_NAME/POD_NAMESPACE and the in-cluster config; None outside Kubernetes."""
        name, namespace = os.environ.get("POD_NAME"), os.environ.get("POD_NAMESPACE")
        if not name or not namespace or not os.environ.get("KUBERNETES_SERVICE_HOST"):
            logger.info(
                "pod deletion cost disabled: not running in a Kubernetes pod "
                "(POD_NAME, POD_NAMESPACE and KUBERNETES_SERVICE_HOST are needed)"
            )
            return None
        try:
            from kubernetes import client, config  # type: ignore[import-untyped]

            config.load_incluster_config()
        except Exception as exc:  # missing package or service account: run without it
            logger.warning("pod deletion cost disabled: %s", exc)
            return None
        return cls(client.CoreV1Api(), name, namespace)

    def update(self, busy: int) -> None:
        """Note the current number of busy slots (cheap; the patch happens in the background)."""
        self._wanted = busy
        self._changed.set()

    def stop(self) -> None:
        """Stop the background thread."""
        self._stop.set()
        self._changed.set()

    def _run(self) -> None:
        while not self._stop.is_set():
            self._changed.wait()
            self._changed.clear()
            if self._stop.is_set():
                return
            wanted = self._wanted
            if wanted == self._sent:
                continue
            body = {"metadata": {"annotations": {ANNOTATION: str(wanted)}}}
            try:
                self.api.patch_namespaced_pod(self.name, self.namespace, body)
                self._sent = wanted
            except Exception as exc:  # never let the annotation hurt the worker
                logger.warning("could not patch pod deletion cost: %s", exc)
            self._stop.wait(self.min_interval)
            self._changed.set()  # look again after the pause: the count may have moved
