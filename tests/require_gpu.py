"""The MLP_REQUIRE_GPU hooks, which tests/conftest.py takes in: a module of their own, light to
import (pytest and os only), so that tests/test_gpu_check.py can run them in a pytest of its own
without the conftest's libraries."""

from __future__ import annotations

import os

import pytest


# MLP_REQUIRE_GPU=1 (bench/gpu_check.sh sets it): on a GPU machine a skip proves nothing, so a
# test marked `gpu` that would be skipped fails instead, with the skip's reason; so does a test
# module skipped whole at import (it may hold GPU tests). Without the variable, skips stay skips.
def _require_gpu() -> bool:
    return os.environ.get("MLP_REQUIRE_GPU") == "1"


def _skip_reason(report) -> str:
    longrepr = report.longrepr
    text = longrepr[2] if isinstance(longrepr, tuple) and len(longrepr) == 3 else str(longrepr)
    return text.removeprefix("Skipped: ")


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    report = yield
    if (_require_gpu() and report.skipped and not hasattr(report, "wasxfail")
            and item.get_closest_marker("gpu") is not None):
        report.outcome = "failed"
        report.longrepr = f"MLP_REQUIRE_GPU=1: this GPU test would be skipped: {_skip_reason(report)}"
    return report


@pytest.hookimpl(wrapper=True)
def pytest_make_collect_report(collector):
    report = yield
    if _require_gpu() and report.skipped:
        report.outcome = "failed"
        report.longrepr = f"MLP_REQUIRE_GPU=1: {collector.nodeid} would be skipped whole: {_skip_reason(report)}"
    return report
