"""The Grafana dashboard: importable JSON whose every query names only metrics the service exports."""

from __future__ import annotations

import importlib.util
import json
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
DASHBOARD = REPO / "deploy" / "grafana" / "coldstream.json"
GENERATOR = REPO / "deploy" / "grafana" / "generate.py"
# Produced by Prometheus itself for every scrape target, not by the service.
PROMETHEUS_SYNTHETIC = {"up"}


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


@pytest.fixture(scope="module")
def exposed() -> dict[str, str]:
    return exposed_sample_names(Metrics(CollectorRegistry()).registry)


def panels(d: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for p in d["panels"]:
        out.append(p)
        out.extend(p.get("panels", []))  # collapsed rows nest their panels
    return out


def all_exprs(d: dict[str, Any]) -> list[tuple[str, str]]:
    """(where, expr) for every panel target, annotation and variable query."""
    out = []
    for p in panels(d):
        for t in p.get("targets", []):
            out.append((f"panel {p['title']!r} {t['refId']}", t["expr"]))
    for a in d["annotations"]["list"]:
        if "expr" in a:
            out.append((f"annotation {a['name']!r}", a["expr"]))
    for v in d["templating"]["list"]:
        if v["type"] == "query":
            m = re.fullmatch(r"label_values\((.*),\s*(\w+)\)", v["query"]["query"])
            assert m, v["query"]
            out.append((f"variable {v['name']}", m.group(1)))
    return out


# --- the PromQL name extractor itself --------------------------------------------------------------


@pytest.mark.parametrize(
    ("expr", "names"),
    [
        ("up", {"up"}),
        ('sum by (le) (rate(foo_bucket{job=~"$job",le!="+Inf"}[$__rate_interval]))', {"foo_bucket"}),
        ("histogram_quantile(0.95, sum by (le, instance) (rate(a_bucket[5m])))", {"a_bucket"}),
        ("time() - max by (stage) (x_timestamp_seconds)", {"x_timestamp_seconds"}),
        ("sum(rate(a_total[1h])) / sum(rate(b_total[1h])) * 60 > 1e-3", {"a_total", "b_total"}),
        ('changes(process_start_time_seconds{job="cs"}[30m]) > 2 and on (instance) c == 0', {"process_start_time_seconds", "c"}),
        ('label_replace(m, "dst", "$1", "src", "(.*)") offset 5m', {"m"}),
        ('max(a) without (station) unless ignoring(job) b{x="rate(nope[5m])"}', {"a", "b"}),
        ("topk(10, coldstream_data_latency_seconds)", {"coldstream_data_latency_seconds"}),
        ("vector(5)", set()),
    ],
)
def test_metric_name_extraction(expr: str, names: set[str]) -> None:
    assert metric_names(expr) == names


def test_counter_function_arguments() -> None:
    assert counter_function_arguments("sum(rate(a_total[5m])) + increase( b_bucket{x='y'}[1h])") == [
        ("rate", "a_total"),
        ("increase", "b_bucket"),
    ]


# --- the dashboard ---------------------------------------------------------------------------------


def test_dashboard_is_current_with_its_generator() -> None:
    spec = importlib.util.spec_from_file_location("coldstream_dashboard_generator", GENERATOR)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.render() == DASHBOARD.read_text(), "run: python deploy/grafana/generate.py"


def test_every_query_names_only_exported_metrics(dashboard: dict[str, Any], exposed: dict[str, str]) -> None:
    known = set(exposed) | PROMETHEUS_SYNTHETIC
    also_listed = Metrics(CollectorRegistry()).metric_names() | PROMETHEUS_SYNTHETIC
    used: set[str] = set()
    for where, expr in all_exprs(dashboard):
        names = metric_names(expr)
        assert names, f"{where}: no metric in {expr!r}"
        unknown = names - known
        assert not unknown, f"{where}: {sorted(unknown)} not exported by streamer/metrics.py (query {expr!r})"
        assert names <= also_listed
        used |= names
    # the dashboard covers the pipeline end to end
    for must in ("coldstream_data_latency_seconds", "coldstream_window_queue_depth", "coldstream_windows_shed_total",
                 "coldstream_picks_total", "coldstream_redis_backlog_entries", "coldstream_sampler_steps_bucket",
                 "coldstream_end_to_end_latency_seconds_bucket", "coldstream_inference_duration_seconds_bucket",
                 "coldstream_gpu_memory_used_bytes", "coldstream_watchdog_pings_total", "coldstream_ready"):
        assert must in used, must


def test_rate_and_quantiles_are_applied_to_the_right_types(dashboard: dict[str, Any], exposed: dict[str, str]) -> None:
    for where, expr in all_exprs(dashboard):
        for func, name in counter_function_arguments(expr):
            kind = exposed.get(name)
            assert kind in ("counter", "histogram") or name in {"process_cpu_seconds_total"}, (
                f"{where}: {func}() over {name} ({kind}): rate/increase need a counter"
            )
        if "histogram_quantile" in expr:
            assert re.search(r"by \([^)]*\ble\b", expr), f"{where}: histogram_quantile must aggregate by le"
            assert all(n.endswith("_bucket") for n in metric_names(expr)), where


def test_every_panel_has_title_datasource_and_unique_ref_ids(dashboard: dict[str, Any]) -> None:
    ids = [p["id"] for p in panels(dashboard)]
    assert len(ids) == len(set(ids))
    titles = [p["title"] for p in panels(dashboard) if p["type"] != "row"]
    assert len(titles) == len(set(titles)), "duplicate panel titles"
    for p in panels(dashboard):
        assert p.get("title"), p
        g = p["gridPos"]
        assert 0 <= g["x"] and g["x"] + g["w"] <= 24 and g["h"] > 0
        if p["type"] == "row":
            continue
        assert p["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, p["title"]
        assert p.get("description"), f"{p['title']}: operators need a description"
        refs = [t["refId"] for t in p["targets"]]
        assert refs and len(refs) == len(set(refs)), p["title"]
        for t in p["targets"]:
            assert t["datasource"] == p["datasource"]
            if "station=~" in t["expr"] or "coldstream_" in t["expr"]:
                assert 'job=~"$job"' in t["expr"], f"{p['title']}: query not filtered by $job"


def test_rows_and_variables(dashboard: dict[str, Any]) -> None:
    rows = [p["title"] for p in dashboard["panels"] if p["type"] == "row"]
    assert rows == ["Service health", "Data health", "ML pipeline", "Outputs", "Early-warning picks"]
    assert dashboard["schemaVersion"] >= 36 and dashboard["uid"]
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    assert "coldstream_data_latency_seconds" in variables["station"]["query"]["query"]
    assert variables["station"]["includeAll"] and variables["station"]["multi"]
    # every variable a query uses is defined (Grafana built-ins start with __)
    for where, expr in all_exprs(dashboard):
        for var in re.findall(r"\$\{?(\w+)", expr):
            assert var.startswith("__") or var in variables, f"{where}: undefined variable ${var}"
    # no panel overlaps another
    cells: set[tuple[int, int]] = set()
    for p in panels(dashboard):
        g = p["gridPos"]
        area = {(x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])}
        assert not cells & area, f"{p['title']} overlaps another panel"
        cells |= area


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool not installed (Debian package 'prometheus')")
def test_every_query_is_valid_promql(dashboard: dict[str, Any], tmp_path: Path) -> None:
    """promtool parses each query, written as a recording rule with Grafana's variables filled in."""
    rules = []
    for i, (where, expr) in enumerate(all_exprs(dashboard)):
        concrete = expr.replace("$__rate_interval", "1m").replace("$__interval", "1m")
        rules.append({"record": f"dashboard:query_{i}", "expr": concrete})
    path = tmp_path / "dashboard-queries.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    proc = subprocess.run(["promtool", "check", "rules", str(path)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
