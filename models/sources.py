"""The training and evaluation sources, each loaded as :class:`models.data.Recording` objects, and their splits.

Three layouts (folder names as in the project's data folder; each recording carries its ``source``):

- ``phasenet-ncedc``: PhaseNet NCEDC ``.npz`` events (``data`` (N, 3) ENZ), see :func:`models.data.load_npz_folder`;
- ``seisdae-stead``: one component per file, ``signal/NET_STA_CHA_ID.npz`` (``data`` (N,), ``itp``, ``its``) and
  ``noise/NET_STA_CHA_TIME.npz`` (``data`` (N,)). Files with the same ``NET_STA``, instrument code (first two
  letters of the channel) and ``ID`` are the components of one recording (:func:`load_single_component_folder`);
  missing components are zero. Amplitudes are arbitrary units: mix by SNR, never by level;
- ``cx-continuous-1h``: continuous miniSEED (``*.mseed``), one file per station and hour. The data hold real
  events, so they are cut into noise-only pieces between the events a screening picker finds
  (:func:`screen_events`, :func:`noise_pieces`) before they are used as noise.

Components are mapped with the project's one table (:func:`models.components.component_of`; ``1`` -> N, ``2`` -> E).

Splits (:func:`make_source_split`) are by station within each source. A source whose noise comes from a single
station that has no events (seisdae-stead's noise) cannot be split by station; its noise recordings are split by
time (oldest 70 % train, next 10 % validation, newest 20 % test) and listed by name. A source with two stations
puts one in training and one in the test split (no validation station).

Limitations: the screening picker finds events PhaseNet can see; weaker events may stay in the noise pieces.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from models.components import component_of
from models.data import Recording, load_npz_folder
from models.errors import DataError
from models.spec import DEFAULT_SPEC, ModelSpec

log = logging.getLogger(__name__)

__all__ = [
    "SOURCES",
    "load_continuous_folder",
    "load_single_component_folder",
    "load_source",
    "load_sources",
    "make_source_split",
    "noise_pieces",
    "read_source_split",
    "screen_events",
    "select_split",
    "write_source_split",
]

NCEDC, STEAD, CONTINUOUS = "phasenet-ncedc", "seisdae-stead", "cx-continuous-1h"
SOURCES = (NCEDC, STEAD, CONTINUOUS)
"""Source names, in the order they are reported."""

SCREEN_P_THRESHOLD = 0.2
"""P probability above which the screening picker marks an event in continuous data (below the evaluation's 0.3, so
that borderline events stay out of the noise as well)."""
SCREEN_BEFORE_S = 10.0
SCREEN_AFTER_S = 60.0
"""Data from this long before to this long after a screened P pick is not noise (the event and its coda)."""
PIECE_MIN_S = 35.0
"""Noise pieces shorter than this are dropped (a window is 30 s)."""


def _assemble(parts: dict[str, np.ndarray], order: str) -> np.ndarray:
    n = max(len(v) for v in parts.values())
    data = np.zeros((len(order), n), np.float64)
    for comp, v in parts.items():
        data[order.index(comp), : len(v)] = v
    return data


def load_single_component_folder(
    folder: str | Path, source: str = STEAD, spec: ModelSpec = DEFAULT_SPEC
) -> list[Recording]:
    """Group one-component ``NET_STA_CHA_ID.npz`` files into 3-component recordings (spec order, zeros where a
    component is missing, mean removed). ``itp``/``its`` come from the first file of the group that has them."""
    folder = Path(folder)
    files = sorted(folder.glob("*.npz"))
    if not files:
        raise DataError(f"no .npz files in {folder}")
    groups: dict[tuple[str, str, str], dict[str, Path]] = {}
    for f in files:
        parts = f.stem.split("_")
        if len(parts) < 4:
            raise DataError(f"{f.name}: expected NET_STA_CHA_ID.npz")
        net, sta, cha, ident = parts[0], parts[1], parts[2], "_".join(parts[3:])
        comp = component_of(cha)
        if comp is None or comp not in spec.component_order:
            log.warning("skipping %s: channel %s is no component of %s", f.name, cha, spec.component_order)
            continue
        groups.setdefault((f"{net}.{sta}", cha[:2], ident), {})[comp] = f
    recs = []
    for (station, inst, ident), by_comp in sorted(groups.items()):
        arrays: dict[str, np.ndarray] = {}
        own_p: dict[str, int] = {}
        p = s = None
        for comp, f in by_comp.items():
            with np.load(f, allow_pickle=False) as z:
                arrays[comp] = np.asarray(z["data"], np.float64).ravel()
                if "itp" in z:
                    own_p[comp] = int(z["itp"])
                if p is None and "itp" in z:
                    p = int(z["itp"])
                if s is None and "its" in z:
                    s = int(z["its"])
        # A component cut with another start time labels the same P at another sample: shift it onto the
        # group's P, or it lags the other components by the difference.
        for comp, cp in own_p.items():
            d = int(p) - cp  # type: ignore[arg-type]  # p is set whenever own_p is not empty
            if d:
                log.warning("%s: %s P at sample %d, group's at %d; shifted", ident, comp, cp, p)
                v = arrays[comp]
                arrays[comp] = np.concatenate([np.zeros(d), v[: len(v) - d]]) if d > 0 else np.concatenate(
                    [v[-d:], np.zeros(-d)])
        data = _assemble(arrays, spec.component_order)
        data = (data - data.mean(axis=1, keepdims=True)).astype(np.float32)
        three_c = bool(np.any(data[0] != 0) and np.any(data[1] != 0))
        name = f"{station.replace('.', '_')}_{inst}_{ident}"
        recs.append(Recording(name, station, data, p, s, three_c, source=source))
    log.info("loaded %d recordings (%d files) from %s", len(recs), len(files), folder)
    return recs


def screen_events(
    data: np.ndarray,
    predict: Callable[[np.ndarray], np.ndarray],
    window_samples: int = 3000,
    p_threshold: float = SCREEN_P_THRESHOLD,
) -> list[int]:
    """Sample indices of P picks that ``predict`` (``(batch, 3, window)`` -> P/S/N probabilities) finds in
    continuous ``(3, n)`` data, from half-overlapping windows (the maximum of the overlapping curves is kept)."""
    from scipy.signal import find_peaks

    n = data.shape[1]
    if n < window_samples:
        return []
    hop = window_samples // 2
    starts = list(range(0, n - window_samples + 1, hop))
    if starts[-1] != n - window_samples:
        starts.append(n - window_samples)
    p_curve = np.zeros(n, np.float32)
    for i in range(0, len(starts), 32):
        chunk = starts[i : i + 32]
        probs = predict(np.stack([data[:, s : s + window_samples] for s in chunk]).astype(np.float32))
        for s, pr in zip(chunk, probs):
            p_curve[s : s + window_samples] = np.maximum(p_curve[s : s + window_samples], pr[0])
    idx, _ = find_peaks(p_curve, height=p_threshold, distance=100)
    return [int(i) for i in idx]


def noise_pieces(
    rec: Recording,
    picks: Sequence[int],
    sampling_rate_hz: float = 100.0,
    before_s: float = SCREEN_BEFORE_S,
    after_s: float = SCREEN_AFTER_S,
    min_s: float = PIECE_MIN_S,
) -> list[Recording]:
    """Cut a continuous recording into noise-only recordings between the screened events (each pick removes
    ``before_s`` before to ``after_s`` after it); pieces shorter than ``min_s`` are dropped."""
    n = rec.data.shape[1]
    bad = np.zeros(n, bool)
    for p in picks:
        bad[max(0, int(p - before_s * sampling_rate_hz)) : int(p + after_s * sampling_rate_hz)] = True
    edges = np.diff(np.concatenate([[0], (~bad).astype(np.int8), [0]]))
    out = []
    for a, b in zip(np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)):
        if b - a < min_s * sampling_rate_hz:
            continue
        seg = rec.data[:, a:b]
        seg = seg - seg.mean(axis=1, keepdims=True)
        out.append(Recording(f"{rec.name}+{a}", rec.station, seg.astype(np.float32), None, None,
                             rec.three_component, source=rec.source))
    return out


def load_continuous_folder(
    folder: str | Path,
    source: str = CONTINUOUS,
    spec: ModelSpec = DEFAULT_SPEC,
    predict: Callable[[np.ndarray], np.ndarray] | None = None,
    screen_cache: str | Path | None = None,
) -> tuple[list[Recording], list[Recording]]:
    """Load continuous miniSEED files (one recording per station and contiguous stretch, spec order, counts).

    Returns ``(raw, noise)``: the whole recordings (for evaluation on real, unmixed data) and their noise-only
    pieces between screened events (``predict`` is the screening picker; without one, no noise pieces are made,
    since continuous data are never taken as noise unchecked). Screened picks are cached as JSON in
    ``screen_cache`` when given (keyed by recording name)."""
    import obspy

    folder = Path(folder)
    files = sorted(folder.glob("*.mseed"))
    if not files:
        raise DataError(f"no .mseed files in {folder}")
    raw: list[Recording] = []
    sr = spec.sampling_rate_hz
    for f in files:
        st = obspy.read(str(f))
        st.merge(fill_value=0)
        by_station: dict[str, dict[str, np.ndarray]] = {}
        t0s: dict[str, obspy.UTCDateTime] = {}
        for tr in st:
            if abs(tr.stats.sampling_rate - sr) > 1e-6:
                tr.resample(sr)
            comp = component_of(tr.stats.channel)
            if comp is None or comp not in spec.component_order:
                continue
            key = f"{tr.stats.network}.{tr.stats.station}"
            t0s[key] = min(t0s.get(key, tr.stats.starttime), tr.stats.starttime)
            by_station.setdefault(key, {})[comp] = tr
        for station, comps in by_station.items():
            t0 = t0s[station]
            arrays = {}
            for comp, tr in comps.items():
                i0 = int(round((tr.stats.starttime - t0) * sr))  # type: ignore[attr-defined]  # an ObsPy Trace
                arrays[comp] = np.concatenate([np.zeros(i0), np.asarray(tr.data, np.float64)])
            data = _assemble(arrays, spec.component_order)
            data = (data - data.mean(axis=1, keepdims=True)).astype(np.float32)
            three_c = bool(np.any(data[0] != 0) and np.any(data[1] != 0))
            name = f"{station.replace('.', '_')}_{t0.strftime('%Y%m%dT%H%M%S')}"
            raw.append(Recording(name, station, data, None, None, three_c, source=source))
    noise: list[Recording] = []
    if predict is not None:
        cache = {}
        cache_path = Path(screen_cache) if screen_cache else None
        if cache_path is not None and cache_path.exists():
            cache = json.loads(cache_path.read_text())
        for rec in raw:
            if rec.name not in cache:
                cache[rec.name] = screen_events(rec.data, predict, spec.window_samples)
                log.info("screened %s: %d P picks kept out of the noise", rec.name, len(cache[rec.name]))
            noise.extend(noise_pieces(rec, cache[rec.name], sr))
        if cache_path is not None:
            cache_path.write_text(json.dumps(cache, indent=1) + "\n")
    log.info("loaded %d continuous recordings (%d noise pieces) from %s", len(raw), len(noise), folder)
    return raw, noise


def load_source(
    root: str | Path,
    name: str,
    predict: Callable[[np.ndarray], np.ndarray] | None = None,
    screen_cache: str | Path | None = None,
) -> list[Recording]:
    """Training/evaluation recordings of source ``name`` under the data folder ``root`` (events and noise;
    continuous data only as screened noise pieces)."""
    root = Path(root)
    folder = root / name
    if not folder.is_dir():
        raise DataError(f"source {name!r} not found under {root}")
    if name == NCEDC:
        sub = folder / "waveform_train"
        recs = load_npz_folder(sub if sub.is_dir() else folder)
    elif name == STEAD:
        recs = load_single_component_folder(folder / "signal", name)
        if (folder / "noise").is_dir():
            recs += load_single_component_folder(folder / "noise", name)
    elif name == CONTINUOUS:
        recs = load_continuous_folder(folder, name, predict=predict, screen_cache=screen_cache)[1]
    else:
        raise DataError(f"unknown source {name!r}; known: {', '.join(SOURCES)}")
    for r in recs:
        r.source = name
    return recs


def load_sources(
    root: str | Path,
    names: Iterable[str] = SOURCES,
    predict: Callable[[np.ndarray], np.ndarray] | None = None,
    screen_cache: str | Path | None = None,
) -> dict[str, list[Recording]]:
    """``{source: recordings}`` for each name in ``names`` (see :func:`load_source`)."""
    return {n: load_source(root, n, predict, screen_cache) for n in names}


# ------------------------------------------------------------------------------------------------ splits


def _split_stations(stations: list[str], seed: int, fractions=(0.7, 0.1, 0.2)) -> dict[str, list[str]]:
    uniq = sorted(set(stations))
    order = [uniq[i] for i in np.random.default_rng(seed).permutation(len(uniq))]
    if len(order) == 1:
        return {"train": order, "val": [], "test": []}
    if len(order) == 2:
        return {"train": order[:1], "val": [], "test": order[1:]}
    n_test = max(1, int(round(fractions[2] * len(order))))
    n_val = max(1, int(round(fractions[1] * len(order))))
    return {"test": sorted(order[:n_test]), "val": sorted(order[n_test : n_test + n_val]),
            "train": sorted(order[n_test + n_val :])}


def make_source_split(recs_by_source: dict[str, list[Recording]], seed: int) -> dict:
    """Per source: stations split train/val/test (see the module docstring), plus noise recordings split by time
    where a source's noise comes from one station without events. Returns
    ``{"by": "station within source", "seed", "sources": {src: {"train", "val", "test", "noise_by_time"?}}}``."""
    doc: dict = {"by": "station within source", "seed": seed, "sources": {}}
    for src, recs in recs_by_source.items():
        event_st = {r.station for r in recs if r.is_event}
        noise_only_st = sorted({r.station for r in recs if not r.is_event} - event_st)
        entry: dict[str, Any] = {}
        if event_st and len(noise_only_st) == 1:
            entry = dict(_split_stations(sorted(event_st), seed))
            names = sorted((r.name for r in recs if r.station == noise_only_st[0]), key=lambda nm: nm.split("_")[-1])
            a, b = int(0.7 * len(names)), int(0.8 * len(names))
            entry["noise_by_time"] = {"station": noise_only_st[0], "train": names[:a], "val": names[a:b],
                                      "test": names[b:]}
        else:
            entry = _split_stations(sorted({r.station for r in recs}), seed)
        doc["sources"][src] = entry
    return doc


def write_source_split(path: str | Path, split: dict) -> None:
    Path(path).write_text(json.dumps(split, indent=1) + "\n")


def read_source_split(path: str | Path) -> dict:
    doc = json.loads(Path(path).read_text())
    if "sources" not in doc:
        raise DataError(f"split file {path} has no per-source split")
    for src, e in doc["sources"].items():
        for what, parts in (("stations", e), ("noise recordings", e.get("noise_by_time"))):
            if parts is None:
                continue
            train, val, test = (set(parts[k]) for k in ("train", "val", "test"))
            overlap = (train & test) | (train & val) | (val & test)
            if overlap:
                raise DataError(f"split file {path}: {src} {what} in two splits: {sorted(overlap)[:5]}")
    return doc


def select_split(recs: Sequence[Recording], split: dict, which: str) -> list[Recording]:
    """Recordings of split ``which`` ("train", "val", "test"): by station within their own source, and by name
    for noise split by time."""
    out = []
    for r in recs:
        e = split["sources"].get(r.source)
        if e is None:
            continue
        nbt = e.get("noise_by_time")
        if nbt is not None and r.station == nbt["station"]:
            if r.name in set(nbt[which]):
                out.append(r)
        elif r.station in set(e[which]):
            out.append(r)
    return out
