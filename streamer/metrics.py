"""Prometheus metrics of the service, created on an injected registry.

Every metric the service exports is defined here, once, so the dashboard test and
``docs/metrics.md`` have one list to check against. Names follow Prometheus practice: prefix
``coldstream_``, base units in the name (``_seconds``, ``_bytes``), counters end in ``_total``.

Station labels are bounded: after ``max_station_labels`` distinct stations further ones are
reported as ``station="other"``, so a flood of bogus station codes cannot blow up the series count.
"""

from __future__ import annotations

import threading
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info, ProcessCollector
from prometheus_client.exposition import start_http_server

PREFIX = "coldstream"

# End-to-end latency runs from under a second (GPU, short stride) to minutes (a stalled worker).
LATENCY_BUCKETS_S = (0.25, 0.5, 1, 2, 3, 5, 7.5, 10, 15, 20, 30, 45, 60, 90, 120, 180, 300, 600)
INFERENCE_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
STEPS_BUCKETS = (0, 1, 2, 3, 4, 6, 8, 12, 16, 32)


class Metrics:
    """All service metrics on one registry (a fresh ``CollectorRegistry`` per test)."""

    def __init__(self, registry: CollectorRegistry | None = None, max_station_labels: int = 5000) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        self.max_station_labels = max_station_labels
        self._stations: set[str] = set()
        self._lock = threading.Lock()
        r = self.registry
        p = PREFIX

        # --- SeedLink acquisition -------------------------------------------------------------
        self.seedlink_connected = Gauge(f"{p}_seedlink_connected", "1 while connected to the SeedLink server", ["server"], registry=r)
        self.seedlink_reconnects = Counter(f"{p}_seedlink_reconnects_total", "SeedLink reconnects by reason", ["server", "reason"], registry=r)
        self.records_received = Counter(f"{p}_records_received_total", "miniSEED records received", ["station"], registry=r)
        self.bytes_received = Counter(f"{p}_received_bytes_total", "payload bytes received", ["station"], registry=r)
        self.decode_errors = Counter(f"{p}_decode_errors_total", "records that could not be decoded (skipped)", ["station"], registry=r)
        self.sequence_gaps = Counter(f"{p}_sequence_gaps_total", "holes in a channel's SeedLink data (by data time)", ["station"], registry=r)
        self.records_rejected = Counter(
            f"{p}_records_rejected_total",
            "records or blocks rejected before buffering, by reason (future, expired, rate, clock_jump, ...)",
            ["station", "reason"],
            registry=r,
        )
        self.state_saves = Counter(f"{p}_state_saves_total", "SeedLink state file writes", registry=r)
        self.state_save_timestamp = Gauge(f"{p}_state_save_timestamp_seconds", "time of the last state file write", registry=r)
        self.state_file_errors = Counter(
            f"{p}_seedlink_state_file_errors_total", "unusable SeedLink state files (started without resume points)", registry=r
        )

        # --- buffers and windows ----------------------------------------------------------------
        self.data_latency = Gauge(f"{p}_data_latency_seconds", "now minus the time of the newest sample", ["station"], registry=r)
        self.last_data_timestamp = Gauge(f"{p}_last_data_timestamp_seconds", "time of the newest sample", ["station"], registry=r)
        self.gaps = Counter(f"{p}_gaps_total", "gaps opened in a channel", ["station"], registry=r)
        self.gap_seconds = Counter(f"{p}_gap_seconds_total", "seconds of data missing in gaps", ["station"], registry=r)
        self.overlaps = Counter(f"{p}_overlaps_total", "overlapping or duplicate blocks (samples dropped)", ["station"], registry=r)
        self.nonfinite_samples = Counter(f"{p}_nonfinite_samples_total", "NaN/Inf samples masked", ["station"], registry=r)
        self.clock_jumps = Counter(f"{p}_clock_jumps_total", "time jumps that reset a station buffer", ["station"], registry=r)
        self.resampled_blocks = Counter(f"{p}_resampled_blocks_total", "blocks resampled to the model rate", ["station"], registry=r)
        self.buffer_fill = Gauge(f"{p}_buffer_fill_ratio", "fraction of the ring buffer holding valid data", ["station"], registry=r)
        self.windows_emitted = Counter(f"{p}_windows_emitted_total", "windows cut from the buffers", ["station"], registry=r)
        self.windows_skipped = Counter(f"{p}_windows_skipped_total", "windows not emitted, by reason", ["station", "reason"], registry=r)
        self.stations_reporting = Gauge(f"{p}_stations_reporting", "stations with data in the last minute", registry=r)

        # --- worker -----------------------------------------------------------------------------
        self.queue_depth = Gauge(f"{p}_window_queue_depth", "windows waiting for the worker", registry=r)
        self.windows_processed = Counter(f"{p}_windows_processed_total", "windows denoised", registry=r)
        self.windows_shed = Counter(f"{p}_windows_shed_total", "windows dropped under overload, by reason", ["reason"], registry=r)
        self.degradations = Counter(
            f"{p}_sampler_degradations_total", "batches run with fewer steps than configured, by reason", ["reason"], registry=r
        )
        self.inference_duration = Histogram(
            f"{p}_inference_duration_seconds", "wall time of one denoising batch", buckets=INFERENCE_BUCKETS_S, registry=r
        )
        self.batch_size = Histogram(f"{p}_batch_size", "windows per denoising batch", buckets=BATCH_BUCKETS, registry=r)
        self.sampler_steps = Histogram(f"{p}_sampler_steps", "sampler steps chosen per batch", buckets=STEPS_BUCKETS, registry=r)
        self.end_to_end_latency = Histogram(
            f"{p}_end_to_end_latency_seconds",
            "arrival of the newest sample of a window to publication of its output",
            buckets=LATENCY_BUCKETS_S,
            registry=r,
        )
        self.model_load_seconds = Gauge(f"{p}_model_load_seconds", "time taken to load and warm up the model", registry=r)
        self.gpu_memory_used = Gauge(f"{p}_gpu_memory_used_bytes", "CUDA memory allocated by the worker", registry=r)

        # --- outputs ----------------------------------------------------------------------------
        self.picks = Counter(f"{p}_picks_total", "picks published, by phase and source", ["phase", "source"], registry=r)
        self.published = Counter(f"{p}_redis_published_total", "entries accepted by Redis, by kind", ["kind"], registry=r)
        self.publish_duplicates = Counter(
            f"{p}_redis_duplicates_total", "entries Redis already had (replays after restart)", ["kind"], registry=r
        )
        self.publish_errors = Counter(f"{p}_redis_publish_errors_total", "failed Redis writes (retried)", registry=r)
        self.redis_backlog = Gauge(f"{p}_redis_backlog_entries", "outputs held while Redis is unavailable", registry=r)
        self.redis_backlog_dropped = Counter(
            f"{p}_redis_backlog_dropped_total", "outputs dropped because the backlog bound was reached", registry=r
        )
        self.redis_connected = Gauge(f"{p}_redis_connected", "1 while Redis answers (last write or idle ping succeeded)", registry=r)

        # --- service ----------------------------------------------------------------------------
        self.build_info = Info(f"{p}_build", "version of the service and model", registry=r)
        self.ready = Gauge(f"{p}_ready", "1 once the model is loaded and warmed up", registry=r)
        self.stage_progress = Gauge(
            f"{p}_stage_last_progress_timestamp_seconds", "last time each stage made progress", ["stage"], registry=r
        )
        self.stage_heartbeat = Gauge(
            f"{p}_stage_heartbeat_timestamp_seconds",
            "last time each stage made progress or reported itself idle (what the watchdog checks)", ["stage"], registry=r,
        )
        self.watchdog_pings = Counter(f"{p}_watchdog_pings_total", "systemd watchdog pings sent", registry=r)

        # --- reliability of the window path --------------------------------------------------------
        self.seedlink_pending_packets = Gauge(
            f"{p}_seedlink_pending_packets", "SeedLink packets delivered but not yet acknowledged", ["station"], registry=r
        )
        self.output_queue_depth = Gauge(f"{p}_output_queue_batches", "batches waiting for the output stage", registry=r)
        self.stitch_late_windows = Counter(
            f"{p}_stitch_late_windows_total", "worker results that came after their samples were emitted (dropped)", registry=r
        )
        self.work_queue_trimmed = Counter(
            f"{p}_work_queue_trimmed_total", "scale-out work items trimmed from Redis before they were processed", ["stream"],
            registry=r,
        )
        self.work_queue_dead_lettered = Counter(
            f"{p}_work_queue_dead_lettered_total",
            "scale-out work items moved to the dead-letter stream (delivered too often, or undecodable)",
            ["stream", "reason"], registry=r,
        )
        self.picks_suppressed = Counter(
            f"{p}_picks_suppressed_total", "pick candidates not published, by reason (run_edge, duplicate)", ["reason"],
            registry=r,
        )
        self.segments_trimmed = Counter(
            f"{p}_segments_trimmed_samples_total",
            "samples cut from segments because an earlier version of them was published", registry=r,
        )

        # --- early-warning fast path (streamer.eew) -----------------------------------------------
        self.eew_triggers = Counter(f"{p}_eew_triggers_total", "STA/LTA triggers that armed a station", ["station"], registry=r)
        self.eew_windows = Counter(f"{p}_eew_windows_total", "trailing windows run on the fast path", registry=r)
        self.eew_windows_shed = Counter(
            f"{p}_eew_windows_shed_total", "trailing windows not run, by reason (age, superseded, queue_full, error)",
            ["reason"], registry=r,
        )
        self.eew_queue_depth = Gauge(f"{p}_eew_queue_depth", "trailing windows waiting for the worker", registry=r)
        self.eew_picks = Counter(
            f"{p}_eew_picks_total", "pick lifecycle reports queued for Redis, by status (provisional includes updates)",
            ["phase", "status"], registry=r,
        )
        self.eew_pick_latency = Histogram(
            f"{p}_eew_pick_latency_seconds",
            "first provisional report of an onset: its publication minus the arrival of the onset sample",
            buckets=LATENCY_BUCKETS_S, registry=r,
        )

        # --- process: CPU, resident memory, open fds, start time (restart alerts) ---------------
        try:
            ProcessCollector(registry=r)
        except ValueError:  # the registry already has one (the global default registry does)
            pass

        # --- SeedLink selection and state file health ---------------------------------------------
        # labels: server "host:port" and selector as configured (bounded by the configuration)
        self.seedlink_selector_silent = Gauge(
            f"{p}_seedlink_selector_silent",
            "1 when a configured stream selector has delivered no data although connected for data_timeout_s",
            ["server", "selector"],
            registry=r,
        )
        self.state_save_errors = Counter(
            f"{p}_seedlink_state_save_errors_total", "failed writes of the SeedLink state file (retried)", registry=r
        )

    def station(self, station_id: str) -> str:
        """The label value to use for ``station_id`` (bounded cardinality)."""
        if station_id in self._stations:
            return station_id
        with self._lock:
            if len(self._stations) < self.max_station_labels:
                self._stations.add(station_id)
                return station_id
        return "other"

    def metric_names(self) -> set[str]:
        """Every sample name this registry can expose (for dashboard/alert checks)."""
        names: set[str] = set()
        for collector in self.registry.collect():
            for sample in collector.samples:
                names.add(sample.name)
            names.add(collector.name)
            if collector.type == "counter":
                names.add(collector.name + "_total")
            if collector.type == "histogram":
                names.update({collector.name + s for s in ("_bucket", "_sum", "_count")})
            if collector.type == "info":
                names.add(collector.name + "_info")
        return names


def serve_metrics(metrics: Metrics, bind_address: str = "127.0.0.1", port: int = 9108) -> Any:
    """Start the ``/metrics`` HTTP endpoint in a daemon thread; returns the server (``.shutdown()``).

    ``port=0`` picks a free port (``server.server_port`` tells which).
    """
    server, _thread = start_http_server(port, addr=bind_address, registry=metrics.registry)
    return server
