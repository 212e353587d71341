"""Training and evaluation data: labelled recordings, station splits, and noisy/clean window pairs.

Sources (both give :class:`Recording` objects, 3 components in ``ModelSpec`` order, 100 Hz, counts):

- a folder of ``.npz`` events in the PhaseNet NCEDC layout (``data`` (N, 3) ENZ, ``itp``/``its`` sample indices;
  file names ``NET_STA_...npz``), see :func:`load_npz_folder`;
- any SeisBench ``WaveformDataset`` on disk (STEAD, INSTANCE, a dataset written by
  ``seisbench.data.WaveformDataWriter``), see :func:`load_seisbench_dataset`. Traces without a P pick (or with
  ``trace_category == "noise"``) are used as noise only.

Pairs (:class:`PairSampler`) couple an event with noise from *another* recording (pre-event segments are real
noise), scaled to a random input SNR over a wide range, with random crop offsets (P anywhere in, before or after
the window), a share of noise-only windows whose target is zero, polarity flips, random rotation of the
horizontal components and a mild time stretch. The clean target is the recorded event with everything more
than :data:`PRE_P_MUTE_S` before P muted: the recording's own pre-event noise is not signal, and a target that is
silent before the onset teaches a sharp onset instead of a smeared one.

Splits are by station (``NET.STA``), fixed by a seed and written to JSON, so no station is in two splits.

Limitations: the NCEDC set is small (154 recordings, 108 stations); pre-event noise segments are shorter than a
window (about 29.5 s), so noise windows are extended by reflection; SNR is measured on Z only.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from models.errors import DataError
from models.spec import DEFAULT_SPEC, ModelSpec

log = logging.getLogger(__name__)

__all__ = [
    "EvalSet",
    "PairConfig",
    "PairSampler",
    "Recording",
    "build_eval_set",
    "load_recordings",
    "load_npz_folder",
    "load_seisbench_dataset",
    "make_station_split",
    "read_split",
    "select",
    "snr_db",
    "write_split",
]

PRE_P_MUTE_S = 0.4
"""Target is zero until this long before the labelled P, then ramps up to one at P - 0.1 s."""
NOISE_GUARD_SAMPLES = 100
"""Pre-event noise ends this many samples before the labelled P."""
PAD_RUN_SAMPLES = 50
"""A run of this many identical consecutive samples (0.5 s at 100 Hz) is padding or a dead channel, not noise."""
SNR_SIGNAL_S = 10.0
"""Signal power for the SNR is measured on Z over this long after P (the evaluation protocol's definition)."""


@dataclass
class Recording:
    """One labelled (or noise-only) 3-component recording.

    ``data``: ``(3, n_samples)`` float32 counts in spec component order, mean removed; ``p_sample``/``s_sample``:
    sample indices or ``None``; ``station``: ``NET.STA``; ``three_component``: False when E and N are all zero.
    """

    name: str
    station: str
    data: np.ndarray
    p_sample: int | None
    s_sample: int | None
    three_component: bool = True
    source: str = ""

    @property
    def is_event(self) -> bool:
        return self.p_sample is not None

    def noise_segment(self, min_samples: int = 1000) -> np.ndarray | None:
        """Pre-event noise ``(3, n)`` (the whole trace for noise-only recordings), or None if too short.

        Only the longest stretch free of padding is returned: archives pad the start of a trace with a constant
        (usually zero) where the digitiser had no data, and a jump from padding into noise is an onset that no live
        station shows (gaps are masked there), which a picker may take for a P arrival."""
        end = self.data.shape[1] if self.p_sample is None else self.p_sample - NOISE_GUARD_SAMPLES
        if end < min_samples:
            return None
        lo, hi = live_span(self.data[:, :end])
        if hi - lo < min_samples:
            return None
        seg = self.data[:, lo:hi]
        return seg - seg.mean(axis=1, keepdims=True)


def live_span(x: np.ndarray, min_run_samples: int = PAD_RUN_SAMPLES) -> tuple[int, int]:
    """``(start, stop)`` of the longest stretch of ``(3, n)`` data with no run of ``min_run_samples`` or more
    identical consecutive values on any live (not all-zero) component, i.e. without padding or a dead channel."""
    n = x.shape[1]
    dead = np.zeros(n, bool)
    for ch in x:
        if not np.any(ch):
            continue
        change = np.flatnonzero(np.diff(ch) != 0)  # last index of each constant run
        run_starts = np.insert(change + 1, 0, 0)
        run_lengths = np.diff(np.append(run_starts, n))
        dead |= np.repeat(run_lengths >= min_run_samples, run_lengths)
    edges = np.diff(np.concatenate([[0], (~dead).astype(np.int8), [0]]))
    starts, stops = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)
    if not starts.size:
        return 0, 0
    i = int(np.argmax(stops - starts))
    return int(starts[i]), int(stops[i])


def snr_db(signal_z: np.ndarray, p_sample: int, noise_z: np.ndarray, sampling_rate_hz: float = 100.0) -> float:
    """10 log10 of Z power over ``SNR_SIGNAL_S`` after P divided by the noise's Z power (``-inf``..``inf``)."""
    n = int(SNR_SIGNAL_S * sampling_rate_hz)
    sig = signal_z[max(p_sample, 0) : p_sample + n]
    p_sig = float(np.mean(sig.astype(np.float64) ** 2)) if sig.size else 0.0
    p_noise = float(np.mean(noise_z.astype(np.float64) ** 2)) if noise_z.size else 0.0
    if p_noise <= 0:
        return math.inf
    if p_sig <= 0:
        return -math.inf
    return 10.0 * math.log10(p_sig / p_noise)


def event_snr_db(rec: Recording, sampling_rate_hz: float = 100.0) -> float:
    """The recording's own Z SNR: after P against its pre-event noise."""
    # Short pre-event stretches (STEAD-type traces with P a second into the trace) still give an SNR.
    noise = rec.noise_segment(min_samples=200)
    if rec.p_sample is None or noise is None:
        return -math.inf
    if not np.any(noise[2]):  # no vertical (or a dead one): no Z SNR, so not a clean event to mix at a Z SNR
        return -math.inf
    return snr_db(rec.data[2], rec.p_sample, noise[2], sampling_rate_hz)


# ----------------------------------------------------------------------------------------------- loading


def load_npz_folder(folder: str | Path) -> list[Recording]:
    """Load every ``*.npz`` below ``folder`` (PhaseNet NCEDC layout: ``data`` (N, 3) ENZ, ``itp``, ``its``)."""
    folder = Path(folder)
    files = sorted(folder.rglob("*.npz"))
    if not files:
        raise DataError(f"no .npz files under {folder}")
    recs = []
    for f in files:
        with np.load(f, allow_pickle=False) as z:
            if "data" not in z:
                raise DataError(f"{f}: no 'data' array")
            data = np.asarray(z["data"], dtype=np.float64)
            if data.ndim != 2 or 3 not in data.shape:
                raise DataError(f"{f}: data shape {data.shape}, expected (N, 3)")
            if data.shape[1] != 3:
                data = data.T
            data = data.T
            p = int(z["itp"]) if "itp" in z else None
            s = int(z["its"]) if "its" in z else None
        parts = f.stem.split("_")
        station = ".".join(parts[:2]) if len(parts) >= 2 else f.stem
        data = (data - data.mean(axis=1, keepdims=True)).astype(np.float32)
        three_c = bool(np.any(data[0] != 0) and np.any(data[1] != 0))
        recs.append(Recording(f.stem, station, data, p, s, three_c))
    log.info("loaded %d recordings from %s", len(recs), folder)
    return recs


def load_seisbench_dataset(path: str | Path, spec: ModelSpec = DEFAULT_SPEC) -> list[Recording]:
    """Load a SeisBench ``WaveformDataset`` from disk, resampled to the spec rate and in spec component order."""
    import seisbench.data as sbd

    try:
        ds = sbd.WaveformDataset(
            Path(path), sampling_rate=spec.sampling_rate_hz, component_order=spec.component_order, cache=None
        )
    except Exception as exc:  # SeisBench raises several types for a malformed folder
        raise DataError(f"cannot open SeisBench dataset at {path}: {exc}") from exc
    meta = ds.metadata
    recs = []
    for i in range(len(ds)):
        row = meta.iloc[i]
        data = np.nan_to_num(np.asarray(ds.get_waveforms(i), dtype=np.float64))
        if data.shape[0] != 3:
            raise DataError(f"trace {i}: {data.shape[0]} components, expected 3")
        p = _meta_sample(row, ("trace_p_arrival_sample", "trace_P_arrival_sample", "trace_P1_arrival_sample"))
        s = _meta_sample(row, ("trace_s_arrival_sample", "trace_S_arrival_sample", "trace_S1_arrival_sample"))
        if str(row.get("trace_category", "")).lower() == "noise":
            p = s = None
        station = f"{row.get('station_network_code', '')}.{row.get('station_code', '')}"
        name = str(row.get("trace_name", f"trace{i}"))
        data = (data - data.mean(axis=1, keepdims=True)).astype(np.float32)
        three_c = bool(np.any(data[0] != 0) and np.any(data[1] != 0))
        recs.append(Recording(name, station, data, p, s, three_c))
    log.info("loaded %d recordings from SeisBench dataset %s", len(recs), path)
    return recs


def _meta_sample(row, keys: Sequence[str]) -> int | None:
    for k in keys:
        if k in row.index:
            v = row[k]
            try:
                v = float(v)
            except (TypeError, ValueError):
                continue
            if math.isfinite(v):
                return int(round(v))
    return None


def load_recordings(source: str | Path, spec: ModelSpec = DEFAULT_SPEC) -> list[Recording]:
    """A SeisBench dataset folder (has ``metadata.csv``) or a folder of ``.npz`` events."""
    source = Path(source)
    if not source.exists():
        raise DataError(f"data source {source} does not exist")
    if (source / "metadata.csv").exists() or any(source.glob("metadata*.csv")):
        return load_seisbench_dataset(source, spec)
    return load_npz_folder(source)


# ------------------------------------------------------------------------------------------------ splits


def make_station_split(
    stations: Iterable[str], seed: int, fractions: tuple[float, float, float] = (0.7, 0.1, 0.2)
) -> dict[str, list[str]]:
    """Assign each station to train/val/test by a seeded shuffle. No station is in two splits."""
    uniq = sorted(set(stations))
    rng = np.random.default_rng(seed)
    order = [uniq[i] for i in rng.permutation(len(uniq))]
    n_test = max(1, int(round(fractions[2] * len(order)))) if len(order) >= 3 else 0
    n_val = max(1, int(round(fractions[1] * len(order)))) if len(order) >= 3 else 0
    test, val, train = order[:n_test], order[n_test : n_test + n_val], order[n_test + n_val :]
    return {"train": sorted(train), "val": sorted(val), "test": sorted(test)}


def write_split(path: str | Path, split: dict[str, list[str]], seed: int, source: str) -> None:
    """Write the split as JSON: ``{"seed", "source", "by": "station", "train": [...], "val": [...], "test": [...]}``."""
    doc = {"seed": seed, "source": source, "by": "station", **split}
    Path(path).write_text(json.dumps(doc, indent=1) + "\n")


def read_split(path: str | Path) -> dict[str, list[str]]:
    doc = json.loads(Path(path).read_text())
    for key in ("train", "val", "test"):
        if key not in doc:
            raise DataError(f"split file {path} has no {key!r} list")
    overlap = (set(doc["train"]) & set(doc["test"])) | (set(doc["train"]) & set(doc["val"]))
    if overlap:
        raise DataError(f"split file {path}: stations in two splits: {sorted(overlap)[:5]}")
    return {k: list(doc[k]) for k in ("train", "val", "test")}


def select(recs: Sequence[Recording], stations: Iterable[str]) -> list[Recording]:
    keep = set(stations)
    return [r for r in recs if r.station in keep]


# ------------------------------------------------------------------------------------------------- pairs


@dataclass
class PairConfig:
    """How training pairs are drawn. SNRs are Z-power ratios in dB (see :func:`snr_db`)."""

    window_samples: int = 3000
    sampling_rate_hz: float = 100.0
    min_event_snr_db: float = 15.0
    snr_low_db: tuple[float, float] = (-15.0, 5.0)
    snr_high_db: tuple[float, float] = (5.0, 30.0)
    low_snr_share: float = 0.6
    noise_only_share: float = 0.15
    p_position_range: tuple[int, int] = (-1500, 3300)
    stretch_range: tuple[float, float] = (0.85, 1.15)
    stretch_share: float = 0.5
    slow_share: float = 0.2
    slow_range: tuple[float, float] = (1.5, 3.0)
    microseism_share: float = 0.5
    microseism_db: tuple[float, float] = (-5.0, 15.0)
    microseism_top_hz: tuple[float, float] = (0.3, 1.0)
    high_freq_share: float = 0.15
    high_freq_db: tuple[float, float] = (-10.0, 5.0)
    short_period_share: float = 0.25
    strong_motion_share: float = 0.1
    en_swap_share: float = 0.2
    component_flip_share: float = 0.1
    z_only_share: float = 0.08
    one_horizontal_missing_share: float = 0.05
    source_balanced: bool = True

    def to_dict(self) -> dict:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in self.__dict__.items()}


@dataclass
class PairBatch:
    """``y`` noisy and ``x0`` clean target, ``(batch, 3, window)`` float32 counts; ``p``/``s`` sample indices in
    the window (-1 when absent or outside); ``snr_db`` input SNR (nan for noise-only)."""

    y: np.ndarray
    x0: np.ndarray
    p: np.ndarray
    s: np.ndarray
    snr_db: np.ndarray
    noise_only: np.ndarray = field(default_factory=lambda: np.zeros(0, bool))


def onset_mute(n: int, p_sample: int | None, sampling_rate_hz: float) -> np.ndarray:
    """A ``(n,)`` gain: 0 until ``PRE_P_MUTE_S`` before P, a cosine ramp to 1 at P - 0.1 s, then 1."""
    g = np.ones(n, np.float32)
    if p_sample is None:
        return g
    a = p_sample - int(PRE_P_MUTE_S * sampling_rate_hz)
    b = p_sample - int(0.1 * sampling_rate_hz)
    idx = np.arange(n)
    g[idx < a] = 0.0
    ramp = (idx >= a) & (idx < b)
    g[ramp] = 0.5 - 0.5 * np.cos(np.pi * (idx[ramp] - a) / max(b - a, 1))
    return g


def _extend(seg: np.ndarray, n: int) -> np.ndarray:
    """Extend a ``(3, m)`` segment to at least ``n`` samples by alternating reflections (no jumps)."""
    out = seg
    while out.shape[1] < n:
        out = np.concatenate([out, out[:, ::-1]], axis=1)
    return out


def crop_noise(seg: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """A random ``(3, n)`` float32 crop of a noise segment (extended by reflection when short), mean removed."""
    ext = _extend(seg, 2 * n)
    o = int(rng.integers(0, ext.shape[1] - n + 1))
    w = ext[:, o : o + n].astype(np.float32)
    return w - w.mean(axis=1, keepdims=True)


def colored_noise(
    n: int, band_hz: tuple[float, float], rng: np.random.Generator, sampling_rate_hz: float = 100.0
) -> np.ndarray:
    """``(3, n)`` Gaussian noise band-limited to ``band_hz`` (cosine-tapered edges), unit power per component."""
    f = np.fft.rfftfreq(n, 1.0 / sampling_rate_hz)
    lo, hi = band_hz
    amp = ((f >= lo) & (f <= hi)).astype(np.float64)
    for edge, sign in ((lo, -1), (hi, 1)):
        width = 0.3 * edge
        ramp = (sign * (f - edge) > 0) & (sign * (f - edge) < width)
        amp[ramp] = 0.5 + 0.5 * np.cos(np.pi * sign * (f[ramp] - edge) / width)
    spec = amp * (rng.standard_normal((3, f.size)) + 1j * rng.standard_normal((3, f.size)))
    x = np.fft.irfft(spec, n=n, axis=1)
    return (x / (x.std(axis=1, keepdims=True) + 1e-20)).astype(np.float32)


def _rotate_horizontals(x: np.ndarray, angle: float) -> np.ndarray:
    c, s = math.cos(angle), math.sin(angle)
    e, n = x[0].copy(), x[1].copy()
    x = x.copy()
    x[0], x[1] = c * e - s * n, s * e + c * n
    return x


def _stretch(x: np.ndarray, factor: float) -> np.ndarray:
    """Resample ``(3, m)`` by linear interpolation so that durations scale by ``factor``."""
    m = x.shape[1]
    new_m = int(m * factor)
    src = np.arange(new_m) / factor
    return np.stack([np.interp(src, np.arange(m), ch) for ch in x]).astype(np.float32)


def instrument_response(x: np.ndarray, kind: str, sampling_rate_hz: float = 100.0) -> np.ndarray:
    """Make ``(3, n)`` data look as if another instrument had recorded it (applied to event and noise alike):
    ``"broadband"`` unchanged; ``"short-period"`` a causal 2-pole 1-Hz high-pass (a 1-Hz geophone's velocity
    response); ``"strong-motion"`` the time derivative (acceleration), which tilts the spectrum towards high
    frequencies. Output keeps the input's RMS, so only the spectrum's shape changes."""
    if kind == "broadband":
        return x
    from scipy.signal import butter, sosfilt

    x64 = np.asarray(x, np.float64)
    if kind == "short-period":
        sos = butter(2, 1.0, btype="highpass", fs=sampling_rate_hz, output="sos")
        out = sosfilt(sos, x64 - x64[:, :1], axis=-1)
    elif kind == "strong-motion":
        out = np.diff(x64, axis=-1, prepend=x64[:, :1]) * sampling_rate_hz
    else:
        raise ValueError(f"unknown instrument kind {kind!r}")
    rms_in = np.sqrt(np.mean(x64**2)) + 1e-30
    rms_out = np.sqrt(np.mean(out**2)) + 1e-30
    return (out * (rms_in / rms_out)).astype(np.float32)


def _groups(keys: Sequence[str], balanced: bool) -> list[np.ndarray]:
    """Indices grouped by key (one group of everything when not balanced)."""
    if not balanced:
        return [np.arange(len(keys))]
    by: dict[str, list[int]] = {}
    for i, k in enumerate(keys):
        by.setdefault(k, []).append(i)
    return [np.array(v) for _, v in sorted(by.items())]


def _pick(groups: list[np.ndarray], rng: np.random.Generator) -> int:
    g = groups[int(rng.integers(len(groups)))]
    return int(g[int(rng.integers(len(g)))])


class PairSampler:
    """Draws noisy/clean pairs from events and a noise pool, reproducibly under ``seed``."""

    def __init__(self, recordings: Sequence[Recording], config: PairConfig | None = None, seed: int = 0) -> None:
        self.cfg = config or PairConfig()
        self.rng = np.random.default_rng(seed)
        sr = self.cfg.sampling_rate_hz
        self.events = [
            r for r in recordings if r.is_event and event_snr_db(r, sr) >= self.cfg.min_event_snr_db
        ]
        self.noise: list[tuple[int, np.ndarray, bool]] = []
        for i, r in enumerate(recordings):
            seg = r.noise_segment()
            if seg is not None and np.any(seg[2] != 0):
                self.noise.append((i, seg, r.three_component))
        self._names = [r.name for r in recordings]
        # Source balance: each source with events (noise) is drawn equally often, whatever its size.
        self._event_groups = _groups([r.source for r in self.events], self.cfg.source_balanced)
        self._noise_groups = _groups([recordings[i].source for i, _, _ in self.noise], self.cfg.source_balanced)
        if not self.events:
            raise DataError(f"no events with Z SNR >= {self.cfg.min_event_snr_db} dB for training targets")
        if len(self.noise) < 2:
            raise DataError("need at least two recordings with pre-event noise")
        log.info("pair sampler: %d target events, %d noise segments", len(self.events), len(self.noise))

    def _noise_window(self, exclude: str | None, need_3c: bool) -> np.ndarray:
        n = self.cfg.window_samples
        for _ in range(50):
            i, seg, three_c = self.noise[_pick(self._noise_groups, self.rng)]
            if self._names[i] != exclude and (three_c or not need_3c):
                break
        ext = _extend(seg, 2 * n)
        start = int(self.rng.integers(0, ext.shape[1] - n + 1))
        w = ext[:, start : start + n].copy()
        if self.rng.random() < 0.5:
            w = w[:, ::-1].copy()
        if three_c:
            w = _rotate_horizontals(w, self.rng.uniform(0, 2 * np.pi))
        w *= self.rng.choice([-1.0, 1.0])
        w = (w - w.mean(axis=1, keepdims=True)).astype(np.float32)
        # Most training noise is from short-period stations; broadband stations add strong microseismic
        # (0.05-1.5 Hz) and some cultural (> 15 Hz) noise, so both are mixed in synthetically.
        # Power of the components the recording has (a Z-only recording's zero horizontals would lower it 4.8 dB).
        live = np.any(w != 0, axis=1)
        power = float(np.mean(w[live].astype(np.float64) ** 2)) if live.any() else 0.0
        power = power or 1.0
        if self.rng.random() < self.cfg.microseism_share:
            band = (self.rng.uniform(0.05, 0.2), self.rng.uniform(*self.cfg.microseism_top_hz))
            gain = 10 ** (self.rng.uniform(*self.cfg.microseism_db) / 20) * math.sqrt(power)
            w = w + np.float32(gain) * colored_noise(n, band, self.rng, self.cfg.sampling_rate_hz)
        if self.rng.random() < self.cfg.high_freq_share:
            band = (self.rng.uniform(15.0, 25.0), self.rng.uniform(30.0, 45.0))
            gain = 10 ** (self.rng.uniform(*self.cfg.high_freq_db) / 20) * math.sqrt(power)
            w = w + np.float32(gain) * colored_noise(n, band, self.rng, self.cfg.sampling_rate_hz)
        if not three_c:
            w[:2] = 0.0
        return w

    def _draw_snr(self) -> float:
        lo, hi = self.cfg.snr_low_db if self.rng.random() < self.cfg.low_snr_share else self.cfg.snr_high_db
        return float(self.rng.uniform(lo, hi))

    def draw_one(self) -> tuple[np.ndarray, np.ndarray, int, int, float, bool]:
        """One pair: ``(y, x0, p, s, snr_db, noise_only)`` with ``(3, window)`` arrays in counts."""
        n, sr = self.cfg.window_samples, self.cfg.sampling_rate_hz
        instrument = self._draw_instrument()
        if self.rng.random() < self.cfg.noise_only_share:
            y = instrument_response(self._noise_window(None, need_3c=False), instrument, sr)
            y = y * np.float32(10 ** self.rng.uniform(-2, 4))
            y, x0 = self._channel_augment(y, np.zeros_like(y))
            return y, x0, -1, -1, math.nan, True
        ev = self.events[_pick(self._event_groups, self.rng)]
        data, p, s = instrument_response(ev.data, instrument, sr), int(ev.p_sample), ev.s_sample  # type: ignore[arg-type]  # events have P
        u = self.rng.random()
        if u < self.cfg.slow_share + self.cfg.stretch_share:
            # Slowed-down events (longer, lower-frequency: larger or more distant ones) teach that energy at
            # 1-2 Hz can be signal; the synthetic microseism stays below about 1.3 Hz.
            rng_f = self.cfg.slow_range if u < self.cfg.slow_share else self.cfg.stretch_range
            f = float(self.rng.uniform(*rng_f))
            data = _stretch(data, f)
            p = int(round(p * f))
            s = int(round(s * f)) if s is not None else None
        if ev.three_component:
            data = _rotate_horizontals(data, self.rng.uniform(0, 2 * np.pi))
        data = data * np.float32(self.rng.choice([-1.0, 1.0]))
        p_in_window = int(self.rng.integers(*self.cfg.p_position_range))
        start = int(np.clip(p - p_in_window, 0, data.shape[1] - n))
        raw = data[:, start : start + n]
        mute = onset_mute(data.shape[1], p, sr)[start : start + n]
        x0 = raw * mute
        # Noise only where the recording has data: a recording with Z and one horizontal keeps noise on that
        # horizontal (an input equal to its target there would teach that a horizontal is never noisy).
        live = np.any(ev.data != 0, axis=1)
        noise = instrument_response(self._noise_window(ev.name, need_3c=bool(live[:2].any())), instrument, sr)
        noise[~live] = 0.0
        snr = self._draw_snr()
        p_sig = np.mean(data[2, p : p + int(SNR_SIGNAL_S * sr)].astype(np.float64) ** 2)
        p_noise = np.mean(noise[2].astype(np.float64) ** 2)
        k = math.sqrt(p_sig / (p_noise * 10 ** (snr / 10))) if p_noise > 0 else 0.0
        y = raw + np.float32(k) * noise
        gain = np.float32(10 ** self.rng.uniform(-3, 3))
        y, x0 = self._channel_augment(y * gain, x0 * gain)
        pw, sw = p - start, (s - start) if s is not None else -1
        pw = pw if 0 <= pw < n else -1
        sw = sw if 0 <= sw < n else -1
        return y.astype(np.float32), x0.astype(np.float32), pw, sw, snr, False

    def _draw_instrument(self) -> str:
        u = self.rng.random()
        if u < self.cfg.short_period_share:
            return "short-period"
        if u < self.cfg.short_period_share + self.cfg.strong_motion_share:
            return "strong-motion"
        return "broadband"

    def _channel_augment(self, y: np.ndarray, x0: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """What real stations send besides clean ENZ: swapped horizontals, a reversed component, missing
        components (zero in input and target alike)."""
        cfg, rng = self.cfg, self.rng
        y, x0 = y.copy(), x0.copy()
        if rng.random() < cfg.en_swap_share:
            y[[0, 1]], x0[[0, 1]] = y[[1, 0]], x0[[1, 0]]
        if rng.random() < cfg.component_flip_share:
            c = int(rng.integers(3))
            y[c], x0[c] = -y[c], -x0[c]
        u = rng.random()
        if u < cfg.z_only_share:
            y[:2], x0[:2] = 0.0, 0.0
        elif u < cfg.z_only_share + cfg.one_horizontal_missing_share:
            c = int(rng.integers(2))
            y[c], x0[c] = 0.0, 0.0
        return y, x0

    def draw(self, batch_size: int) -> PairBatch:
        items = [self.draw_one() for _ in range(batch_size)]
        return PairBatch(
            y=np.stack([it[0] for it in items]),
            x0=np.stack([it[1] for it in items]),
            p=np.array([it[2] for it in items]),
            s=np.array([it[3] for it in items]),
            snr_db=np.array([it[4] for it in items]),
            noise_only=np.array([it[5] for it in items]),
        )


# ----------------------------------------------------------------------------------------- evaluation set


@dataclass
class EvalSet:
    """A fixed evaluation set. ``clean`` is the recorded event (unmuted: the honest reference); ``p``/``s`` are
    sample indices (-1 if absent); ``snr_db`` the target input SNR (nan for noise-only); ``names`` the source
    recordings ``event|noise``."""

    noisy: np.ndarray
    clean: np.ndarray
    p: np.ndarray
    s: np.ndarray
    snr_db: np.ndarray
    noise_only: np.ndarray
    names: list[str]


def mix_at_snr(
    ev: Recording, data: np.ndarray, start: int, noise: np.ndarray, snr_db: float, sampling_rate_hz: float = 100.0
) -> tuple[np.ndarray, np.ndarray, int, int]:
    """``data[:, start:start+n]`` (the event's data, possibly extended) plus ``noise`` ``(3, n)`` scaled so that the
    event's Z power over ``SNR_SIGNAL_S`` after P is ``snr_db`` above the noise's. Returns noisy, clean, and the P and
    S positions in the window (-1 for an S outside it)."""
    n = noise.shape[1]
    clean = data[:, start : start + n]
    p = int(ev.p_sample) if ev.p_sample is not None else 0
    p_sig = np.mean(ev.data[2, p : p + int(SNR_SIGNAL_S * sampling_rate_hz)].astype(np.float64) ** 2)
    k = math.sqrt(p_sig / (np.mean(noise[2].astype(np.float64) ** 2) * 10 ** (snr_db / 10)))
    s = ev.s_sample - start if ev.s_sample is not None else -1
    return clean + np.float32(k) * noise, clean, p - start, s if 0 <= s < n else -1


def build_eval_set(
    recordings: Sequence[Recording],
    snr_levels_db: Sequence[float] = (-15, -10, -5, 0, 5, 10),
    n_noise_only: int = 40,
    seed: int = 12345,
    window_samples: int = 3000,
    sampling_rate_hz: float = 100.0,
    min_event_snr_db: float = 15.0,
    p_position_range: tuple[int, int] = (500, 2500),
    noise_recordings: Sequence[Recording] | None = None,
) -> EvalSet:
    """Deterministic noisy/clean windows: every event x every SNR level, noise from another recording of the
    same split (of ``noise_recordings`` when given), P placed at a seeded position; plus ``n_noise_only``
    noise-only windows."""
    rng = np.random.default_rng(seed)
    n = window_samples
    events = [r for r in recordings if r.is_event and event_snr_db(r, sampling_rate_hz) >= min_event_snr_db]
    noise_from = recordings if noise_recordings is None else noise_recordings
    noise = [(r.name, r.noise_segment(), r.three_component) for r in noise_from]
    noise = [(nm, seg, c) for nm, seg, c in noise if seg is not None and np.any(seg[2] != 0)]
    if not events or len(noise) < 2:
        raise DataError("evaluation needs at least one clean event and two noise segments in the split")
    out: dict[str, list] = {k: [] for k in ("noisy", "clean", "p", "s", "snr", "noise_only", "names")}
    for ev in events:
        for snr in snr_levels_db:
            cands = [x for x in noise if x[0] != ev.name and (x[2] or not ev.three_component)] or noise
            nm, seg, _ = cands[rng.integers(len(cands))]
            nz = crop_noise(seg, n, rng)  # type: ignore[arg-type]  # None segments were filtered out above
            if not ev.three_component:
                nz[:2] = 0
            pw = int(rng.integers(*p_position_range))
            start = int(np.clip(int(ev.p_sample) - pw, 0, ev.data.shape[1] - n))  # type: ignore[arg-type]
            noisy, clean, p, s = mix_at_snr(ev, ev.data, start, nz, snr, sampling_rate_hz)
            out["noisy"].append(noisy)
            out["clean"].append(clean)
            out["p"].append(p)
            out["s"].append(s)
            out["snr"].append(float(snr))
            out["noise_only"].append(False)
            out["names"].append(f"{ev.name}|{nm}")
    for _ in range(n_noise_only):
        nm, seg, _ = noise[rng.integers(len(noise))]
        out["noisy"].append(crop_noise(seg, n, rng))  # type: ignore[arg-type]
        out["clean"].append(np.zeros((3, n), np.float32))
        out["p"].append(-1)
        out["s"].append(-1)
        out["snr"].append(math.nan)
        out["noise_only"].append(True)
        out["names"].append(f"-|{nm}")
    return EvalSet(
        noisy=np.stack(out["noisy"]).astype(np.float32),
        clean=np.stack(out["clean"]).astype(np.float32),
        p=np.array(out["p"]),
        s=np.array(out["s"]),
        snr_db=np.array(out["snr"]),
        noise_only=np.array(out["noise_only"]),
        names=out["names"],
    )
