"""SeedLink acquisition: one asyncio client per server, resuming from the acknowledged state.

The resume state (``StateTracker``, ``StateStore``, the state file) lives in
:mod:`streamer.seedlink_state`; this module reads it to build each connection's stream list.

- ``SeedLinkSource``: the connection to one server. It uses ``seedlink_client.AsyncSeedLink`` for
  framing and the v3/v4 handshake (one fresh client object per connection attempt, so the stream
  list, and with it the ``DATA <seq> <time>`` resume point, comes from our own state, never from
  the library's), and owns reconnection (capped exponential backoff with jitter, kept short
  while a server that was delivering data is away), the data timeout, gap detection, the
  selectors that deliver nothing, and the metrics.

Gaps are judged by data time, per channel: a packet whose first sample comes more than half a
sample period after the end of that channel's newest data so far opens a gap. Sequence numbers are
not compared: ringserver numbers v3 packets across its whole ring, not per station, so a station's
numbers skip by design. A packet at least ``buffers.max_clock_jump_s`` before or after the channel's
newest data (a stray header, a clock jump, a long outage) does not move the channel's time line until
packets hanging together with it span one model window, the buffers' rule for a clock jump: a single
stray header stamped near the wall clock in a station whose data lag it neither counts a gap nor hides
the real ones after it; a confirmed jump ahead counts one gap, a confirmed jump back none.

Limitations: a gap across a restart of the service is not seen here (the first packet of each
channel in a process has nothing to compare with); a hole the server never fills shows in the
published segments. The time fallback of a resume has one-second resolution on the v3 wire (rounded
down: duplicates, not gaps) and assumes a station's channels are not skewed by more than one record.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from models.spec import DEFAULT_SPEC
from streamer.buffers import JumpSpan
from streamer.config import BufferSettings, SeedLinkServer, SeedLinkSettings, split_stream_spec
from streamer.logutil import RateLimitedLog
from streamer.metrics import Metrics
from streamer.records import NS_PER_S, PacketRef
from streamer.seedlink_state import StateTracker, ns_to_iso

log = logging.getLogger(__name__)

SEQ_MODULUS = 1 << 24  # v3 sequence numbers are 24-bit and wrap

PacketCallback = Callable[[bytes, PacketRef, int], None]


# ---------------------------------------------------------------------------------------------
# packet headers
# ---------------------------------------------------------------------------------------------


@dataclass
class _ChannelLine:
    """A channel's data time line as delivered: the end of its newest data (ns), half its sample
    period (ns), and the span of packets far from it (a clock jump to confirm, or a stray header)."""

    end_ns: int
    half_ns: int
    far: JumpSpan


@dataclass(frozen=True)
class PacketHeader:
    """What the client needs from a miniSEED record header.

    ``start_ns`` is the first sample's time, ``end_ns`` the time just after the last sample
    (start + n / rate); both int ns since the epoch. Records without samples have end == start.
    """

    station_key: str  # "NET_STA"
    seed_id: str  # "NET.STA.LOC.CHA"
    start_ns: int
    end_ns: int
    sampling_rate_hz: float = 0.0


def header_from_record(record: Any) -> PacketHeader:
    """Build a ``PacketHeader`` from a parsed ``pymseed.MS3Record``."""
    from pymseed import sourceid2nslc

    net, sta, loc, cha = sourceid2nslc(record.sourceid)
    start_ns = int(record.starttime)
    n = int(record.samplecnt)
    rate = float(record.samprate)
    end_ns = start_ns + round(n * NS_PER_S / rate) if n > 0 and rate > 0 else start_ns
    return PacketHeader(f"{net}_{sta}", f"{net}.{sta}.{loc}.{cha}", start_ns, end_ns, rate if rate > 0 else 0.0)


def parse_packet_header(payload: bytes) -> PacketHeader:
    """Parse the header of one miniSEED (2 or 3) record; raises ``ValueError`` if it is not one."""
    from pymseed import MiniSEEDError, MS3Record

    try:
        record = MS3Record.parse(payload)
    except (MiniSEEDError, ValueError, BufferError) as exc:
        raise ValueError(f"not a miniSEED record: {exc}") from exc
    return header_from_record(record)


# ---------------------------------------------------------------------------------------------
# stream selection
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StreamRequest:
    """One configured selection: station pattern ``NET_STA`` (``?``/``*``) and v3 selectors."""

    station_pattern: str
    selectors: tuple[str, ...] = ()

    @property
    def is_wildcard(self) -> bool:
        return any(c in self.station_pattern for c in "*?")

    @property
    def label(self) -> str:
        """The selection as configured (normalised): ``"XX_*"``, ``"BK_CMB:HH? EH?"``."""
        return self.station_pattern + (":" + " ".join(self.selectors) if self.selectors else "")

    def matches(self, station_key: str) -> bool:
        return _wildcard_regex(self.station_pattern).fullmatch(station_key) is not None


def _wildcard_regex(pattern: str) -> re.Pattern[str]:
    return re.compile("".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern))


def parse_stream_spec(spec: str) -> StreamRequest:
    """``"NC_*"``, ``"BK_CMB:HH? EH?"`` or ``"NC_* :HH?"`` -> ``StreamRequest`` (the syntax is
    the config's, checked when the settings load; ``ValueError`` otherwise)."""
    station, selectors = split_stream_spec(spec)
    return StreamRequest(station, selectors)


# ---------------------------------------------------------------------------------------------
# the connection to one server
# ---------------------------------------------------------------------------------------------


class _SessionEnd(Exception):
    """A connection ended; ``reason`` is the metric label."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


class SeedLinkSource:
    """Streams one SeedLink server into ``on_packet(payload, ref, arrival_ns)``.

    ``on_packet`` is called in the event loop for every data packet, in arrival order; it must
    not block. Reconnects forever with capped exponential backoff; ``run()`` returns only when
    ``stop`` is set and never raises for network or protocol errors. ``max_clock_jump_s`` and
    ``jump_confirm_s`` (default: ``buffers.max_clock_jump_s``'s default, the model window) are the
    buffers' clock-jump rule, which the gap count follows.
    """

    def __init__(
        self,
        server: SeedLinkServer,
        settings: SeedLinkSettings,
        on_packet: PacketCallback,
        tracker: StateTracker,
        metrics: Metrics,
        rng: random.Random | None = None,
        *,
        max_clock_jump_s: float | None = None,
        jump_confirm_s: float | None = None,
    ) -> None:
        self.server = server
        self.settings = settings
        self.on_packet = on_packet
        self.tracker = tracker
        self.metrics = metrics
        self.name = f"{server.host}:{server.port}"
        self.requests = [parse_stream_spec(s) for s in server.streams]
        self._rng = rng or random.Random()
        self.connected = False
        self.connections = 0  # successful handshakes, for tests and logs
        self.packets = 0
        # per channel (SEED id): its time line (end of the newest data delivered, half a sample period)
        self._lines: dict[str, _ChannelLine] = {}
        jump_s = BufferSettings().max_clock_jump_s if max_clock_jump_s is None else max_clock_jump_s
        self._far_ns = round(jump_s * NS_PER_S)
        self._confirm_ns = round((DEFAULT_SPEC.window_s if jump_confirm_s is None else jump_confirm_s) * NS_PER_S)
        self._gap_log = RateLimitedLog(log, 60.0)
        # selectors that have delivered nothing yet: judged once a connection has been open for
        # data_timeout_s; reported once (log and gauge), the gauge back to 0 when data come
        self._matching: dict[str, tuple[int, ...]] = {}  # station key -> indices of matching requests
        self._request_delivered = [False] * len(self.requests)
        self._request_reported = [False] * len(self.requests)
        self._connected_since_s: float | None = None
        self._next_silent_check_s = 0.0
        self.metrics.seedlink_connected.labels(server=self.name).set(0)
        for req in self.requests:
            self.metrics.seedlink_selector_silent.labels(server=self.name, selector=req.label).set(0)

    # -- public ----------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """Connect, stream, reconnect until ``stop`` is set."""
        try:
            await self._run(stop)
        finally:
            self._set_connected(False)
            log.info("SeedLink %s stopped (%d packets, %d connections)", self.name, self.packets, self.connections)

    async def _run(self, stop: asyncio.Event) -> None:
        attempt = 0
        after_healthy = False  # the last connection that got anywhere delivered data
        outage_start_s = time.monotonic()
        while not stop.is_set():
            delivered_before = self.packets
            was_connected = self.connections
            try:
                await self._run_until(stop, self._session())
                return  # stop was set
            except _SessionEnd as end:
                reason, detail = end.reason, end.detail
            except Exception as exc:  # a bug must not end acquisition silently
                log.exception("SeedLink %s: unexpected error", self.name)
                reason, detail = "protocol_error", repr(exc)
            self._set_connected(False)
            if stop.is_set():
                return
            self.metrics.seedlink_reconnects.labels(server=self.name, reason=reason).inc()
            if self.packets > delivered_before:
                attempt = 0  # the connection was useful: start the backoff again
                after_healthy = True
                outage_start_s = time.monotonic()
            delay = self.reconnect_delay_s(attempt, time.monotonic() - outage_start_s, after_healthy)
            attempt += 1
            what = "disconnected" if self.connections > was_connected else "connection failed"
            log.warning("SeedLink %s %s (%s: %s); reconnecting in %.1f s", self.name, what, reason, detail, delay)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=delay)

    def backoff_s(self, attempt: int) -> float:
        """Delay before reconnect attempt ``attempt`` (0-based): min * 2**attempt, capped at max,
        with +-20 % jitter so many clients do not reconnect in step."""
        lo, hi = self.settings.reconnect_min_s, self.settings.reconnect_max_s
        base = min(hi, lo * (2.0 ** min(attempt, 30)))
        return max(0.0, min(hi, base * self._rng.uniform(0.8, 1.2)))

    def reconnect_delay_s(self, attempt: int, outage_s: float, after_healthy: bool) -> float:
        """The delay before the next attempt: ``backoff_s(attempt)``, but while a server that was
        delivering data has been away for less than ``reconnect_fast_for_s``, at most
        ``reconnect_fast_max_s`` (+-20 % jitter), so the client is back within a couple of seconds
        of a server restart instead of waiting out an 8, 16 or 32 s step."""
        delay = self.backoff_s(attempt)
        s = self.settings
        if after_healthy and outage_s < s.reconnect_fast_for_s:
            delay = min(delay, s.reconnect_fast_max_s * self._rng.uniform(0.8, 1.2))
        return delay

    def check_silent_selectors(self, now_s: float | None = None) -> list[str]:
        """Name the configured selections that have delivered nothing although a connection has
        been open for ``data_timeout_s`` (a station the server does not have: servers answer
        ``OK`` to it anyway). Each is logged once per process and its gauge set to 1; returns
        the newly reported labels."""
        now = time.monotonic() if now_s is None else now_s
        since = self._connected_since_s
        if since is None or now - since < self.settings.data_timeout_s * 0.999:
            return []
        new: list[str] = []
        for i, req in enumerate(self.requests):
            if self._request_delivered[i] or self._request_reported[i]:
                continue
            self._request_reported[i] = True
            self.metrics.seedlink_selector_silent.labels(server=self.name, selector=req.label).set(1)
            log.warning("SeedLink %s: stream selector %r has delivered no data in %.0f s of connection "
                        "(does the server have that station? check the name and the server's CAT / INFO STATIONS)",
                        self.name, req.label, now - since)
            new.append(req.label)
        return new

    # -- internals ---------------------------------------------------------------------------

    def _note_connected(self, now_s: float | None = None) -> None:
        """A handshake succeeded: connected, and the service is ready (its models load before the
        sources start, so the first connection is the last step of start-up)."""
        self.connections += 1
        self._set_connected(True)
        self._connected_since_s = time.monotonic() if now_s is None else now_s
        self.metrics.ready.set(1)

    async def _run_until(self, stop: asyncio.Event, coro: Any) -> None:
        """Run ``coro`` until it ends or ``stop`` is set (then cancel it and return)."""
        task = asyncio.ensure_future(coro)
        stopper = asyncio.ensure_future(stop.wait())
        try:
            await asyncio.wait({task, stopper}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopper.cancel()
            if not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, _SessionEnd, Exception):
                    await task
        if task.done() and not task.cancelled():
            exc = task.exception()
            if exc is not None:
                raise exc

    def _set_connected(self, value: bool) -> None:
        if value != self.connected:
            self.connected = value
        self.metrics.seedlink_connected.labels(server=self.name).set(1 if value else 0)

    def _build_client(self) -> Any:
        from seedlink_client import AsyncSeedLink, Protocol

        client = AsyncSeedLink(
            self.server.host,
            self.server.port,
            timeout=self.settings.connect_timeout_s,
            # v3 on purpose: the resume and gap rules here are written and tested for its 24-bit
            # per-station sequence numbers (every v4 server also speaks v3).
            protocol=Protocol.V3,
            tls=self.server.tls,
            # We enforce the data timeout ourselves; keep the library's out of the way.
            idle_timeout=max(self.settings.data_timeout_s * 10, 3600.0),
            clientname="coldstream",
        )
        return client

    def _add_streams(self, client: Any, server_id: str | None) -> None:
        """Add the stream requests with their resume points, once HELLO told who the server is.

        ringserver numbers packets across its ring and serves a connection from one reader: if
        the packet requested for any station checks out (it exists and starts in the second of
        the given time), the reader starts after the newest such packet, and a station further
        behind loses the data in between; after a kill -9 the ring is renumbered and an old
        number can check out by chance. So against it the resume is by time only (the library
        then sends ``DATA 0 <time>``: no packet 0 to check), which starts the reader at the
        oldest station's time, each station filtered from its own: repeats, never a gap."""
        by_time = _numbers_whole_ring(server_id)
        resume = self.tracker.resume_points(self.name)
        resumed: list[str] = []
        for key, st in sorted(resume.items()):
            req = self._request_for(key)
            if req is None:
                continue  # no longer configured
            # The library asks for seqnum + 1; pass seq so the wire carries (seq + 1) mod 2**24.
            seqnum = st.seq % SEQ_MODULUS
            client.add_stream(
                key,
                list(req.selectors) or None,
                seqnum=seqnum if seqnum < SEQ_MODULUS - 1 and not by_time else -1,
                timestamp=ns_to_iso(st.end_ns),
            )
            resumed.append(f"{key}@{st.seq:X}")
        for req in self.requests:
            if req.is_wildcard or req.station_pattern not in resume:
                client.add_stream(req.station_pattern, list(req.selectors) or None)
        if resumed:
            log.info("SeedLink %s: resuming %d stations from saved sequence numbers (%s%s)%s",
                     self.name, len(resumed), ", ".join(resumed[:5]), ", ..." if len(resumed) > 5 else "",
                     " by their times (the server numbers its whole ring)" if by_time else "")

    def _request_for(self, station_key: str) -> StreamRequest | None:
        exact = [r for r in self.requests if not r.is_wildcard and r.station_pattern == station_key]
        if exact:
            return exact[0]
        for r in self.requests:
            if r.matches(station_key):
                return r
        return None

    async def _session(self) -> None:
        from seedlink_client import SeedLinkError

        client = self._build_client()
        try:
            try:
                await client.connect()
                self._add_streams(client, client.server_id)
                await client.negotiate()
            except asyncio.CancelledError:
                raise
            except (SeedLinkError, OSError, TimeoutError) as exc:
                text = str(exc)
                if "connect" in text.lower() or isinstance(exc, OSError | TimeoutError) and not client.is_connected:
                    raise _SessionEnd("refused", text) from None
                raise _SessionEnd("protocol_error", text) from None
            self._note_connected()
            log.info("SeedLink %s connected (%s, protocol v%s, %d stream requests)",
                     self.name, client.server_id, client.protocol.value if client.protocol else "?",
                     len(client.streams))
            await self._stream(client)
        finally:
            with contextlib.suppress(Exception):
                await client.close()

    async def _stream(self, client: Any) -> None:
        from seedlink_client import SeedLinkError

        timeout_s = self.settings.data_timeout_s
        packets = client.collect(reconnect=False)
        try:
            while True:
                try:
                    async with asyncio.timeout(timeout_s):
                        pkt = await packets.__anext__()
                except StopAsyncIteration:
                    raise _SessionEnd("eof", "server ended the stream") from None
                except TimeoutError:
                    self.check_silent_selectors()
                    raise _SessionEnd("data_timeout", f"no packet for {timeout_s:g} s") from None
                except SeedLinkError as exc:
                    text = str(exc)
                    if "closed" in text or "recv failed" in text:
                        raise _SessionEnd("eof", text) from None
                    raise _SessionEnd("protocol_error", text) from None
                self._deliver(pkt, time.time_ns())
                now_s = time.monotonic()
                if now_s >= self._next_silent_check_s:
                    self._next_silent_check_s = now_s + 1.0
                    self.check_silent_selectors(now_s)
                # Let other tasks run between packets of a large backlog.
                if self.packets % 64 == 0:
                    await asyncio.sleep(0)
        finally:
            with contextlib.suppress(Exception):
                await packets.aclose()

    def _deliver(self, pkt: Any, arrival_ns: int) -> None:
        if pkt.seqnum is None or pkt.payload_format not in ("2", "3"):
            return
        header: PacketHeader | None
        try:
            header = header_from_record(pkt.record())
            key = header.station_key
            start_ns, end_ns = header.start_ns, header.end_ns
        except Exception:  # undecodable payload: hand it on (ingest counts it), ack with anything
            header = None
            key = pkt.station_id
            start_ns = end_ns = 0
        seq = int(pkt.seqnum)
        if header is not None and header.end_ns > header.start_ns:
            self._check_continuity(header)
        self._note_delivered(key)
        ref = PacketRef(server=self.name, station_key=key, sequence=seq)
        self.tracker.record(ref, start_ns, end_ns, header.seed_id.rsplit(".", 1)[0] if header is not None else None)
        self.packets += 1
        try:
            self.on_packet(pkt.payload, ref, arrival_ns)
        except Exception:
            log.exception("SeedLink %s: packet handler failed for %s seq %X", self.name, key, seq)

    def _check_continuity(self, h: PacketHeader) -> None:
        """Count a gap when this packet starts more than half a sample after the end of its
        channel's newest data (data time; sequence numbers say nothing across a ring). A packet far
        from the channel's time line moves it only once confirmed (module docstring)."""
        half_ns = round(NS_PER_S / (2 * h.sampling_rate_hz)) if h.sampling_rate_hz > 0 else 0
        line = self._lines.get(h.seed_id)
        if line is None:
            self._lines[h.seed_id] = _ChannelLine(h.end_ns, half_ns, JumpSpan())
            return
        start_ns = h.start_ns
        if start_ns >= line.end_ns + self._far_ns or h.end_ns <= line.end_ns - self._far_ns:
            # far from the time line: a stray header (the next packet comes back), or a jump whose
            # packets hang together until they span one window
            if line.far.add(start_ns, h.end_ns) < self._confirm_ns:
                return
            lo_ns, hi_ns = line.far.lo_ns, line.far.hi_ns
            start_ns, end_ns = (start_ns if lo_ns is None else lo_ns), (h.end_ns if hi_ns is None else hi_ns)
            line.far.clear()
            missing_ns = start_ns - line.end_ns  # > 0: the jump ahead is a hole; < 0: a jump back
            prev_half_ns, line.end_ns, line.half_ns = line.half_ns, end_ns, half_ns
        else:
            line.far.clear()  # on its time line: the far packets before were stray
            missing_ns = start_ns - line.end_ns
            prev_half_ns, line.end_ns, line.half_ns = line.half_ns, max(line.end_ns, h.end_ns), half_ns
        if missing_ns > max(half_ns, prev_half_ns):
            self.metrics.sequence_gaps.labels(station=self.metrics.station(h.station_key)).inc()
            self._gap_log.warning(h.seed_id, "SeedLink %s: %s data gap of %.3f s before %s", self.name, h.seed_id,
                                  missing_ns / NS_PER_S, ns_to_iso(start_ns))

    def _note_delivered(self, station_key: str) -> None:
        idx = self._matching.get(station_key)
        if idx is None:
            idx = tuple(i for i, r in enumerate(self.requests) if r.matches(station_key))
            if len(self._matching) < 100_000:  # bounded: bogus station codes cannot grow it
                self._matching[station_key] = idx
        for i in idx:
            if not self._request_delivered[i]:
                self._request_delivered[i] = True
                if self._request_reported[i]:
                    label = self.requests[i].label
                    self.metrics.seedlink_selector_silent.labels(server=self.name, selector=label).set(0)
                    log.info("SeedLink %s: stream selector %r now delivers data (%s)", self.name, label, station_key)


def _numbers_whole_ring(server_id: str | None) -> bool:
    """True for servers whose v3 sequence numbers count their whole ring (ringserver), so that a
    station's number says nothing about another's and a resume must go by time."""
    return server_id is not None and "ringserver" in server_id.lower()


def build_sources(
    settings: SeedLinkSettings,
    on_packet: PacketCallback,
    tracker: StateTracker,
    metrics: Metrics,
    *,
    max_clock_jump_s: float | None = None,
    jump_confirm_s: float | None = None,
) -> list[SeedLinkSource]:
    """One ``SeedLinkSource`` per configured server, sharing one tracker (one state file); the
    clock-jump rule of the gap count as ``SeedLinkSource`` takes it."""
    return [
        SeedLinkSource(server, settings, on_packet, tracker, metrics,
                       max_clock_jump_s=max_clock_jump_s, jump_confirm_s=jump_confirm_s)
        for server in settings.servers
    ]


