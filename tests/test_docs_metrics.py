"""docs/metrics.md lists exactly the metrics streamer/metrics.py exports, with their types and labels."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from streamer.metrics import Metrics

DOC = Path(__file__).resolve().parents[1] / "docs" / "metrics.md"


def documented_rows() -> dict[str, tuple[str, set[str]]]:
    """metric name -> (type, labels) from the doc's tables."""
    rows: dict[str, tuple[str, set[str]]] = {}
    for line in DOC.read_text().splitlines():
        m = re.match(r"^\| `([a-z_:]+)` \| (\w+) \|([^|]*)\|", line)
        if m:
            name, kind, labels = m.groups()
            assert name not in rows, f"{name} documented twice"
            rows[name] = (kind, {x.strip() for x in labels.split(",") if x.strip()})
    return rows


def exported() -> dict[str, tuple[str, set[str]]]:
    """Name as written in PromQL (counters with _total, info with _info) -> (type, labels)."""
    metrics = Metrics(CollectorRegistry())
    metrics.build_info.info({"model": "m", "model_version": "1", "picker": "p"})
    out: dict[str, tuple[str, set[str]]] = {}
    for family in metrics.registry.collect():
        name = family.name
        if family.type == "counter":
            name += "_total"
        elif family.type == "info":
            name += "_info"
        labels: set[str] = set()
        for sample in family.samples:
            labels |= set(sample.labels) - {"le"}
        out[name] = (family.type, labels)
    # labelled metrics have no samples until first used: take their label names from the objects
    for attr in vars(metrics).values():
        names = getattr(attr, "_labelnames", None)
        base = getattr(attr, "_name", None)
        kind = getattr(attr, "_type", None)
        if base is None or not names:
            continue
        key = base + ("_total" if kind == "counter" else "")
        out[key] = (out[key][0], set(names))
    return out


def test_every_exported_metric_is_documented_with_its_labels() -> None:
    doc = documented_rows()
    exp = exported()
    missing = sorted(set(exp) - set(doc))
    stale = sorted(set(doc) - set(exp))
    assert not missing, f"not in docs/metrics.md: {missing}"
    assert not stale, f"docs/metrics.md lists metrics the service does not export: {stale}"
    for name, (kind, labels) in exp.items():
        doc_kind, doc_labels = doc[name]
        assert doc_kind == kind, f"{name}: documented as {doc_kind}, is {kind}"
        if name != "coldstream_build_info":  # info labels are set at start-up, documented as the service sets them
            assert doc_labels == labels, f"{name}: documented labels {sorted(doc_labels)}, real {sorted(labels)}"


def test_every_metric_name_mentioned_anywhere_in_the_doc_exists() -> None:
    exp = exported()
    histogram_series = {f"{n}{s}" for n, (k, _) in exp.items() if k == "histogram" for s in ("_bucket", "_sum", "_count")}
    for name in set(re.findall(r"`(coldstream_[a-z_]+|process_[a-z_]+)", DOC.read_text())):
        assert name in exp or name in histogram_series, f"docs/metrics.md mentions unknown metric {name}"


@pytest.mark.parametrize("name", ["coldstream_watchdog_pings_total", "coldstream_data_latency_seconds"])
def test_parser_sees_known_rows(name: str) -> None:
    assert name in documented_rows()
