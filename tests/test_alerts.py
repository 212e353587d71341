"""Prometheus alert rules: well-formed, only exported metrics, runbooks that exist, and (with promtool)
rule syntax and unit tests that make each key alert fire on synthetic series."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import CollectorRegistry

from promql_names import counter_function_arguments, exposed_sample_names, metric_names
from streamer.metrics import Metrics

REPO = Path(__file__).resolve().parents[1]
RULES = REPO / "deploy" / "prometheus" / "alerts.yml"
RULE_TESTS = REPO / "deploy" / "prometheus" / "alerts.test.yml"
TROUBLESHOOTING = REPO / "docs" / "troubleshooting.md"
REQUIRED = {
    "ColdstreamDown", "NotReady", "WatchdogRestarts", "SeedLinkDisconnected", "StationSilent", "DataLatencyHigh",
    "WindowsShed", "RedisBacklogGrowing", "RedisPublishErrors",
}
SEVERITIES = {"critical", "warning", "info"}


@pytest.fixture(scope="module")
def rules() -> list[dict[str, Any]]:
    doc = yaml.safe_load(RULES.read_text())
    assert set(doc) == {"groups"}
    out = []
    for group in doc["groups"]:
        assert group["name"].startswith("coldstream.")
        out.extend(group["rules"])
    return out


@pytest.fixture(scope="module")
def exposed() -> dict[str, str]:
    return exposed_sample_names(Metrics(CollectorRegistry()).registry)


def github_anchor(heading: str) -> str:
    text = heading.strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def test_required_alerts_exist_once(rules: list[dict[str, Any]]) -> None:
    names = [r["alert"] for r in rules]
    assert len(names) == len(set(names)), "duplicate alert names"
    assert REQUIRED <= set(names), sorted(REQUIRED - set(names))


def test_rules_have_duration_severity_and_annotations(rules: list[dict[str, Any]]) -> None:
    for r in rules:
        assert set(r) == {"alert", "expr", "for", "labels", "annotations"}, r["alert"]
        assert re.fullmatch(r"\d+[smh]", r["for"]), r["alert"]
        assert r["labels"]["severity"] in SEVERITIES, r["alert"]
        assert r["labels"]["service"] == "coldstream"
        ann = r["annotations"]
        assert set(ann) == {"summary", "description", "runbook_url"}, r["alert"]
        assert ann["summary"] and len(ann["description"]) > 40
        assert "job=~\"coldstream.*\"" in r["expr"], f"{r['alert']}: every selector is limited to the coldstream jobs"


def test_expressions_name_only_exported_metrics(rules: list[dict[str, Any]], exposed: dict[str, str]) -> None:
    known = set(exposed) | {"up"}
    for r in rules:
        names = metric_names(r["expr"])
        assert names, r["alert"]
        unknown = {n for n in names - known if not n.startswith("process_")}
        assert not unknown, f"{r['alert']}: {sorted(unknown)} not exported by streamer/metrics.py"
        for func, name in counter_function_arguments(r["expr"]):
            assert exposed.get(name) in ("counter", "histogram"), f"{r['alert']}: {func}({name}) needs a counter"
        for name in re.findall(r"\bderiv\(\s*([a-zA-Z_:][\w:]*)", r["expr"]):
            assert exposed.get(name) == "gauge", f"{r['alert']}: deriv({name}) needs a gauge"


def test_runbook_links_point_at_existing_sections(rules: list[dict[str, Any]]) -> None:
    anchors = {github_anchor(m) for m in re.findall(r"^#{2,3} (.+)$", TROUBLESHOOTING.read_text(), flags=re.M)}
    for r in rules:
        url = r["annotations"]["runbook_url"]
        path, _, anchor = url.partition("#")
        assert path == "docs/troubleshooting.md", r["alert"]
        assert anchor in anchors, f"{r['alert']}: no section #{anchor} in docs/troubleshooting.md"


def test_unit_tests_cover_the_paging_alerts(rules: list[dict[str, Any]]) -> None:
    doc = yaml.safe_load(RULE_TESTS.read_text())
    assert doc["rule_files"] == ["alerts.yml"]
    tested = {t["alertname"] for case in doc["tests"] for t in case["alert_rule_test"]}
    assert tested <= {r["alert"] for r in rules}
    assert {"StationSilent", "ColdstreamDown", "WindowsShed", "RedisBacklogGrowing", "WatchdogRestarts"} <= tested


promtool = pytest.mark.skipif(
    shutil.which("promtool") is None,
    reason="promtool not installed (Debian package 'prometheus'); YAML and metric-name checks above still ran",
)


@promtool
def test_promtool_check_rules() -> None:
    proc = subprocess.run(["promtool", "check", "rules", str(RULES)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr


@promtool
def test_promtool_unit_tests_fire_the_alerts() -> None:
    proc = subprocess.run(
        ["promtool", "test", "rules", RULE_TESTS.name], cwd=RULE_TESTS.parent, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
