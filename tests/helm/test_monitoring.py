"""The chart's alert rules and Grafana dashboard, checked and unit-tested with promtool.

The rules are the ones `helm template` renders; `alerts_test.yaml` feeds them series and
says which alerts fire and which stay silent. tests/e2e/test_monitoring_names.py holds
the same expressions to a live scrape of the operator.
"""

from __future__ import annotations

import re
import shutil
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.bed import binaries
from tests.helm.chart import SCHEMA_ERROR, Helm, find, kinds
from tests.helm.monitoring import (
    DASHBOARD,
    ENABLE_RULES,
    RULES_TESTS,
    RUNBOOK,
    alerts,
    as_recording_rules,
    dashboard,
    dashboard_queries,
    panels,
    promtool,
    rule_groups,
    variable_metrics,
    write_yaml,
)
from tests.support.promql import names

pytestmark = pytest.mark.helm

ALERTS = {
    "VoicevaultRecordingsCached",
    "VoicevaultStorageSettingInvalid",
    "VoicevaultUploadFailureRatioHigh",
    "VoicevaultRetryBacklogGrowing",
    "VoicevaultWarningEventsDropped",
    "VoicevaultOperatorAbsent",
    "VoicevaultOperatorNotLeading",
}


def run_unit_tests(groups: dict[str, Any], tmp_path: Path) -> tuple[int, str]:
    """`promtool test rules` of alerts_test.yaml against `groups` (its rules.yaml)."""
    write_yaml(tmp_path / "rules.yaml", groups)
    shutil.copy(RULES_TESTS, tmp_path / RULES_TESTS.name)
    out = promtool("test", "rules", RULES_TESTS.name, cwd=tmp_path)
    return out.returncode, out.stdout + out.stderr


def test_rules_and_dashboard_are_off_by_default(helm_cli: Helm) -> None:
    docs = helm_cli.render(extra=["--skip-tests"])
    assert "PrometheusRule" not in kinds(docs)
    assert "ConfigMap" not in kinds(docs)


def test_promtool_is_the_pinned_release(tmp_path: Path) -> None:
    out = promtool("--version", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert binaries.prometheus_release() == "3.16.0"  # for the module version v0.316.0
    assert out.stdout.startswith(f"promtool, version {binaries.prometheus_release()} ")


def test_promtool_accepts_the_rendered_rules(helm_cli: Helm, tmp_path: Path) -> None:
    rules = write_yaml(tmp_path / "rules.yaml", rule_groups(helm_cli))
    out = promtool("check", "rules", "--lint-fatal", rules, cwd=tmp_path)
    assert out.returncode == 0, out.stdout + out.stderr
    assert f"SUCCESS: {len(ALERTS)} rules found" in out.stdout
    assert set(alerts(rule_groups(helm_cli))) == ALERTS


def test_without_leader_election_there_is_no_leader_alert(helm_cli: Helm) -> None:
    groups = rule_groups(helm_cli, ("operator.leaderElection.enabled=false",))
    assert set(alerts(groups)) == ALERTS - {"VoicevaultOperatorNotLeading"}


def test_alerts_fire_and_stay_silent_as_the_unit_tests_say(helm_cli: Helm, tmp_path: Path) -> None:
    code, output = run_unit_tests(rule_groups(helm_cli), tmp_path)
    assert code == 0, output
    assert "SUCCESS" in output


def test_every_alert_has_a_firing_and_a_silent_case() -> None:
    cases: dict[str, set[bool]] = defaultdict(set)
    spec = yaml.safe_load(RULES_TESTS.read_text())
    for test in spec["tests"]:
        for case in test.get("alert_rule_test", []):
            cases[case["alertname"]].add(bool(case.get("exp_alerts")))
    assert {name: {True, False} for name in ALERTS} == dict(cases)


def test_the_unit_tests_notice_a_threshold_change(helm_cli: Helm, tmp_path: Path) -> None:
    """The thresholds are live: the same series judged with other values fail the tests."""
    for value in (
        "metrics.prometheusRule.recordingsCached.above=5",
        "metrics.prometheusRule.uploadFailureRatio.above=0.9",
        "metrics.prometheusRule.settingInvalid.for=1h",
    ):
        code, output = run_unit_tests(rule_groups(helm_cli, (value,)), tmp_path)
        assert code != 0, f"{value}: the unit tests still pass"
        assert "FAILED" in output


def test_thresholds_labels_and_selector_are_values(helm_cli: Helm, tmp_path: Path) -> None:
    prefix = "metrics.prometheusRule"
    groups = rule_groups(
        helm_cli,
        (
            f'{prefix}.selector=job="vv"\\,cluster="eu"',
            f"{prefix}.labels.release=prometheus",
            f"{prefix}.alertLabels.team=telephony",
            f"{prefix}.recordingsCached.above=3",
            f"{prefix}.recordingsCached.for=30m",
            f"{prefix}.uploadFailureRatio.above=0.05",
            f"{prefix}.uploadFailureRatio.window=1h",
            f"{prefix}.uploadFailureRatio.minAttempts=100",
            f"{prefix}.retryBacklogGrowing.window=2h",
            f"{prefix}.eventsDropped.window=30m",
            f"{prefix}.operatorAbsent.severity=warning",
        ),
    )
    rules = write_yaml(tmp_path / "rules.yaml", groups)
    out = promtool("check", "rules", "--lint-fatal", rules, cwd=tmp_path)
    assert out.returncode == 0, out.stdout + out.stderr
    by_name = alerts(groups)
    for rule in by_name.values():
        assert rule["labels"]["team"] == "telephony"
        for selector in re.findall(r"voicevault_\w+\{([^}]*)\}", rule["expr"]):
            assert selector.startswith('job="vv",cluster="eu"'), rule["expr"]
    cached = by_name["VoicevaultRecordingsCached"]
    assert cached["expr"].endswith("> 3")
    assert cached["for"] == "30m"
    ratio = by_name["VoicevaultUploadFailureRatioHigh"]["expr"]
    assert ") > 0.05" in ratio and "[1h]" in ratio and ratio.endswith(">= 100")
    assert "offset 2h" in by_name["VoicevaultRetryBacklogGrowing"]["expr"]
    assert "[30m]" in by_name["VoicevaultWarningEventsDropped"]["expr"]
    assert by_name["VoicevaultOperatorAbsent"]["labels"]["severity"] == "warning"
    docs = helm_cli.render(
        sets=[ENABLE_RULES, f"{prefix}.labels.release=prometheus"], extra=["--skip-tests"]
    )
    meta = find(docs, "PrometheusRule")["metadata"]
    assert (meta["namespace"], meta["labels"]["release"]) == ("voicevault-system", "prometheus")


def _runbook_sections() -> set[str]:
    """GitHub's anchors of the runbook's second-level headings."""
    headings = re.findall(r"^## (.+)$", RUNBOOK.read_text(), flags=re.MULTILINE)
    return {re.sub(r"[^a-z0-9 -]", "", h.lower()).replace(" ", "-") for h in headings}


def test_every_alert_explains_itself_and_links_its_runbook_section(helm_cli: Helm) -> None:
    sections = _runbook_sections()
    base = "https://github.com/voicevault/voicevault/blob/main/docs/runbook.md"
    for name, rule in alerts(rule_groups(helm_cli)).items():
        notes = rule["annotations"]
        assert notes["summary"] and notes["description"], name
        assert rule["labels"]["severity"] in ("critical", "warning")
        url, _, anchor = notes["runbook_url"].partition("#")
        assert url == base, name
        assert anchor == name.lower() and anchor in sections, f"{name}: no runbook section"
    moved = rule_groups(helm_cli, ("metrics.prometheusRule.runbookUrl=https://wiki.example/vv",))
    for name, rule in alerts(moved).items():
        assert rule["annotations"]["runbook_url"] == f"https://wiki.example/vv#{name.lower()}"


def test_the_service_monitor_keeps_the_operators_namespace_label(helm_cli: Helm) -> None:
    """Without honorLabels the Prometheus Operator renames the account's `namespace`
    label of voicevault_storage_setting_valid to exported_namespace, and the rules and
    the dashboard, which group by namespace, would see the release namespace instead."""
    docs = helm_cli.render(sets=["metrics.serviceMonitor.enabled=true"], extra=["--skip-tests"])
    (endpoint,) = find(docs, "ServiceMonitor")["spec"]["endpoints"]
    assert endpoint["honorLabels"] is True


BAD_VALUES = [
    ("metrics.prometheusRule.uploadFailureRatio.above=2", "uploadFailureRatio.above"),
    ("metrics.prometheusRule.uploadFailureRatio.above=1.5", "uploadFailureRatio.above"),
    ("metrics.prometheusRule.recordingsCached.for=often", "recordingsCached.for: Does not match"),
    ("metrics.prometheusRule.notLeading.severity=page", "notLeading.severity must be one of"),
    ("metrics.prometheusRule.selector=job{x}", "prometheusRule.selector: Does not match"),
    ("metrics.prometheusRule.runbookUrl=docs/runbook.md", "runbookUrl: Does not match"),
    ("metrics.prometheusRule.eventsDropped.for=5m", "Additional property for is not allowed"),
    ("grafanaDashboard.namespace=Grafana_NS", "grafanaDashboard.namespace"),
]


@pytest.mark.parametrize(("value", "message"), BAD_VALUES, ids=[v for v, _ in BAD_VALUES])
def test_bad_monitoring_values_are_rejected(helm_cli: Helm, value: str, message: str) -> None:
    out = helm_cli.template(sets=[value, ENABLE_RULES], check=False)
    assert out.returncode != 0
    assert SCHEMA_ERROR in out.stderr
    assert message in out.stderr, out.stderr


# --- the dashboard -----------------------------------------------------------------------


def test_the_dashboard_config_map_carries_the_sidecar_label(helm_cli: Helm) -> None:
    docs = helm_cli.render(
        sets=["grafanaDashboard.enabled=true", "grafanaDashboard.annotations.grafana_folder=VV"],
        extra=["--skip-tests"],
    )
    config = find(docs, "ConfigMap", "voicevault-dashboard")
    assert config["metadata"]["namespace"] == "voicevault-system"
    assert config["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert config["metadata"]["annotations"] == {"grafana_folder": "VV"}
    assert config["data"] == {"voicevault.json": DASHBOARD.read_text().rstrip("\n")}
    (elsewhere,) = helm_cli.render(
        sets=["grafanaDashboard.enabled=true", "grafanaDashboard.namespace=monitoring"],
        extra=["--show-only", "templates/grafana-dashboard.yaml"],
    )
    assert elsewhere["metadata"]["namespace"] == "monitoring"


def test_the_dashboard_queries_parse_with_promtool(tmp_path: Path) -> None:
    queries = dashboard_queries(dashboard())
    rules = write_yaml(tmp_path / "dashboard.yaml", as_recording_rules(queries))
    out = promtool("check", "rules", rules, cwd=tmp_path)
    assert out.returncode == 0, out.stdout + out.stderr
    assert f"SUCCESS: {len(queries)} rules found" in out.stdout


def test_the_dashboard_shows_what_an_operator_watches() -> None:
    board = dashboard()
    assert board["uid"] == "voicevault"
    ids = [p["id"] for p in panels(board)]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    assert variable_metrics(board) == {"voicevault_leader"}
    shown: dict[str, str] = {}
    for title, expr in dashboard_queries(board).items():
        for metric in names(expr).metrics:
            shown.setdefault(metric, title)
    wanted = {
        "voicevault_recordings": "Recordings by phase",
        "voicevault_uploads_total": "Throughput",
        "voicevault_recording_store_seconds_bucket": "Store latency percentiles",
        "voicevault_uploaded_bytes_total": "Bytes stored per second",
        "voicevault_cached_recordings": "Retry and cached backlogs",
        "voicevault_callbacks_total": "Status callbacks",
        "voicevault_storage_setting_valid": "Storage setting validity by namespace",
    }
    for metric, title in wanted.items():
        assert shown.get(metric, "").startswith(title), f"{metric}: {shown.get(metric)}"
    quantiles = [e for t, e in dashboard_queries(board).items() if t.startswith("Store latency")]
    assert [e.split(",")[0] for e in quantiles] == [
        "histogram_quantile(0.5",
        "histogram_quantile(0.9",
        "histogram_quantile(0.99",
    ]
    by_namespace = next(
        e for t, e in dashboard_queries(board).items() if t.startswith("Storage setting")
    )
    assert names(by_namespace).grouping == {"namespace"}
