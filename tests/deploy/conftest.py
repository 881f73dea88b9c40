"""Fixtures of the deploy tier: the Helm binaries, 3 and 4 (a loud skip when one is missing, off CI)."""

from __future__ import annotations

import os
import warnings

import pytest

from tests.deploy.helm_chart import HELM_BINARIES, find_helm


@pytest.fixture(scope="session", params=sorted(HELM_BINARIES), ids=lambda major: f"helm{major}")
def helm(request: pytest.FixtureRequest) -> str:
    """Return the path of a Helm binary of the param's major; every chart test runs with each.

    Missing, it skips the tests loudly; on CI (CI set) it fails them: ./dev test installs both.
    """
    major: str = request.param
    found = find_helm(major)
    if found is None:
        message = (
            f"HELM {major} NOT FOUND (neither .tools/bin/{HELM_BINARIES[major]} nor it on PATH): THE HELM "
            f"CHART IS NOT TESTED WITH HELM {major}. Run deploy/tools/get-helm.sh first (./dev test does)."
        )
        if os.environ.get("CI"):
            pytest.fail(message)
        warnings.warn(message, stacklevel=1)
        pytest.skip(message)
    return found
