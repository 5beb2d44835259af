"""The chart's monitoring parts as the tests need them: the rendered alert rules, the
dashboard's PromQL, and promtool."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import yaml

from tests.bed import binaries
from tests.helm.chart import CHART, Helm, find

DASHBOARD = CHART / "dashboards" / "voicevault.json"
RUNBOOK = CHART.parents[1] / "docs" / "runbook.md"
RULES_TESTS = Path(__file__).parent / "alerts_test.yaml"
ENABLE_RULES = "metrics.prometheusRule.enabled=true"
# Labels Prometheus puts on every series it scrapes (the chart's selector uses job).
TARGET_LABELS = {"job", "instance"}
# What the dashboard's Grafana variables stand for when its queries are checked.
GRAFANA_VARIABLES = {"$__rate_interval": "5m", "$job": ".+"}


def rule_groups(helm: Helm, sets: tuple[str, ...] = ()) -> dict[str, Any]:
    """The PrometheusRule's groups, as a Prometheus rule file."""
    docs = helm.render(sets=[ENABLE_RULES, *sets], extra=["--skip-tests"])
    return {"groups": find(docs, "PrometheusRule")["spec"]["groups"]}


def alerts(groups: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {r["alert"]: r for g in groups["groups"] for r in g["rules"] if "alert" in r}


def dashboard() -> dict[str, Any]:
    board: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return board


def panels(board: dict[str, Any]) -> list[dict[str, Any]]:
    """Every panel, rows' children included."""
    out: list[dict[str, Any]] = []
    for panel in board["panels"]:
        out.append(panel)
        out += panel.get("panels", [])
    return out


def dashboard_queries(board: dict[str, Any]) -> dict[str, str]:
    """`panel title / refId` -> its PromQL, with the Grafana variables filled in."""
    queries = {}
    for panel in panels(board):
        for target in panel.get("targets", []):
            expr = target["expr"]
            for variable, value in GRAFANA_VARIABLES.items():
                expr = expr.replace(variable, value)
            assert "$" not in expr, f"an unknown Grafana variable in {expr!r}"
            queries[f"{panel['title']} / {target['refId']}"] = expr
    return queries


def variable_metrics(board: dict[str, Any]) -> set[str]:
    """Metrics the dashboard's query variables read (label_values(METRIC, label))."""
    found = set()
    for variable in board["templating"]["list"]:
        if variable["type"] == "query":
            match = re.fullmatch(r"label_values\((\w+), *(\w+)\)", variable["query"]["query"])
            assert match, variable["query"]
            found.add(match.group(1))
    return found


def as_recording_rules(queries: dict[str, str]) -> dict[str, Any]:
    """The queries as a rule file, so that promtool parses them with Prometheus's parser."""
    rules = [{"record": f"dashboard:query_{i}", "expr": e} for i, e in enumerate(queries.values())]
    return {"groups": [{"name": "dashboard", "rules": rules}]}


def write_yaml(path: Path, data: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def promtool(*args: str | Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(binaries.promtool()), *map(str, args)],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
