"""The chart's alert rules and Grafana dashboard name only what the running operator
exports: every metric, label, and matched label value, checked against a live scrape."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.bed.stack import Stack
from tests.helm.chart import Helm
from tests.helm.monitoring import (
    TARGET_LABELS,
    alerts,
    dashboard,
    dashboard_queries,
    rule_groups,
    variable_metrics,
)
from tests.support.invariants import samples, wait_metrics_moved
from tests.support.kube import wait_for
from tests.support.promql import exported, unknown_names

pytestmark = [pytest.mark.kube, pytest.mark.s3, pytest.mark.helm, pytest.mark.slow]


def test_rules_and_dashboard_name_only_exported_series(live_stack: Stack, tmp_path: Path) -> None:
    account = live_stack.add_account()
    before = live_stack.operator.metrics()
    live_stack.record(account, "call-1", os.urandom(20_000))
    body = live_stack.wait_phase(account.namespace, "call-1", "Completed", "Failed", timeout=90)
    assert body["status"]["phase"] == "Completed", body["status"]
    scrape = wait_metrics_moved(
        live_stack, before, [("voicevault_recording_store_seconds_count", {}, 1)]
    )
    available = exported(scrape)
    # the scrape carries what the expressions match on, not only the metric names
    assert "Retrying" in available["voicevault_recordings"]["phase"]
    assert "Warning" in available["voicevault_events_dropped_total"]["type"]

    rules = alerts(rule_groups(Helm(tmp_path / "helm")))
    assert rules, "no alert rules rendered"
    expressions = {f"alert {name}": rule["expr"] for name, rule in rules.items()}
    board = dashboard()
    expressions |= {f"panel {t}": e for t, e in dashboard_queries(board).items()}
    problems = {
        where: unknown
        for where, expr in expressions.items()
        if (unknown := unknown_names(expr, available, TARGET_LABELS))
    }
    assert not problems, f"names the operator does not export: {problems}"
    assert variable_metrics(board) <= set(available)


def test_a_deleted_setting_leaves_no_invalid_series(live_stack: Stack) -> None:
    """VoicevaultStorageSettingInvalid fires on 0: an account that removed its setting
    has no setting to be invalid, so its series goes rather than reading 0 forever."""
    account = live_stack.add_account()

    def valid() -> list[float]:
        text = live_stack.operator.metrics()
        return samples(text, "voicevault_storage_setting_valid", namespace=account.namespace)

    wait_for(lambda: valid() == [1], timeout=30, what="the setting to be counted valid")
    live_stack.delete(account.namespace, "voicestoragesettings", "default")
    wait_for(lambda: valid() == [], timeout=30, what="the setting's series to go")
