"""Build the bundled demo recording: real events placed in real noise at several SNRs.

Run ``python -m streamer.demo_data.build`` to regenerate ``demo.mseed`` and ``catalogue.json`` in this
folder (deterministic: fixed seed, fixed sources). Everything comes from recordings shipped inside the
installed ObsPy package, so no download is needed; ``docs/demo-data.md`` lists the sources and licences.

- Noise: two one-hour 200 Hz vertical-component noise recordings shipped with ObsPy's PPSD tests
  (``signal/tests/data/ref_STS2`` and ``ref_unknown``), band-limited to 1-45 Hz, decimated to 100 Hz and
  cut into non-overlapping 240 s pieces; each station's E, N and Z traces are different pieces, so the
  noise is real but uncorrelated between components.
- Events: ``obspy.read()``'s example (BW.RJOB, 2009-08-24, 100 Hz, local event) and the SEISAN example
  ``io/seisan/tests/data/2005-07-23-1452-04S.CER___030.mseed`` (150 Hz, resampled to 100 Hz), both
  three-component, band-limited the same way, tapered, scaled to a target SNR and added to the noise
  with a station-dependent moveout.
- P (and S) times: PhaseNet ("original" weights) picks on the clean, band-limited source recordings,
  measured once and kept below as ``EVENTS[...]["p_offset_s"]`` (the median over windows at 5 s
  offsets, ignoring picks within 1 s of a window edge). ``--verify-picks CACHE_ROOT`` measures them again with a local SeisBench cache.

SNR here is the ratio of the standard deviation of the event's vertical component in the 5 s after P
to the standard deviation of the vertical noise (amplitude ratio, not dB).
"""

from __future__ import annotations

import argparse
import json
import logging
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

HERE = Path(__file__).resolve().parent
MSEED_NAME = "demo.mseed"
CATALOGUE_NAME = "catalogue.json"

SEED = 20240101
START = "2024-01-01T00:00:00.000000Z"
DURATION_S = 240.0
RATE_HZ = 100.0
NETWORK = "XX"  # SEED's network code for experimental / test data
STATIONS = [f"DEM{i:02d}" for i in range(1, 7)]
CHANNELS = {"E": "HHE", "N": "HHN", "Z": "HHZ"}
NOISE_STD_COUNTS = 400.0
BAND_HZ = (1.0, 45.0)


@dataclass(frozen=True)
class EventSource:
    event_id: str
    path: str  # relative to the obspy package folder ("" = obspy.read()'s example)
    p_offset_s: float  # P time after the start of the band-limited 100 Hz recording (PhaseNet)
    s_offset_s: float | None
    first_p_s: float  # P time at the first station of the demo recording
    moveout_s: float  # extra delay per station
    snrs: tuple[float, ...]  # per station, in STATIONS order


EVENTS = [
    EventSource("rjob-2009", "", 4.73, 5.71, 50.0, 0.8, (20.0, 10.0, 5.0, 3.0, 2.0, 1.5)),
    EventSource(
        "cer-2005",
        "io/seisan/tests/data/2005-07-23-1452-04S.CER___030.mseed",
        29.72,
        None,
        150.0,
        1.5,
        (3.0, 20.0, 10.0, 1.5, 5.0, 2.0),
    ),
]

NOISE_FILES = ["signal/tests/data/ref_STS2", "signal/tests/data/ref_unknown"]


def _obspy_dir() -> Path:
    import obspy

    return Path(obspy.__file__).resolve().parent


def _band(st: Any) -> Any:
    st.detrend("demean")
    st.taper(0.02)
    st.filter("bandpass", freqmin=BAND_HZ[0], freqmax=BAND_HZ[1], corners=4, zerophase=True)
    return st


def load_event(src: EventSource) -> np.ndarray:
    """The event recording as ``(3, n)`` float64 in ENZ order, band-limited, 100 Hz."""
    import obspy

    st = obspy.read() if not src.path else obspy.read(str(_obspy_dir() / src.path))
    st = _band(st)
    for tr in st:
        if tr.stats.sampling_rate != RATE_HZ:
            tr.resample(RATE_HZ)
    n = min(len(tr.data) for tr in st)
    x = np.stack([st.select(component=c)[0].data[:n].astype(np.float64) for c in "ENZ"])
    taper = np.ones(n)
    k = int(1.0 * RATE_HZ)
    taper[:k] = 0.5 - 0.5 * np.cos(np.linspace(0, np.pi, k))
    taper[-k:] = taper[:k][::-1]
    return x * taper


def load_noise() -> list[np.ndarray]:
    """Each noise recording as 1-D float64 at 100 Hz, band-limited, unit standard deviation."""
    import obspy

    out = []
    for rel in NOISE_FILES:
        st = obspy.read(str(_obspy_dir() / rel))
        st.merge(fill_value=0)
        st = _band(st)
        st.decimate(int(st[0].stats.sampling_rate / RATE_HZ), no_filter=True)  # already band-limited
        d = st[0].data.astype(np.float64)
        out.append((d - d.mean()) / d.std())
    return out


def build(out_dir: Path = HERE) -> dict[str, Any]:
    """Write ``demo.mseed`` and ``catalogue.json`` to ``out_dir``; returns the catalogue."""
    import obspy

    rng = np.random.default_rng(SEED)
    n = int(DURATION_S * RATE_HZ)
    start = obspy.UTCDateTime(START)
    noises = load_noise()
    events = {e.event_id: load_event(e) for e in EVENTS}
    stream = obspy.Stream()
    picks: list[dict[str, Any]] = []
    per_file = len(STATIONS) // len(noises)
    for i, sta in enumerate(STATIONS):
        noise = noises[i // per_file]
        # three non-overlapping pieces per station, at a seeded offset inside this station's share
        share = len(noise) // per_file
        base = (i % per_file) * share + int(rng.integers(0, share - 3 * n))
        traces = {c: NOISE_STD_COUNTS * noise[base + k * n : base + (k + 1) * n] for k, c in enumerate("ENZ")}
        for src in EVENTS:
            x = events[src.event_id]
            p_s = src.first_p_s + i * src.moveout_s
            onset = int(round((p_s - src.p_offset_s) * RATE_HZ))
            p_idx = int(round(src.p_offset_s * RATE_HZ))
            sig = np.std(x[2, p_idx : p_idx + int(5 * RATE_HZ)])
            scale = src.snrs[i] * NOISE_STD_COUNTS / sig
            for k, c in enumerate("ENZ"):
                seg = scale * x[k]
                lo, hi = max(onset, 0), min(onset + seg.size, n)
                traces[c][lo:hi] += seg[lo - onset : hi - onset]
            for phase, off in (("P", src.p_offset_s), ("S", src.s_offset_s)):
                if off is None:
                    continue
                t = start + (p_s - src.p_offset_s + off)
                picks.append(
                    {
                        "event_id": src.event_id,
                        "station_id": f"{NETWORK}.{sta}.",
                        "phase": phase,
                        "time": str(t),
                        "time_ns": int(round(t.timestamp * 1e9)),
                        "snr": src.snrs[i],
                    }
                )
        for c in "ENZ":
            tr = obspy.Trace(np.round(traces[c]).astype(np.int32))
            tr.stats.update(
                {"network": NETWORK, "station": sta, "location": "", "channel": CHANNELS[c],
                 "sampling_rate": RATE_HZ, "starttime": start}
            )
            stream.append(tr)
    out_dir.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        stream.write(str(out_dir / MSEED_NAME), format="MSEED", reclen=512, encoding="STEIM2")
    catalogue = {
        "description": "ObsPy example events placed in real ObsPy noise recordings (see docs/demo-data.md)",
        "start": START,
        "start_ns": int(round(start.timestamp * 1e9)),
        "duration_s": DURATION_S,
        "sampling_rate_hz": RATE_HZ,
        "stations": [f"{NETWORK}.{s}." for s in STATIONS],
        "channels": [CHANNELS[c] for c in "ENZ"],
        "pick_method": "PhaseNet (SeisBench 'original' weights) on the clean band-limited source recording",
        "snr_definition": "std of the vertical event signal in 5 s after P / std of the vertical noise",
        "events": [{"event_id": e.event_id, "source": e.path or "obspy.read() example (BW.RJOB)"} for e in EVENTS],
        "picks": sorted(picks, key=lambda p: (p["time_ns"], p["station_id"], p["phase"])),
    }
    (out_dir / CATALOGUE_NAME).write_text(json.dumps(catalogue, indent=1) + "\n")
    return catalogue


def verify_picks(cache_root: str) -> list[tuple[str, float, float]]:
    """Re-measure each source's P offset with PhaseNet; returns (event, stored, measured) seconds."""
    from models.picker import Picker

    picker = Picker(cache_root=cache_root)
    out = []
    for src in EVENTS:
        x = load_event(src).astype(np.float32)
        found = []
        for off in range(0, max(x.shape[1] - 3000, 0) + 1, 500):
            probs = picker.predict(x[None, :, off : off + 3000])
            # picks within 1 s of a window edge are unreliable (PhaseNet sees no pre-onset context)
            ps = [
                (i + off, p)
                for _, ph, i, p in picker.find_picks(probs, 0.3, 0.3)
                if ph == "P" and 100 <= i < probs.shape[-1] - 100
            ]
            if ps:
                found.append(max(ps, key=lambda t: t[1])[0])
        measured = float(np.median(found)) / RATE_HZ if found else float("nan")
        out.append((src.event_id, src.p_offset_s, measured))
    return out


DEMO_SENSITIVITY = 6.0e8  # counts per m/s: a broadband sensor and a 24-bit digitiser (illustrative)


def write_stationxml(path: Path, catalogue: dict[str, Any] | None = None) -> Path:
    """An illustrative StationXML for the demo stations (fictional coordinates near 47 N, 11 E and a
    flat velocity response of ``DEMO_SENSITIVITY``): it lets the demo's early-warning picks carry
    coordinates and Pd/Pv/Pa/tau_c. The demo's counts are ObsPy example data, so the amplitudes are
    illustrative only."""
    from obspy import UTCDateTime
    from obspy.core.inventory import Channel, Inventory, Network, Response, Station
    from obspy.core.inventory.response import InstrumentSensitivity

    cat = catalogue if catalogue is not None else load_catalogue()
    start = UTCDateTime(2020, 1, 1)
    stations = []
    for i, sid in enumerate(cat["stations"]):
        net, sta, loc = sid.split(".")
        lat, lon, elev = 47.0 + 0.1 * i, 11.0 + 0.15 * i, 500.0 + 50.0 * i
        chans = []
        for cha in cat["channels"]:
            azimuth, dip = {"E": (90.0, 0.0), "N": (0.0, 0.0), "Z": (0.0, -90.0)}[cha[-1]]
            resp = Response(instrument_sensitivity=InstrumentSensitivity(
                value=DEMO_SENSITIVITY, frequency=1.0, input_units="M/S", output_units="COUNTS"))
            chans.append(Channel(cha, loc, lat, lon, elev, 0.0, azimuth=azimuth, dip=dip,
                                 sample_rate=cat["sampling_rate_hz"], start_date=start, response=resp))
        stations.append(Station(sta, lat, lon, elev, channels=chans, start_date=start))
    inv = Inventory(networks=[Network(cat["stations"][0].split(".")[0], stations=stations)], source="coldstream demo")
    inv.write(str(path), format="STATIONXML")
    return path


def stationxml_path() -> Path:
    return HERE / "demo.xml"


def load_catalogue(path: Path | None = None) -> dict[str, Any]:
    """The bundled catalogue (``catalogue.json`` beside this module unless ``path``)."""
    return dict(json.loads((path or HERE / CATALOGUE_NAME).read_text()))


def recording_path() -> Path:
    """The bundled recording (``demo.mseed``)."""
    return HERE / MSEED_NAME


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out-dir", type=Path, default=HERE)
    parser.add_argument("--verify-picks", metavar="SEISBENCH_CACHE", help="re-measure the P offsets with PhaseNet")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    if args.verify_picks:
        for event_id, stored, measured in verify_picks(args.verify_picks):
            log.info("%s: stored P offset %.2f s, measured %.2f s", event_id, stored, measured)
        return 0
    cat = build(args.out_dir)
    log.info("wrote %s and %s (%d picks)", args.out_dir / MSEED_NAME, args.out_dir / CATALOGUE_NAME, len(cat["picks"]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
