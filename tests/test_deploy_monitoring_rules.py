"""Alert rules and dashboard queries against what the service really exports and how the units run it.

Each test takes its facts from the code (the metrics registry scraped over HTTP, the watchdog
interval the notifier derives from ``WatchdogSec``, the label values the ingest and SeedLink code
write) rather than from the documentation.
"""

from __future__ import annotations

import ast
import io
import json
import random
import re
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from obspy import Stream, Trace, UTCDateTime
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from models.spec import DEFAULT_SPEC
from streamer.config import BufferSettings, SeedLinkServer, SeedLinkSettings, Settings, WindowSettings
from streamer.ingest import Ingestor
from streamer.metrics import Metrics, serve_metrics
from streamer.notify import Notifier
from streamer.records import NS_PER_S
from streamer.seedlink import SeedLinkSource
from streamer.seedlink_state import StateTracker

pytestmark = pytest.mark.timeout(10)

REPO = Path(__file__).resolve().parents[1]
RULES = REPO / "deploy" / "prometheus" / "alerts.yml"
RULE_TESTS = REPO / "deploy" / "prometheus" / "alerts.test.yml"
DASHBOARD = REPO / "deploy" / "grafana" / "coldstream.json"
UNIT = REPO / "deploy" / "coldstream.service"
T0_S = 1_767_225_600  # 2026-01-01T00:00:00Z, on the 10 s grid


def rules() -> dict[str, dict[str, Any]]:
    doc = yaml.safe_load(RULES.read_text())
    return {r["alert"]: r for g in doc["groups"] for r in g["rules"]}


def seconds(text: str) -> float:
    m = re.fullmatch(r"(\d+(?:\.\d+)?)(ms|s|m|h|min)?", text.strip())
    assert m, text
    return float(m.group(1)) * {"ms": 1e-3, "s": 1, None: 1, "m": 60, "min": 60, "h": 3600}[m.group(2)]


def unit_value(key: str) -> str:
    (value,) = re.findall(rf"^{key}=(.+)$", UNIT.read_text(), flags=re.M)
    return value.strip()


def scrape(metrics: Metrics) -> dict[str, list[tuple[dict[str, str], float]]]:
    """Sample name -> [(labels, value)] as Prometheus would read them from ``/metrics``."""
    server = serve_metrics(metrics, "127.0.0.1", 0)
    try:
        text = urllib.request.urlopen(f"http://127.0.0.1:{server.server_port}/metrics", timeout=5).read().decode()
    finally:
        server.shutdown()
    out: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out.setdefault(s.name, []).append((dict(s.labels), s.value))
    return out


# --- WatchdogPingsWithheld must be able to fire before systemd kills the process -------------------


def test_watchdog_pings_withheld_can_fire_before_the_watchdog_kills() -> None:
    """Pings stop once a stage is stalled for ``watchdog_stall_s``; systemd kills ``WatchdogSec``
    after the last ping, and the restarted process starts its counters (and stage timestamps)
    again. The early warning is useless unless its condition can hold, for its ``for:``, plus one
    rule evaluation, inside that stretch."""
    watchdog_s = seconds(unit_value("WatchdogSec"))
    ping_interval_s = Notifier(environ={"NOTIFY_SOCKET": "/run/x", "WATCHDOG_USEC": str(int(watchdog_s * 1e6))}).watchdog_interval_s
    assert ping_interval_s is not None
    stall_s = Settings().service.watchdog_stall_s
    evaluation_s = seconds(str(yaml.safe_load(RULE_TESTS.read_text())["evaluation_interval"]))
    rule = rules()["WatchdogPingsWithheld"]
    for_s = seconds(rule["for"])
    expr = rule["expr"]
    # Stage age at the kill: the last ping came at most one interval before the stall was seen,
    # so the stalled stage is at least stall_s + (watchdog_s - ping_interval_s) old when killed.
    kill_age_s = stall_s + watchdog_s - ping_interval_s
    m = re.search(r"increase\(coldstream_watchdog_pings_total\{[^}]*\}\[(\w+)\]\)\s*==\s*0", expr)
    if m:
        # no ping increase over the range: true at the earliest `range` after the last ping
        earliest_s = seconds(m.group(1))
        assert earliest_s + for_s + evaluation_s <= watchdog_s, (
            f"no ping increase for {m.group(1)} plus for: {rule['for']}, but systemd kills {watchdog_s:g} s after the "
            "last ping: the alert can never fire"
        )
        return
    m = re.search(r"coldstream_stage_heartbeat_timestamp_seconds\{[^}]*\}\)?\s*\)?\s*>\s*(\d+(?:\.\d+)?)", expr)
    assert m, f"unrecognised WatchdogPingsWithheld expression: {expr}"
    threshold_s = float(m.group(1))
    assert threshold_s + for_s + evaluation_s <= kill_age_s, (threshold_s, for_s, kill_age_s)
    # a healthy stage reports at least once per grid stride; the threshold must not page on that
    assert threshold_s > 2 * Settings().windows.stride_s


# --- RedisDisconnected must not fire for a healthy scale-out worker -------------------------------


def test_redis_disconnected_is_scoped_to_processes_that_publish() -> None:
    """``coldstream worker`` builds a fresh registry and sets only ``coldstream_ready`` (see
    streamer/commands/worker.py); its publisher-side gauge ``coldstream_redis_connected`` stays 0
    for its whole life. A rule ``coldstream_redis_connected == 0`` therefore pages for every healthy
    worker. The rule must be joined with a series only the publishing roles (run, ingest) have."""
    worker = Metrics(CollectorRegistry())
    worker.ready.set(1)  # what the worker command does once warmed up
    scraped = scrape(worker)
    assert scraped["coldstream_redis_connected"] == [({}, 0.0)], "premise: a healthy worker exports 0"

    publisher = Metrics(CollectorRegistry())
    SeedLinkSource(SeedLinkSettings(servers=[SeedLinkServer(streams=["XX_*"])]).servers[0],
                   SeedLinkSettings(servers=[SeedLinkServer(streams=["XX_*"])]), lambda *_: None, StateTracker(),
                   publisher, rng=random.Random(0))
    publisher_names = set(scrape(publisher))

    expr = rules()["RedisDisconnected"]["expr"]
    gates = re.findall(r"\band on \((?:job, instance|instance, job)\)\s*(?:group by \([^)]*\)\s*\()?\s*([a-z_]+)", expr)
    worker_names = {name for name, samples in scraped.items() if samples}
    assert any(g not in worker_names and g in publisher_names for g in gates), (
        f"RedisDisconnected ({expr.strip()}) fires for every healthy worker: no join on a series the worker lacks"
    )


# --- dashboard station filter selects the station label format each metric uses -------------------


def _record(net: str, sta: str, cha: str, start_s: float, n: int = 100) -> bytes:
    tr = Trace(np.arange(n, dtype=np.int32), header={"network": net, "station": sta, "location": "00", "channel": cha,
                                                     "sampling_rate": 100.0, "starttime": UTCDateTime(T0_S + start_s)})
    buf = io.BytesIO()
    Stream([tr]).write(buf, format="MSEED", reclen=512, encoding="STEIM2")
    return buf.getvalue()


@dataclass
class _Packet:
    payload: bytes
    seqnum: int
    station_id: str
    payload_format: str = "2"

    def record(self) -> Any:
        from pymseed import MS3Record

        return MS3Record.parse(self.payload)


def _station_label_values() -> dict[str, set[str]]:
    """Sample name -> the station label values the real code writes for station XX.AAA.00."""
    metrics = Metrics(CollectorRegistry())
    now_ns = (T0_S + 40) * NS_PER_S
    ingest = Ingestor(DEFAULT_SPEC, BufferSettings(), WindowSettings(), metrics, now_ns=lambda: now_ns)
    settings = SeedLinkSettings(servers=[SeedLinkServer(streams=["XX_*"])])
    source = SeedLinkSource(settings.servers[0], settings, lambda payload, ref, arrival: ingest.add_payload(payload, arrival, ref),
                            StateTracker(), metrics, rng=random.Random(0))
    seq = 0
    for start_s in (0.0, 1.0, 3.0):  # 1 s of HHZ data missing before the third record
        seq += 1
        source._deliver(_Packet(_record("XX", "AAA", "HHZ", start_s), seq, "XX_AAA"), now_ns)
    ingest.update_gauges(now_ns)
    out: dict[str, set[str]] = {}
    for name, samples in scrape(metrics).items():
        values = {labels["station"] for labels, _ in samples if "station" in labels}
        if values:
            out[name] = values
    return out


def test_station_variable_matches_the_station_label_of_every_filtered_query() -> None:
    """``$station`` takes its values from one metric; a query that filters another metric with
    ``station=~"$station"`` must find the same label values there, or picking stations empties it."""
    real = _station_label_values()
    assert real["coldstream_sequence_gaps_total"], "premise: the gap was counted"
    dashboard = json.loads(DASHBOARD.read_text())
    (var,) = [v for v in dashboard["templating"]["list"] if v["name"] == "station"]
    source = re.match(r"label_values\(([a-z_]+)", var["query"]["query"]).group(1)
    choices = real[source]
    panels = [p for top in dashboard["panels"] for p in [top, *top.get("panels", [])]]
    bad = []
    for p in panels:
        for t in p.get("targets", []):
            for name in re.findall(r"([a-z_]+)\{[^}]*station=~\"\$station\"", t["expr"]):
                if name in real and not real[name] <= choices:
                    bad.append(f"{p['title']!r}: {name} station={sorted(real[name])}, $station offers {sorted(choices)}")
    assert not bad, bad


# --- documented label values --------------------------------------------------------------------------


def _shed_reasons_in_code() -> set[str]:
    """Reason strings passed to ``windows_shed.labels(reason=...)`` (literals or SHED_* constants)."""
    reasons: set[str] = set()
    for path in (REPO / "streamer").rglob("*.py"):
        tree = ast.parse(path.read_text())
        constants = {t.id: n.value.value for n in ast.walk(tree) if isinstance(n, ast.Assign)
                     for t in n.targets if isinstance(t, ast.Name) and isinstance(n.value, ast.Constant)
                     and isinstance(n.value.value, str)}
        if path.name == "worker.py" and path.parent.name == "streamer":
            reasons |= {v for k, v in constants.items() if k.startswith("SHED_") and k != "SHED_LOG_INTERVAL_S"}
        for node in ast.walk(tree):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "labels"
                    and isinstance(node.func.value, ast.Attribute) and node.func.value.attr == "windows_shed"):
                for kw in node.keywords:
                    if isinstance(kw.value, ast.Constant):
                        reasons.add(kw.value.value)
    return reasons


def test_windows_shed_reasons_are_documented() -> None:
    reasons = _shed_reasons_in_code()
    assert {"queue_full", "age", "error"} <= reasons
    row = next(line for line in (REPO / "docs" / "metrics.md").read_text().splitlines()
               if line.startswith("| `coldstream_windows_shed_total`"))
    documented = set(re.findall(r"`([a-z_]+)`", row.split("|")[5]))
    assert reasons <= documented, f"docs/metrics.md misses shed reasons {sorted(reasons - documented)}"
    runbook = (REPO / "docs" / "troubleshooting.md").read_text().split("### WindowsShed", 1)[1].split("\n### ", 1)[0]
    assert all(f"`{r}`" in runbook for r in reasons), sorted(r for r in reasons if f"`{r}`" not in runbook)


def test_redis_connected_stat_ignores_scale_out_workers() -> None:
    """The dashboard's Redis stat takes the minimum over the selected instances: a scale-out worker,
    which never sets the gauge (0 for its whole life), must not turn it DOWN."""
    panels = json.loads(DASHBOARD.read_text())["panels"]
    stat = next(p for p in panels if p.get("title") == "Redis connected")
    exprs = [t["expr"] for t in stat["targets"]]
    assert all("coldstream_seedlink_connected" in e for e in exprs), exprs
