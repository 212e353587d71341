"""miniSEED 2 (written by ObsPy) and 3 (written by pymseed) records decode to the right samples
and times; bad payloads raise RecordDecodeError with the channel when it can be known."""

from __future__ import annotations

import io

import numpy as np
import pytest
from obspy import Stream, Trace, UTCDateTime
from pymseed import DataEncoding, MS3Record

from streamer.mseed import RecordDecodeError, IngestError, decode_payload, read_file_blocks
from streamer.records import PacketRef

START = UTCDateTime(2024, 1, 1, 0, 0, 3.25)
START_NS = 1_704_067_203_250_000_000


def mseed2(samples: np.ndarray, encoding: str, channel: str = "HHZ", rate: float = 100.0, reclen: int = 512) -> bytes:
    tr = Trace(samples, header=dict(network="XX", station="ABC", location="00", channel=channel, sampling_rate=rate, starttime=START))
    buf = io.BytesIO()
    Stream([tr]).write(buf, format="MSEED", reclen=reclen, encoding=encoding)
    return buf.getvalue()


def mseed3(samples: np.ndarray, encoding: int, sample_type: str) -> list[bytes]:
    msr = MS3Record()
    msr.sourceid = "FDSN:XX_ABC_00_H_H_Z"
    msr.samprate = 100.0
    msr.starttime = START_NS
    msr.reclen = 512
    msr.encoding = encoding
    msr.formatversion = 3
    return list(msr.generate(samples, sample_type))


def signal(dtype: type, n: int = 2000) -> np.ndarray:
    rng = np.random.default_rng(7)
    x = np.cumsum(rng.normal(0, 50, n))
    return x.astype(dtype) if dtype is not np.int32 else np.round(x).astype(np.int32)


@pytest.mark.parametrize(
    ("encoding", "dtype"),
    [("STEIM1", np.int32), ("STEIM2", np.int32), ("INT32", np.int32), ("FLOAT32", np.float32), ("FLOAT64", np.float64)],
)
def test_mseed2_encodings_decode_exactly(encoding: str, dtype: type) -> None:
    x = signal(dtype)
    raw = mseed2(x, encoding)
    blocks = decode_payload(raw, arrival_ns=123, packet=PacketRef("h:1", "XX_ABC", 9))
    assert len(blocks) == len(raw) // 512 > 1
    assert all(b.seed_id == "XX.ABC.00.HHZ" and b.station_id == "XX.ABC.00" and b.channel == "HHZ" for b in blocks)
    assert all(b.arrival_ns == 123 and b.packet is not None and b.packet.sequence == 9 for b in blocks)
    assert blocks[0].start_ns == START_NS
    assert blocks[0].samples.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(np.concatenate([b.samples for b in blocks]), x)
    # records follow each other exactly: each starts where the previous ended
    for a, b in zip(blocks, blocks[1:]):
        assert b.start_ns == a.end_ns
        assert b.sampling_rate_hz == 100.0


def test_one_record_per_payload_like_seedlink() -> None:
    x = signal(np.int32)
    raw = mseed2(x, "STEIM2")
    got = [decode_payload(raw[i : i + 512], 0) for i in range(0, len(raw), 512)]
    assert all(len(g) == 1 for g in got)
    np.testing.assert_array_equal(np.concatenate([g[0].samples for g in got]), x)


@pytest.mark.parametrize(
    ("encoding", "sample_type", "dtype"),
    [(DataEncoding.STEIM2, "i", np.int32), (DataEncoding.INT32, "i", np.int32), (DataEncoding.FLOAT32, "f", np.float32), (DataEncoding.FLOAT64, "d", np.float64)],
)
def test_mseed3_decodes(encoding: int, sample_type: str, dtype: type) -> None:
    x = signal(dtype, 700)
    recs = mseed3(x, encoding, sample_type)
    blocks = [b for r in recs for b in decode_payload(r, 5)]
    assert blocks[0].seed_id == "XX.ABC.00.HHZ"
    assert blocks[0].start_ns == START_NS
    np.testing.assert_array_equal(np.concatenate([b.samples for b in blocks]), x)
    # and all records of a file in one payload
    assert sum(len(b.samples) for b in decode_payload(b"".join(recs), 5)) == 700


def test_subsecond_start_time_is_kept_in_ns() -> None:
    msr = MS3Record()
    msr.sourceid = "FDSN:XX_ABC_00_H_H_Z"
    msr.samprate = 100.0
    msr.starttime = START_NS + 123_456_789
    msr.formatversion = 3
    msr.encoding = DataEncoding.INT32
    (rec,) = list(msr.generate(np.arange(10, dtype=np.int32), "i"))
    (block,) = decode_payload(rec, 0)
    assert block.start_ns == START_NS + 123_456_789


def test_text_records_yield_no_blocks() -> None:
    tr = Trace(np.frombuffer(b"station log line", dtype="|S1"), header=dict(network="XX", station="ABC", channel="LOG"))
    buf = io.BytesIO()
    Stream([tr]).write(buf, format="MSEED", reclen=512, encoding="ASCII")
    assert decode_payload(buf.getvalue(), 0) == []


@pytest.mark.parametrize(
    "payload",
    [b"", b"\x00" * 512, b"garbage" * 80, np.random.default_rng(3).integers(0, 256, 512, dtype=np.uint8).tobytes()],
    ids=["empty", "zeros", "text", "random"],
)
def test_garbage_raises_decode_error(payload: bytes) -> None:
    with pytest.raises(RecordDecodeError) as info:
        decode_payload(payload, 0)
    assert isinstance(info.value, IngestError)
    assert info.value.reason
    assert info.value.blocks == []


def test_truncated_record_raises_with_channel() -> None:
    raw = mseed2(signal(np.int32), "STEIM2")
    with pytest.raises(RecordDecodeError) as info:
        decode_payload(raw[:300], 0)
    assert "more bytes" in info.value.reason


def test_corrupt_steim_frames_name_the_channel() -> None:
    rec = bytearray(mseed2(signal(np.int32), "STEIM2")[:512])
    rec[64:512] = bytes(448)  # frames wiped: header intact, no samples decodable
    with pytest.raises(RecordDecodeError) as info:
        decode_payload(bytes(rec), 0)
    assert info.value.seed_id == "XX.ABC.00.HHZ"
    assert "decoded" in info.value.reason


def test_bad_record_after_good_ones_keeps_the_good_ones() -> None:
    raw = mseed2(signal(np.int32), "STEIM2")
    bad = bytearray(raw[512:1024])
    bad[64:512] = bytes(448)
    with pytest.raises(RecordDecodeError) as info:
        decode_payload(raw[:512] + bytes(bad), 0)
    assert len(info.value.blocks) == 1
    assert info.value.blocks[0].start_ns == START_NS


def test_mseed3_crc_mismatch_is_an_error() -> None:
    (rec, *_) = mseed3(signal(np.float32, 100), DataEncoding.FLOAT32, "f")
    damaged = bytearray(rec)
    damaged[-3] ^= 0xFF
    with pytest.raises(RecordDecodeError) as info:
        decode_payload(bytes(damaged), 0)
    assert "CRC" in info.value.reason
    assert info.value.seed_id == "XX.ABC.00.HHZ"


def test_read_file_blocks(tmp_path) -> None:  # type: ignore[no-untyped-def]
    x = signal(np.int32)
    path = tmp_path / "x.mseed"
    path.write_bytes(mseed2(x, "STEIM2"))
    blocks = list(read_file_blocks(path))
    np.testing.assert_array_equal(np.concatenate([b.samples for b in blocks]), x)


@pytest.mark.parametrize(("rate_hz", "nominal"), [
    (100.0001, True),    # 1 ppm: a measured rate (blockette 100) of a GPS-disciplined digitiser
    (100.0005, True),    # 5 ppm
    (99.999, True),      # 10 ppm
    (100.003, True),     # 30 ppm
    (100.01, False),     # 100 ppm: a different rate, not header noise
])
def test_measured_rate_near_nominal_is_the_nominal_rate(rate_hz: float, nominal: bool) -> None:
    """A blockette-100 rate a few ppm off the nominal 100 Hz is the nominal rate (the station is not
    rejected as "rate"); one 100 ppm off is not."""
    import io
    from fractions import Fraction

    from obspy import Stream, Trace, UTCDateTime

    from models.grid import exact_rate

    tr = Trace(np.arange(200, dtype=np.int32), header={"network": "XX", "station": "AAA", "channel": "HHZ",
                                                       "sampling_rate": rate_hz, "starttime": UTCDateTime(2026, 1, 1)})
    buf = io.BytesIO()
    Stream([tr]).write(buf, format="MSEED", reclen=512, encoding="STEIM2")
    (block,) = decode_payload(buf.getvalue(), 0)
    assert block.sampling_rate_hz != 100.0  # the record carries the measured rate
    assert (exact_rate(block.sampling_rate_hz) == Fraction(100)) is nominal
    assert (exact_rate(rate_hz) == Fraction(100)) is nominal
