"""Fixtures of the deploy tier: the Helm binary (a loud skip when there is none)."""

from __future__ import annotations

import warnings

import pytest

from tests.deploy.helm_chart import find_helm


@pytest.fixture(scope="session")
def helm() -> str:
    """Return the path of a Helm 3 binary, or skip the chart tests loudly."""
    found = find_helm()
    if found is None:
        message = (
            "NO HELM 3 FOUND (neither on PATH nor .tools/bin/helm): THE HELM CHART IS NOT TESTED. "
            "Run deploy/tools/get-helm.sh first (./dev test does)."
        )
        warnings.warn(message, stacklevel=1)
        pytest.skip(message)
    return found
