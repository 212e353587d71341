"""A SeedLink v3 replay server: serves miniSEED files to SeedLink clients in (scaled) real time.

``ReplayServer`` reads miniSEED files and directories, orders the records by time, numbers them
per station (``SL%06X`` on the wire, 24-bit, wrapping) and releases each record when its end
time is reached on a replay clock running at ``speed`` times real time (anchored so the first
record's end is "now"; ``speed=0`` or ``inf`` releases everything at once). Released records stay
in a per-station ring, so clients can resume with ``DATA n``, ask for a begin time with
``DATA n begin`` / ``TIME begin [end]`` (a begin before the server started gives everything from
that time on), or dial up with ``FETCH``. A client that gives no sequence number or time gets
the whole ring from its oldest packet (``live_start=True``: only packets released from then on, as
from a live server), so what a client receives does not depend on when it connected.

Commands: HELLO, CAT, CAPABILITIES, STATION, SELECT, DATA, FETCH, TIME, END, BYE, INFO (ID,
CAPABILITIES, STATIONS, STREAMS; XML in miniSEED log records framed ``SLINFO *``/``SLINFO  ``).
Lines may end in CR, LF or CRLF; sequence numbers may carry a ``0x`` prefix. Without STATION the
session is in uni-station mode and gets every station that its SELECT patterns allow.

Fault hooks for tests (plain attributes and methods, not protocol features): ``drop_connections()``,
``fail_after_packets`` (close each connection after that many data packets), ``stalled`` (send no
bytes while true), and ``ring_packets`` (how many released packets per station stay available).

Limitations: v3 only (no SLPROTO 4.0); no BATCH; no INFO GAPS/CONNECTIONS; looping (``loop_forever``)
shifts record start times by rewriting the fixed-header time, so it needs miniSEED 2 records
(which the server always serves: other inputs are re-packed into 512-byte records with ObsPy).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import math
import threading
import time
from collections.abc import Sequence
from concurrent.futures import Future
from pathlib import Path
from typing import Any
from xml.sax.saxutils import quoteattr

from streamer.records import NS_PER_S
from streamer.replay.protocol import INFO_CAPABILITIES, SOFTWARE, info_time, log_records
from streamer.replay.records import SEQ_MODULUS, ReplayError, ReplayRecord, StationArchive, load_records
from streamer.replay.session import Session

log = logging.getLogger(__name__)


class ReplayServer:
    """An asyncio SeedLink v3 server over miniSEED files (see the module docstring)."""

    def __init__(
        self,
        sources: Sequence[Path | str],
        host: str = "127.0.0.1",
        port: int = 0,
        speed: float = 1.0,
        loop_forever: bool = False,
        ring_packets: int | None = None,
        first_sequence: int = 0,
        organization: str = "coldstream replay",
        records: list[ReplayRecord] | None = None,
        live_start: bool = False,
        record_s: float | None = None,
        record_bytes: int | None = None,
    ) -> None:
        if speed < 0 or math.isnan(speed):
            raise ReplayError("speed must be >= 0 (0 or inf: as fast as possible)")
        self.fast = speed == 0 or math.isinf(speed)
        if loop_forever and self.fast:
            raise ReplayError("--loop needs a finite, positive --speed")
        if ring_packets is not None and ring_packets < 1:
            raise ReplayError(f"the ring must keep at least 1 packet per station, got {ring_packets}")
        self.host = host
        self._port = port
        self.speed = speed
        self.loop_forever = loop_forever
        self.ring_packets = ring_packets
        self.organization = organization
        # A client without a sequence number or time starts at the oldest packet in the ring (the
        # replay does not depend on when it connected), or with live_start at the next packet,
        # as a live server does.
        self.live_start = live_start
        all_records = records if records is not None else load_records(sources, record_s, record_bytes)
        if not all_records:
            raise ReplayError("nothing to serve")
        first_start = min(r.start_ns for r in all_records)
        last_end = max(r.end_ns for r in all_records)
        # Loop period: the archive's span rounded up to whole seconds (BTIME can shift by it exactly).
        self.period_ns = math.ceil((last_end - first_start) / NS_PER_S) * NS_PER_S if loop_forever else 0
        by_station: dict[str, list[ReplayRecord]] = {}
        for rec in all_records:
            by_station.setdefault(rec.station_key, []).append(rec)
        self.stations: dict[str, StationArchive] = {}
        for key, recs in sorted(by_station.items()):
            recs.sort(key=lambda r: (r.end_ns, r.start_ns, r.seed_id))
            self.stations[key] = StationArchive(key, recs, self.period_ns, first_sequence % SEQ_MODULUS)
        # Global release order: (end time, station, per-station index).
        self._order = sorted(
            (a.ends[k], key, k) for key, a in self.stations.items() for k in range(a.n)
        )
        self._released_global = 0
        self._server: asyncio.base_events.Server | None = None
        self._release_task: asyncio.Task[None] | None = None
        self._cond: asyncio.Condition | None = None  # created in start(), inside the loop
        self._sessions: set[Session] = set()
        self.started_ns = time.time_ns()
        self._anchor_mono_ns = 0
        self._anchor_data_ns = self._order[0][0]
        # fault hooks
        self.fail_after_packets: int | None = None
        self.stalled = False
        # counters for tests and logs
        self.connections = 0
        self.packets_sent = 0
        self.command_log: list[str] = []

    # -- lifecycle ------------------------------------------------------------------------------

    @property
    def port(self) -> int:
        return self._port

    @property
    def record_count(self) -> int:
        return len(self._order)

    async def start(self) -> None:
        self._cond = asyncio.Condition()
        self._server = await asyncio.start_server(self._handle, self.host, self._port, reuse_address=True)
        sock = self._server.sockets[0]
        self._port = int(sock.getsockname()[1])
        self._anchor_mono_ns = time.monotonic_ns()
        self._release_task = asyncio.create_task(self._release_loop(), name="replay-release")
        log.info(
            "SeedLink replay server on %s:%d: %d records, %d stations, speed %s%s",
            self.host, self._port, len(self._order), len(self.stations),
            "max" if self.fast else f"{self.speed:g}", ", looping" if self.loop_forever else "",
        )

    async def stop(self) -> None:
        if self._release_task is not None:
            self._release_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._release_task
        if self._server is not None:
            self._server.close()
        for s in list(self._sessions):
            s.abort()
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), timeout=2)
            self._server = None

    async def serve_forever(self, stop: asyncio.Event) -> None:
        await self.start()
        try:
            await stop.wait()
        finally:
            await self.stop()

    def drop_connections(self) -> int:
        """Abort every client connection (call in the server's loop); returns how many."""
        n = len(self._sessions)
        for s in list(self._sessions):
            s.abort()
        return n

    # -- release clock -------------------------------------------------------------------------

    def data_now_ns(self) -> int:
        """The replay clock: data time that corresponds to now."""
        if self.fast:
            return 2**62
        elapsed = time.monotonic_ns() - self._anchor_mono_ns
        return self._anchor_data_ns + int(elapsed * self.speed)

    def _release_time(self, g: int) -> int | None:
        n = len(self._order)
        loop, j = divmod(g, n)
        if loop and not self.loop_forever:
            return None
        return self._order[j][0] + loop * self.period_ns

    async def _release_loop(self) -> None:
        n = len(self._order)
        while True:
            t = self._release_time(self._released_global)
            if t is None:
                log.info("replay: all %d records released", n)
                return
            now = self.data_now_ns()
            if t > now:
                await asyncio.sleep(min((t - now) / self.speed / NS_PER_S, 1.0))
                continue
            count = 0
            while t is not None and t <= now and count < 5000:
                loop, j = divmod(self._released_global, n)
                _end, key, k = self._order[j]
                arch = self.stations[key]
                arch.released = loop * arch.n + k + 1
                self._released_global += 1
                count += 1
                t = self._release_time(self._released_global)
            if self._cond is not None:
                async with self._cond:
                    self._cond.notify_all()
            await asyncio.sleep(0)

    def oldest_available(self, arch: StationArchive) -> int:
        if self.ring_packets is None:
            return 0
        return max(0, arch.released - self.ring_packets)

    async def wait_released(self, timeout_s: float) -> None:
        if self._cond is None:
            return
        async with self._cond:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._cond.wait(), timeout=timeout_s)

    # -- sessions -------------------------------------------------------------------------------

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        session = Session(self, reader, writer)
        self._sessions.add(session)
        try:
            await session.run()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        except Exception:
            log.exception("replay: session %s failed", session.peer)
        finally:
            self._sessions.discard(session)
            session.abort()

    # -- INFO -----------------------------------------------------------------------------------

    def info_xml(self, level: str) -> str | None:
        level = level.upper()
        started = dt.datetime.fromtimestamp(self.started_ns / NS_PER_S, tz=dt.timezone.utc)
        head = (
            f'<?xml version="1.0"?>\n<seedlink software={quoteattr(SOFTWARE)} '
            f'organization={quoteattr(self.organization)} started="{started:%Y/%m/%d %H:%M:%S}.0000">\n'
        )
        body: list[str] = []
        if level == "ID":
            pass
        elif level == "CAPABILITIES":
            body = [f' <capability name="{c}"/>' for c in INFO_CAPABILITIES]
        elif level in ("STATIONS", "STREAMS"):
            for key, arch in self.stations.items():
                net, sta = key.split("_", 1)
                oldest = self.oldest_available(arch)
                begin_seq = arch.sequence(oldest)
                end_seq = arch.sequence(arch.released)
                attrs = (
                    f'name={quoteattr(sta)} network={quoteattr(net)} description="replay" '
                    f'begin_seq="{begin_seq:06X}" end_seq="{end_seq:06X}" stream_check="enabled"'
                )
                if level == "STATIONS":
                    body.append(f" <station {attrs}/>")
                    continue
                body.append(f" <station {attrs}>")
                streams: dict[tuple[str, str], list[int]] = {}
                # Each channel occurs within any n consecutive packets: look at the first n and
                # the last n available ones only (a looping replay's ring can be long).
                first = range(oldest, min(arch.released, oldest + arch.n))
                last = range(max(first.stop, arch.released - arch.n), arch.released)
                for i in (*first, *last):
                    rec = arch.record(i)
                    span = streams.setdefault((rec.location, rec.channel), [arch.start_ns(i), arch.end_ns(i)])
                    span[0] = min(span[0], arch.start_ns(i))
                    span[1] = max(span[1], arch.end_ns(i))
                for (loc, cha), (b, e) in sorted(streams.items()):
                    body.append(
                        f'  <stream location={quoteattr(loc)} seedname={quoteattr(cha)} type="D" '
                        f'begin_time="{info_time(b)}" end_time="{info_time(e)}" '
                        f'begin_recno="0" end_recno="0" gap_check="disabled" gap_treshold="0"/>'
                    )
                body.append(" </station>")
        else:
            return None
        return head + "\n".join(body) + ("\n" if body else "") + "</seedlink>\n"

    def info_packets(self, level: str) -> bytes | None:
        xml = self.info_xml(level)
        if xml is None:
            return None
        records = log_records(xml.encode("utf-8"))
        out = []
        for i, rec in enumerate(records):
            out.append((b"SLINFO *" if i < len(records) - 1 else b"SLINFO  ") + rec)
        return b"".join(out)


# ---------------------------------------------------------------------------------------------
# a server in a background thread (tests, embedding in synchronous code)
# ---------------------------------------------------------------------------------------------


class ReplayServerThread:
    """Runs a ``ReplayServer`` in its own event loop thread::

        with ReplayServerThread([path], speed=0) as srv:
            client.connect("127.0.0.1", srv.port)
            srv.drop_connections()
    """

    def __init__(self, sources: Sequence[Path | str], **kwargs: Any) -> None:
        self._sources = sources
        self._kwargs = kwargs
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="replay-server", daemon=True)
        self.server: ReplayServer | None = None

    def start(self) -> ReplayServerThread:
        self._thread.start()

        async def _start() -> ReplayServer:
            srv = ReplayServer(self._sources, **self._kwargs)
            await srv.start()
            return srv

        self.server = self.call(_start())
        return self

    def call(self, coro: Any, timeout_s: float = 30.0) -> Any:
        """Run a coroutine in the server's loop and return its result."""
        fut: Future[Any] = asyncio.run_coroutine_threadsafe(coro, self._loop)
        return fut.result(timeout=timeout_s)

    @property
    def port(self) -> int:
        assert self.server is not None  # noqa: S101 - start() sets it
        return self.server.port

    def drop_connections(self) -> int:
        async def _drop() -> int:
            assert self.server is not None  # noqa: S101
            return self.server.drop_connections()

        return int(self.call(_drop()))

    def stop(self) -> None:
        if self.server is not None and self._thread.is_alive():
            with contextlib.suppress(Exception):
                self.call(self.server.stop(), timeout_s=10)
        if self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=10)
        if not self._loop.is_closed() and not self._loop.is_running():
            self._loop.close()

    def __enter__(self) -> ReplayServerThread:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
