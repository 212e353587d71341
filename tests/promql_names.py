"""Metric names referenced by a PromQL expression, and the sample names the service exposes.

A small lexer rather than a full PromQL parser: it removes string literals, label matchers,
range/offset durations, grouping label lists and Grafana variables, then keeps identifiers that are
neither functions (followed by ``(``) nor keywords. Good enough for the dashboard and alert rules,
and tested on its own below in ``tests/test_dashboard.py``.
"""

from __future__ import annotations

import re

from prometheus_client import CollectorRegistry

KEYWORDS = {
    "by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or", "unless", "offset",
    "inf", "nan", "atan2",
}
# Aggregations and functions may be written with the grouping clause before the parenthesis
# (``sum by (le) (...)``), so they are listed rather than recognised by a following "(".
FUNCTIONS = {
    "sum", "min", "max", "avg", "count", "stddev", "stdvar", "topk", "bottomk", "quantile", "count_values", "group",
    "rate", "irate", "increase", "delta", "idelta", "deriv", "changes", "resets", "absent", "absent_over_time",
    "histogram_quantile", "time", "vector", "scalar", "clamp_min", "clamp_max", "clamp", "abs", "ceil", "floor",
    "round", "label_replace", "label_join", "predict_linear", "timestamp", "sort", "sort_desc",
    "avg_over_time", "min_over_time", "max_over_time", "sum_over_time", "count_over_time", "last_over_time",
    "quantile_over_time", "present_over_time", "day_of_week", "hour", "sgn", "exp", "ln", "log2", "log10", "sqrt",
}

_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_MATCHERS = re.compile(r"\{[^{}]*\}")
_RANGE = re.compile(r"\[[^\[\]]*\]")
_GROUPING = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)")
_VARIABLE = re.compile(r"\$\{?\w+\}?")
_DURATION_AFTER_OFFSET = re.compile(r"\boffset\s+-?\w+")
_IDENT = re.compile(r"(?<![\w.])([a-zA-Z_:][a-zA-Z0-9_:]*)(\s*\()?")
_NUMBER_EXP = re.compile(r"\b\d+(\.\d+)?[eE][+-]?\d+\b")


def metric_names(expr: str) -> set[str]:
    """Every metric (sample) name an expression selects, e.g. ``{"coldstream_picks_total"}``."""
    text = _STRING.sub('""', expr)
    text = _VARIABLE.sub("1", text)
    text = _MATCHERS.sub(" ", text)
    text = _RANGE.sub(" ", text)
    text = _GROUPING.sub(" ", text)
    text = _DURATION_AFTER_OFFSET.sub(" ", text)
    text = _NUMBER_EXP.sub(" ", text)
    names: set[str] = set()
    for m in _IDENT.finditer(text):
        ident, call = m.group(1), m.group(2)
        if call or ident.lower() in KEYWORDS or ident in FUNCTIONS:
            continue
        names.add(ident)
    return names


def exposed_sample_names(registry: CollectorRegistry) -> dict[str, str]:
    """Sample names as they appear on ``/metrics`` -> the family's type.

    Counters are exposed as ``<name>_total``, histograms as ``_bucket``/``_sum``/``_count``, info
    metrics as ``<name>_info``; the bare family names of those are not queryable.
    """
    out: dict[str, str] = {}
    for family in registry.collect():
        kind = family.type
        if kind == "counter":
            out[family.name + "_total"] = "counter"
        elif kind == "histogram":
            for suffix in ("_bucket", "_sum", "_count"):
                out[family.name + suffix] = "histogram"
        elif kind == "info":
            out[family.name + "_info"] = "info"
        else:
            out[family.name] = kind
    return out


# Functions whose argument must be a counter (or histogram series); on a gauge they are a mistake.
COUNTER_FUNCTIONS = ("rate", "irate", "increase", "resets")


def counter_function_arguments(expr: str) -> list[tuple[str, str]]:
    """``(function, metric)`` for each ``rate(metric...`` style call in ``expr``."""
    pattern = re.compile(r"\b(" + "|".join(COUNTER_FUNCTIONS) + r")\s*\(\s*([a-zA-Z_:][a-zA-Z0-9_:]*)")
    return pattern.findall(expr)
