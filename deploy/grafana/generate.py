"""Generate ``coldstream.json``, the Grafana dashboard for a network operations centre.

    python deploy/grafana/generate.py            # rewrite deploy/grafana/coldstream.json
    python deploy/grafana/generate.py --check    # exit 1 when the committed JSON is stale

The dashboard is written as code so that every panel follows the same conventions (data source
variable, job/instance filters, units) and ``tests/test_dashboard.py`` can check every query against
the metrics the service really exports. Edit this file, not the JSON. Standard library only.

Import: Grafana > Dashboards > New > Import > upload ``coldstream.json``, then pick the Prometheus
data source in the ``Data source`` drop-down (or provision the file; nothing in it is site-specific).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

OUTPUT = Path(__file__).with_name("coldstream.json")

DS = {"type": "prometheus", "uid": "${datasource}"}
# Every selector carries the job/instance filters so one Grafana serves several deployments.
SEL = 'job=~"$job",instance=~"$instance"'
STA = SEL + ',station=~"$station"'
RATE = "$__rate_interval"

# End-to-end latency objective drawn on the latency panel: newest sample arrival -> output in Redis.
LATENCY_SLO_S = 5.0

Panel = dict[str, Any]


class Layout:
    """Places panels left to right on Grafana's 24-column grid, wrapping to new lines."""

    def __init__(self) -> None:
        self.x = 0
        self.y = 0
        self.row_h = 0
        self.next_id = 1
        self.panels: list[Panel] = []

    def _id(self) -> int:
        i = self.next_id
        self.next_id += 1
        return i

    def row(self, title: str) -> None:
        if self.x:
            self.y += self.row_h
        self.x, self.row_h = 0, 0
        self.panels.append(
            {"type": "row", "title": title, "id": self._id(), "collapsed": False, "panels": [],
             "gridPos": {"h": 1, "w": 24, "x": 0, "y": self.y}}
        )
        self.y += 1

    def add(self, panel: Panel, w: int, h: int) -> None:
        if self.x + w > 24:
            self.y += self.row_h
            self.x, self.row_h = 0, 0
        panel["id"] = self._id()
        panel["gridPos"] = {"h": h, "w": w, "x": self.x, "y": self.y}
        self.panels.append(panel)
        self.x += w
        self.row_h = max(self.row_h, h)


def target(expr: str, legend: str = "", ref: str = "A", *, instant: bool = False, fmt: str = "time_series") -> dict[str, Any]:
    t: dict[str, Any] = {"datasource": DS, "expr": expr, "refId": ref, "legendFormat": legend or "__auto"}
    if instant:
        t.update({"instant": True, "range": False})
    else:
        t["range"] = True
    if fmt != "time_series":
        t["format"] = fmt
    return t


def thresholds(*steps: tuple[float | None, str]) -> dict[str, Any]:
    return {"mode": "absolute", "steps": [{"color": c, "value": v} for v, c in steps]}


def timeseries(title: str, description: str, targets: list[dict[str, Any]], unit: str = "short", *,
               stack: bool = False, min0: bool = True, threshold_line: float | None = None) -> Panel:
    custom: dict[str, Any] = {"drawStyle": "line", "lineWidth": 1, "fillOpacity": 10, "showPoints": "never",
                              "spanNulls": False}
    if stack:
        custom["stacking"] = {"mode": "normal", "group": "A"}
    defaults: dict[str, Any] = {"unit": unit, "custom": custom}
    if min0:
        defaults["min"] = 0
    if threshold_line is not None:
        defaults["thresholds"] = thresholds((None, "transparent"), (threshold_line, "red"))
        custom["thresholdsStyle"] = {"mode": "line+area"}
    return {
        "type": "timeseries", "title": title, "description": description, "datasource": DS,
        "fieldConfig": {"defaults": defaults, "overrides": []},
        "options": {"legend": {"displayMode": "list", "placement": "bottom", "showLegend": True},
                    "tooltip": {"mode": "multi", "sort": "desc"}},
        "targets": targets,
    }


def stat(title: str, description: str, expr: str, unit: str = "short", *,
         steps: tuple[tuple[float | None, str], ...] = ((None, "green"),),
         mappings: list[dict[str, Any]] | None = None, legend: str = "") -> Panel:
    return {
        "type": "stat", "title": title, "description": description, "datasource": DS,
        "fieldConfig": {"defaults": {"unit": unit, "thresholds": thresholds(*steps), "mappings": mappings or [],
                                     "color": {"mode": "thresholds"}}, "overrides": []},
        "options": {"reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
                    "colorMode": "background", "graphMode": "area", "justifyMode": "auto", "textMode": "auto",
                    "orientation": "auto"},
        "targets": [target(expr, legend)],
    }


def value_map(*pairs: tuple[str, str, str]) -> list[dict[str, Any]]:
    return [{"type": "value", "options": {v: {"text": text, "color": color} for v, text, color in pairs}}]


def service_health(lay: Layout) -> None:
    lay.row("Service health")
    lay.add(stat("Ready", "1 once the model is loaded and a warm-up inference ran (READY=1 sent to systemd).",
                 f"min(coldstream_ready{{{SEL}}})", steps=((None, "red"), (1, "green")),
                 mappings=value_map(("0", "NOT READY", "red"), ("1", "READY", "green"))), 3, 4)
    lay.add(stat("Scrape up", "Prometheus can scrape every selected instance.", f"min(up{{{SEL}}})",
                 steps=((None, "red"), (1, "green")), mappings=value_map(("0", "DOWN", "red"), ("1", "UP", "green"))), 3, 4)
    lay.add(stat("SeedLink connected", "SeedLink connections up / configured servers.",
                 f"sum(coldstream_seedlink_connected{{{SEL}}}) / count(coldstream_seedlink_connected{{{SEL}}})",
                 "percentunit", steps=((None, "red"), (0.99, "green"))), 3, 4)
    lay.add(stat("Stations reporting", "Stations with data in the last minute.",
                 f"sum(coldstream_stations_reporting{{{SEL}}})", steps=((None, "red"), (1, "green"))), 3, 4)
    lay.add(stat("Uptime", "Time since the process started; a short uptime means a (watchdog) restart.",
                 f"min(time() - process_start_time_seconds{{{SEL}}})", "s",
                 steps=((None, "orange"), (600, "green"))), 3, 4)
    lay.add(stat("Model load", "Time the last start took to load the model and run the warm-up inference.",
                 f"max(coldstream_model_load_seconds{{{SEL}}})", "s"), 3, 4)
    lay.add({
        "type": "table", "title": "Build", "description": "Service and model versions (coldstream_build_info labels).",
        "datasource": DS, "fieldConfig": {"defaults": {}, "overrides": []},
        "options": {"showHeader": True, "cellHeight": "sm"},
        "transformations": [{"id": "organize", "options": {"excludeByName": {"Time": True, "Value": True, "__name__": True}}}],
        "targets": [target(f"coldstream_build_info{{{SEL}}}", instant=True, fmt="table")],
    }, 6, 4)
    lay.add(timeseries("Stage progress age", "Seconds since each stage (ingest, worker, publisher) last made progress. "
                       "Watchdog pings stop when a stage exceeds service.watchdog_stall_s.",
                       [target(f"time() - max by (instance, stage) (coldstream_stage_last_progress_timestamp_seconds{{{SEL}}})",
                               "{{instance}} {{stage}}")], "s"), 8, 7)
    lay.add(timeseries("Watchdog pings / min", "systemd watchdog pings; zero while healthy under systemd means a stalled stage.",
                       [target(f"sum by (instance) (rate(coldstream_watchdog_pings_total{{{SEL}}}[{RATE}])) * 60",
                               "{{instance}}")]), 8, 7)
    lay.add(timeseries("SeedLink reconnects / min", "Reconnects by server and reason.",
                       [target(f"sum by (server, reason) (rate(coldstream_seedlink_reconnects_total{{{SEL}}}[{RATE}])) * 60",
                               "{{server}} {{reason}}")]), 8, 7)
    lay.add(timeseries("Process memory and CPU", "Resident memory (left) and CPU cores used (right).",
                       [target(f"process_resident_memory_bytes{{{SEL}}}", "RSS {{instance}}"),
                        target(f"rate(process_cpu_seconds_total{{{SEL}}}[{RATE}])", "CPU {{instance}}", "B")], "bytes"), 8, 7)
    panel = lay.panels[-1]
    panel["fieldConfig"]["overrides"] = [{
        "matcher": {"id": "byFrameRefID", "options": "B"},
        "properties": [{"id": "unit", "value": "short"}, {"id": "custom.axisPlacement", "value": "right"}],
    }]
    lay.add(timeseries("SeedLink state file age", "Seconds since the state file was last written (resume point after restart).",
                       [target(f"time() - coldstream_state_save_timestamp_seconds{{{SEL}}}", "{{instance}}")], "s"), 8, 7)
    lay.add(timeseries("GPU memory", "CUDA memory allocated by the worker.",
                       [target(f"coldstream_gpu_memory_used_bytes{{{SEL}}}", "{{instance}}")], "bytes"), 8, 7)


def data_health(lay: Layout) -> None:
    lay.row("Data health")
    lay.add({
        "type": "table", "title": "Stations: latency and data quality",
        "description": "Per station: data latency (now - newest sample; amber > 30 s, red > 120 s), buffer fill, "
                       "and gaps, rejected records and decode errors in the last hour. Sorted by latency.",
        "datasource": DS,
        "fieldConfig": {
            "defaults": {"custom": {"align": "auto", "cellOptions": {"type": "auto"}}},
            "overrides": [
                {"matcher": {"id": "byName", "options": "latency"},
                 "properties": [{"id": "unit", "value": "s"},
                                {"id": "custom.cellOptions", "value": {"type": "color-background"}},
                                {"id": "thresholds", "value": thresholds((None, "green"), (30, "orange"), (120, "red"))}]},
                {"matcher": {"id": "byName", "options": "buffer fill"},
                 "properties": [{"id": "unit", "value": "percentunit"},
                                {"id": "custom.cellOptions", "value": {"type": "gauge", "mode": "basic"}},
                                {"id": "min", "value": 0}, {"id": "max", "value": 1}]},
            ],
        },
        "options": {"showHeader": True, "cellHeight": "sm", "sortBy": [{"displayName": "latency", "desc": True}]},
        "transformations": [
            {"id": "merge", "options": {}},
            {"id": "organize", "options": {
                "excludeByName": {"Time": True, "job": True, "instance": True},
                "renameByName": {"Value #A": "latency", "Value #B": "buffer fill", "Value #C": "gaps 1h",
                                 "Value #D": "gap s 1h", "Value #E": "rejected 1h", "Value #F": "decode errors 1h"}}},
        ],
        "targets": [
            target(f"max by (station) (coldstream_data_latency_seconds{{{STA}}})", ref="A", instant=True, fmt="table"),
            target(f"max by (station) (coldstream_buffer_fill_ratio{{{STA}}})", ref="B", instant=True, fmt="table"),
            target(f"sum by (station) (increase(coldstream_gaps_total{{{STA}}}[1h]))", ref="C", instant=True, fmt="table"),
            target(f"sum by (station) (increase(coldstream_gap_seconds_total{{{STA}}}[1h]))", ref="D", instant=True, fmt="table"),
            target(f"sum by (station) (increase(coldstream_records_rejected_total{{{STA}}}[1h]))", ref="E", instant=True, fmt="table"),
            target(f"sum by (station) (increase(coldstream_decode_errors_total{{{STA}}}[1h]))", ref="F", instant=True, fmt="table"),
        ],
    }, 12, 12)
    lay.add({
        "type": "status-history", "title": "Data latency by station",
        "description": "Each row a station, coloured by data latency over time (green < 30 s, amber < 120 s, red).",
        "datasource": DS,
        "fieldConfig": {"defaults": {"unit": "s", "color": {"mode": "thresholds"},
                                     "thresholds": thresholds((None, "green"), (30, "orange"), (120, "red"))},
                        "overrides": []},
        "options": {"showValue": "never", "rowHeight": 0.9, "colWidth": 0.9,
                    "legend": {"displayMode": "list", "placement": "bottom", "showLegend": True},
                    "tooltip": {"mode": "single", "sort": "none"}},
        "targets": [target(f"max by (station) (coldstream_data_latency_seconds{{{STA}}})", "{{station}}")],
        "maxDataPoints": 120,
    }, 12, 12)
    lay.add(timeseries("Most delayed stations (top 10)", "The ten stations with the largest data latency.",
                       [target(f"topk(10, max by (station) (coldstream_data_latency_seconds{{{STA}}}))", "{{station}}")],
                       "s", threshold_line=120), 12, 8)
    lay.add(timeseries("Records received / s", "miniSEED records and payload bytes received (all stations).",
                       [target(f"sum(rate(coldstream_records_received_total{{{STA}}}[{RATE}]))", "records/s"),
                        target(f"sum(rate(coldstream_received_bytes_total{{{STA}}}[{RATE}]))", "bytes/s", "B")]), 12, 8)
    # coldstream_sequence_gaps_total is labelled by SeedLink station key NET_STA, not the NET.STA.LOC
    # that $station offers, so it is filtered by job and instance only.
    lay.add(timeseries("Gaps and overlaps / h", "Gaps opened, seconds missing, overlapping blocks and holes in the data SeedLink delivered (by data time; "
                       "those are counted per NET_STA and not filtered by the station selection).",
                       [target(f"sum(increase(coldstream_gaps_total{{{STA}}}[1h]))", "gaps"),
                        target(f"sum(increase(coldstream_gap_seconds_total{{{STA}}}[1h]))", "gap seconds", "B"),
                        target(f"sum(increase(coldstream_overlaps_total{{{STA}}}[1h]))", "overlaps", "C"),
                        target(f"sum(increase(coldstream_sequence_gaps_total{{{SEL}}}[1h]))", "SeedLink data gaps", "D")]), 8, 8)
    lay.add(timeseries("Rejected records by reason / min", "Records rejected before buffering (future, expired, rate, clock_jump, ...).",
                       [target(f"sum by (reason) (rate(coldstream_records_rejected_total{{{STA}}}[{RATE}])) * 60", "{{reason}}")],
                       stack=True), 8, 8)
    lay.add(timeseries("Decode errors, clock jumps, non-finite, resampled / min",
                       "Undecodable records, buffer resets on time jumps, NaN/Inf samples masked, blocks resampled.",
                       [target(f"sum(rate(coldstream_decode_errors_total{{{STA}}}[{RATE}])) * 60", "decode errors"),
                        target(f"sum(rate(coldstream_clock_jumps_total{{{STA}}}[{RATE}])) * 60", "clock jumps", "B"),
                        target(f"sum(rate(coldstream_nonfinite_samples_total{{{STA}}}[{RATE}])) * 60", "non-finite samples", "C"),
                        target(f"sum(rate(coldstream_resampled_blocks_total{{{STA}}}[{RATE}])) * 60", "resampled blocks", "D"),
                        target(f"sum(rate(coldstream_seedlink_state_file_errors_total{{{SEL}}}[{RATE}])) * 60",
                               "unusable state files", "E")]), 8, 8)
    lay.add({
        "type": "bargauge", "title": "Gaps in the last hour (top 20 stations)",
        "description": "Stations opening the most gaps: telemetry trouble at the station or on the link.",
        "datasource": DS,
        "fieldConfig": {"defaults": {"unit": "short", "min": 0, "color": {"mode": "thresholds"},
                                     "thresholds": thresholds((None, "green"), (5, "orange"), (30, "red"))},
                        "overrides": []},
        "options": {"orientation": "horizontal", "displayMode": "basic", "showUnfilled": True,
                    "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False}},
        "targets": [target(f"topk(20, sum by (station) (increase(coldstream_gaps_total{{{STA}}}[1h])))",
                           "{{station}}", instant=True)],
    }, 12, 8)
    lay.add(timeseries("Windows emitted and skipped / min", "Windows cut from the buffers, and skipped by reason.",
                       [target(f"sum(rate(coldstream_windows_emitted_total{{{STA}}}[{RATE}])) * 60", "emitted"),
                        target(f"sum by (reason) (rate(coldstream_windows_skipped_total{{{STA}}}[{RATE}])) * 60",
                               "skipped: {{reason}}", "B")]), 12, 8)


def ml_pipeline(lay: Layout) -> None:
    lay.row("ML pipeline")
    lay.add(timeseries("End-to-end latency", f"Newest sample arrival to output published. Red line: {LATENCY_SLO_S:g} s objective.",
                       [target(f"histogram_quantile(0.5, sum by (le) (rate(coldstream_end_to_end_latency_seconds_bucket{{{SEL}}}[{RATE}])))", "p50"),
                        target(f"histogram_quantile(0.99, sum by (le) (rate(coldstream_end_to_end_latency_seconds_bucket{{{SEL}}}[{RATE}])))", "p99", "B")],
                       "s", threshold_line=LATENCY_SLO_S), 12, 8)
    lay.add(timeseries("Inference time per batch", "Wall time of one denoising batch (p50, p95) against worker.budget_ms.",
                       [target(f"histogram_quantile(0.5, sum by (le) (rate(coldstream_inference_duration_seconds_bucket{{{SEL}}}[{RATE}])))", "p50"),
                        target(f"histogram_quantile(0.95, sum by (le) (rate(coldstream_inference_duration_seconds_bucket{{{SEL}}}[{RATE}])))", "p95", "B")],
                       "s"), 12, 8)
    lay.add(timeseries("Window throughput / s", "Windows emitted by ingest, denoised by the worker and shed under overload.",
                       [target(f"sum(rate(coldstream_windows_emitted_total{{{SEL}}}[{RATE}]))", "emitted"),
                        target(f"sum(rate(coldstream_windows_processed_total{{{SEL}}}[{RATE}]))", "processed", "B"),
                        target(f"sum by (reason) (rate(coldstream_windows_shed_total{{{SEL}}}[{RATE}]))", "shed: {{reason}}", "C")]),
            8, 8)
    lay.add(timeseries("Window queue depth", "Windows waiting for the worker; steady growth means the worker cannot keep up.",
                       [target(f"coldstream_window_queue_depth{{{SEL}}}", "{{instance}}")]), 8, 8)
    lay.add(timeseries("Sampler degradations / min", "Batches run with fewer steps than configured, by reason.",
                       [target(f"sum by (reason) (rate(coldstream_sampler_degradations_total{{{SEL}}}[{RATE}])) * 60", "{{reason}}")],
                       stack=True), 8, 8)
    lay.add({
        "type": "heatmap", "title": "Sampler steps chosen",
        "description": "Distribution of sampler steps per batch: fewer steps under load, to stay inside the budget.",
        "datasource": DS,
        "fieldConfig": {"defaults": {"custom": {"hideFrom": {"legend": False, "tooltip": False, "viz": False},
                                                "scaleDistribution": {"type": "linear"}}}, "overrides": []},
        "options": {"calculate": False, "cellGap": 1, "yAxis": {"axisPlacement": "left", "unit": "short"},
                    "color": {"mode": "scheme", "scheme": "Oranges", "steps": 64, "exponent": 0.5, "fill": "dark-orange",
                              "scale": "exponential", "reverse": False},
                    "rowsFrame": {"layout": "auto"}, "tooltip": {"mode": "single", "yHistogram": False},
                    "legend": {"show": True}, "cellValues": {"unit": "short"}},
        "targets": [target(f"sum by (le) (increase(coldstream_sampler_steps_bucket{{{SEL}}}[{RATE}]))", "{{le}}", fmt="heatmap")],
    }, 12, 8)
    lay.add(timeseries("Batch size and steps (mean)", "Mean windows per batch and mean sampler steps per batch.",
                       [target(f"sum(rate(coldstream_batch_size_sum{{{SEL}}}[{RATE}])) / sum(rate(coldstream_batch_size_count{{{SEL}}}[{RATE}]))",
                               "windows per batch"),
                        target(f"sum(rate(coldstream_sampler_steps_sum{{{SEL}}}[{RATE}])) / sum(rate(coldstream_sampler_steps_count{{{SEL}}}[{RATE}]))",
                               "steps per batch", "B")]), 12, 8)


def outputs(lay: Layout) -> None:
    lay.row("Outputs")
    lay.add(timeseries("Picks per minute", "Picks published, by phase and source (denoised / raw).",
                       [target(f"sum by (phase, source) (rate(coldstream_picks_total{{{SEL}}}[{RATE}])) * 60",
                               "{{phase}} {{source}}")]), 12, 8)
    lay.add(timeseries("Redis writes / s", "Entries accepted by Redis and duplicates (replays after a restart), by kind.",
                       [target(f"sum by (kind) (rate(coldstream_redis_published_total{{{SEL}}}[{RATE}]))", "{{kind}}"),
                        target(f"sum by (kind) (rate(coldstream_redis_duplicates_total{{{SEL}}}[{RATE}]))",
                               "duplicate {{kind}}", "B")]), 12, 8)
    lay.add(timeseries("Redis backlog", "Outputs held in memory while Redis is unreachable (bounded by redis.backlog_max_entries).",
                       [target(f"coldstream_redis_backlog_entries{{{SEL}}}", "{{instance}}")]), 8, 8)
    lay.add(timeseries("Redis errors / min", "Failed writes (retried) and outputs dropped at the backlog bound.",
                       [target(f"sum(rate(coldstream_redis_publish_errors_total{{{SEL}}}[{RATE}])) * 60", "publish errors"),
                        target(f"sum(rate(coldstream_redis_backlog_dropped_total{{{SEL}}}[{RATE}])) * 60", "dropped", "B")]), 8, 8)
    # Only the publishing processes (with a SeedLink source) set the gauge; a scale-out worker exports it at 0.
    lay.add(stat("Redis connected", "1 while the last Redis write succeeded (processes that publish: run, ingest).",
                 f"min(coldstream_redis_connected{{{SEL}}} and on (job, instance) "
                 f"group by (job, instance) (coldstream_seedlink_connected{{{SEL}}}))",
                 steps=((None, "red"), (1, "green")), mappings=value_map(("0", "DOWN", "red"), ("1", "OK", "green"))), 8, 8)


def templating() -> dict[str, Any]:
    def query_var(name: str, label: str, query: str, *, multi: bool) -> dict[str, Any]:
        return {
            "name": name, "label": label, "type": "query", "datasource": DS,
            "definition": query, "query": {"query": query, "refId": f"{name}-var"},
            "refresh": 2, "sort": 1, "multi": multi, "includeAll": True, "allValue": ".*",
            "current": {"selected": True, "text": ["All"], "value": ["$__all"]}, "options": [], "hide": 0,
        }

    return {"list": [
        {"name": "datasource", "label": "Data source", "type": "datasource", "query": "prometheus",
         "current": {}, "hide": 0, "refresh": 1, "regex": "", "options": []},
        query_var("job", "Job", "label_values(coldstream_ready, job)", multi=True),
        query_var("instance", "Instance", 'label_values(coldstream_ready{job=~"$job"}, instance)', multi=True),
        query_var("station", "Station", 'label_values(coldstream_data_latency_seconds{job=~"$job"}, station)', multi=True),
    ]}


def early_warning(lay: Layout) -> None:
    lay.row("Early-warning picks")
    lay.add(timeseries("Provisional pick latency", "First provisional report of an onset: written to Redis minus the "
                       "arrival of the onset sample at the service (p50, p95). docs/eew-picks.md.",
                       [target(f"histogram_quantile(0.5, sum by (le) (rate(coldstream_eew_pick_latency_seconds_bucket{{{SEL}}}[{RATE}])))", "p50"),
                        target(f"histogram_quantile(0.95, sum by (le) (rate(coldstream_eew_pick_latency_seconds_bucket{{{SEL}}}[{RATE}])))", "p95", "B")],
                       "s"), 8, 8)
    lay.add(timeseries("Pick reports by status / min", "Lifecycle reports queued for Redis: provisional (first reports "
                       "and updates), final, retracted. Many retractions: noisy triggers or a threshold too low.",
                       [target(f"sum by (status) (rate(coldstream_eew_picks_total{{{SEL}}}[{RATE}])) * 60", "{{status}}")]), 8, 8)
    lay.add(timeseries("Fast path windows / s", "Trailing windows run, and shed by reason (age: too late to help; "
                       "superseded: a newer one of the station was queued), with the stations triggering.",
                       [target(f"sum(rate(coldstream_eew_windows_total{{{SEL}}}[{RATE}]))", "run"),
                        target(f"sum by (reason) (rate(coldstream_eew_windows_shed_total{{{SEL}}}[{RATE}]))", "shed {{reason}}", "B"),
                        target(f"sum(rate(coldstream_eew_triggers_total{{{SEL}}}[{RATE}]))", "triggers", "C")]), 8, 8)


def dashboard() -> dict[str, Any]:
    lay = Layout()
    service_health(lay)
    data_health(lay)
    ml_pipeline(lay)
    outputs(lay)
    early_warning(lay)
    return {
        "title": "coldstream",
        "uid": "coldstream-noc",
        "description": "coldstream real-time denoiser and picker: service health, data health per station, "
                       "ML pipeline, outputs. Runbooks: docs/troubleshooting.md.",
        "tags": ["coldstream", "seismology", "seedlink"],
        "timezone": "utc",
        "schemaVersion": 39,
        "version": 1,
        "editable": True,
        "graphTooltip": 1,
        "refresh": "30s",
        "time": {"from": "now-6h", "to": "now"},
        "timepicker": {},
        "fiscalYearStartMonth": 0,
        "liveNow": False,
        "links": [],
        "annotations": {"list": [
            {"builtIn": 1, "datasource": {"type": "grafana", "uid": "-- Grafana --"}, "enable": True, "hide": True,
             "iconColor": "rgba(0, 211, 255, 1)", "name": "Annotations & Alerts", "type": "dashboard"},
            {"datasource": DS, "enable": True, "iconColor": "red", "name": "Restarts",
             "expr": f"changes(process_start_time_seconds{{{SEL}}}[2m]) > 0", "step": "60s",
             "titleFormat": "coldstream restarted", "textFormat": "{{instance}}"},
        ]},
        "templating": templating(),
        "panels": lay.panels,
    }


def render() -> str:
    return json.dumps(dashboard(), indent=2, sort_keys=False) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--check", action="store_true", help="exit 1 when coldstream.json differs from the generator")
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        if not OUTPUT.exists() or OUTPUT.read_text() != text:
            sys.stderr.write(f"{OUTPUT.name} is stale: run python deploy/grafana/generate.py\n")
            return 1
        return 0
    OUTPUT.write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
