"""One SeedLink client connection to the replay server: the command loop and the data stream.

``Session`` reads command lines (CR, LF or CRLF), keeps the STATION/SELECT requests
(``StationRequest``), and streams released packets per ``Cursor`` (DATA, FETCH, TIME windows).

Limitations: no BATCH; no INFO GAPS/CONNECTIONS.
"""


from __future__ import annotations

import asyncio
import logging
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from streamer.replay.protocol import (
    CAPABILITIES,
    SOFTWARE,
    glob_match,
    parse_seedlink_time,
    parse_sequence,
    selection_accepts,
    valid_selector,
)
from streamer.replay.records import StationArchive

if TYPE_CHECKING:
    from streamer.replay.server import ReplayServer

log = logging.getLogger(__name__)


@dataclass
class StationRequest:
    """A STATION request in a session (patterns, selectors, start)."""

    net: str
    sta: str
    selectors: list[str] = field(default_factory=list)
    seq: int | None = None
    begin_ns: int | None = None
    end_ns: int | None = None
    mode: str = "DATA"  # DATA, FETCH or TIME
    explicit_start: bool = False

    @property
    def exact(self) -> bool:
        return not any(c in self.net + self.sta for c in "*?")

    def matches(self, arch: StationArchive) -> bool:
        net, sta = arch.key.split("_", 1)
        return glob_match(self.net, net) and glob_match(self.sta, sta)


@dataclass
class Cursor:
    arch: StationArchive
    next: int
    selectors: list[str]
    end_ns: int | None
    done: bool = False


class Session:
    """One client connection: the command phase, then streaming."""

    MAX_LINE_BYTES = 4096

    def __init__(self, server: ReplayServer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.server = server
        self.reader = reader
        self.writer = writer
        peer = writer.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)
        self.entries: list[StationRequest] = []
        self.current: StationRequest | None = None
        self.uni_selectors: list[str] = []
        self.multistation = False  # a STATION command was seen (even a rejected one)
        self.extreply = False
        self.streaming = False
        self.sender: asyncio.Task[None] | None = None
        self.sent = 0
        self.closed = False

    def abort(self) -> None:
        self.closed = True
        if self.sender is not None and not self.sender.done():
            self.sender.cancel()
        transport = self.writer.transport
        if not transport.is_closing():
            transport.abort()

    # -- I/O ------------------------------------------------------------------------------------

    async def _lines(self) -> Any:
        buf = b""
        while True:
            chunk = await self.reader.read(4096)
            if not chunk:
                return
            buf += chunk
            parts = re.split(rb"\r\n|\r|\n", buf)
            buf = parts.pop()
            if len(buf) > self.MAX_LINE_BYTES:
                raise ConnectionError("command line too long")
            for line in parts:
                text = line.decode("ascii", errors="replace").strip()
                if text:
                    yield text

    def _write(self, data: bytes) -> None:
        if not self.closed:
            self.writer.write(data)

    def _ok(self) -> None:
        self._write(b"OK\r\n")

    def _error(self, message: str) -> None:
        if self.extreply:
            self._write(b"ERROR\r" + message.encode("ascii", "replace") + b"\r\n")
        else:
            self._write(b"ERROR\r\n")

    async def run(self) -> None:
        async for line in self._lines():
            self.server.command_log.append(line)
            tokens = line.split()
            cmd, args = tokens[0].upper(), tokens[1:]
            if self.streaming:
                if cmd == "INFO" and args:
                    packets = self.server.info_packets(args[0])
                    if packets is not None:
                        self._write(packets)
                elif cmd == "BYE":
                    return
                continue
            if not await self._command(cmd, args):
                return
            await self.writer.drain()

    async def _command(self, cmd: str, args: list[str]) -> bool:
        """Handle one command-phase command; False to close the connection."""
        srv = self.server
        if cmd == "HELLO":
            self._write(f"{SOFTWARE} :: {' '.join(CAPABILITIES)}\r\n{srv.organization}\r\n".encode())
        elif cmd == "BYE":
            return False
        elif cmd == "CAPABILITIES":
            # as ringserver: OK to any list (clients announce SLPROTO:4.0, CAP, ...); only EXTREPLY changes anything
            self.extreply = self.extreply or "EXTREPLY" in {a.upper() for a in args}
            self._ok()
        elif cmd == "CAT":
            lines = "".join(f"{k.split('_', 1)[0]:<2} {k.split('_', 1)[1]:<5} replay\r\n" for k in srv.stations)
            self._write(lines.encode() + b"END")
        elif cmd == "INFO":
            packets = srv.info_packets(args[0]) if args else None
            if packets is None:
                self._error("unsupported INFO level")
            else:
                self._write(packets)
        elif cmd == "STATION":
            self._station(args)
        elif cmd == "SELECT":
            self._select(args)
        elif cmd in ("DATA", "FETCH", "TIME"):
            if not self._start_request(cmd, args):
                return True
            if self.current is None:  # uni-station mode: data start now
                await self._begin_streaming()
        elif cmd == "END":
            if not self.entries:
                self._error("END without STATION")
            else:
                await self._begin_streaming()
        else:
            self._error(f"unknown command {cmd}")
        return True

    def _station(self, args: list[str]) -> None:
        if not 1 <= len(args) <= 2:
            self._error("STATION needs station [network]")
            return
        self.multistation = True
        sta = args[0].upper()
        net = args[1].upper() if len(args) == 2 else "*"
        entry = StationRequest(net=net, sta=sta)
        if not any(entry.matches(a) for a in self.server.stations.values()):
            self.current = None
            self._error(f"unknown station {net}_{sta}")
            return
        self.entries.append(entry)
        self.current = entry
        self._ok()

    def _select(self, args: list[str]) -> None:
        if self.current is None and self.multistation:
            self._error("SELECT after a rejected STATION")
            return
        target = self.current.selectors if self.current is not None else self.uni_selectors
        if not args:
            target.clear()
            self._ok()
            return
        if not all(valid_selector(a) for a in args):
            self._error("bad selector")
            return
        target.extend(a.upper() for a in args)
        self._ok()

    def _start_request(self, cmd: str, args: list[str]) -> bool:
        entry = self.current
        if entry is None and self.multistation:
            self._error(f"{cmd} after a rejected STATION")
            return False
        seq: int | None = None
        begin_ns: int | None = None
        end_ns: int | None = None
        try:
            if cmd == "TIME":
                if not 1 <= len(args) <= 2:
                    raise ValueError("TIME needs begin [end]")
                begin_ns = parse_seedlink_time(args[0])
                end_ns = parse_seedlink_time(args[1]) if len(args) == 2 else None
            else:
                if len(args) > 2:
                    raise ValueError(f"{cmd} takes [seq [begin]]")
                seq = parse_sequence(args[0]) if args else None
                begin_ns = parse_seedlink_time(args[1]) if len(args) == 2 else None
        except ValueError as exc:
            # In uni-station mode too: the client waits for data or an ERROR, and a rejected
            # request must not stay behind to shadow the next one.
            self._error(str(exc))
            return False
        if entry is None:
            entry = StationRequest(net="*", sta="*", selectors=self.uni_selectors)
            self.entries.append(entry)
        entry.seq, entry.begin_ns, entry.end_ns = seq, begin_ns, end_ns
        entry.mode = cmd
        entry.explicit_start = True
        if self.current is not None:
            self._ok()
        return True

    # -- streaming ------------------------------------------------------------------------------

    def _cursors(self) -> list[Cursor]:
        srv = self.server
        cursors = []
        for arch in srv.stations.values():
            matching = [e for e in self.entries if e.matches(arch)]
            if not matching:
                continue
            exact = [e for e in matching if e.exact]
            entry = (exact or matching)[0]
            cursors.append(Cursor(arch, self._start_index(entry, arch), list(entry.selectors), entry.end_ns))
        return cursors

    def _start_index(self, entry: StationRequest, arch: StationArchive) -> int:
        srv = self.server
        oldest = srv.oldest_available(arch)
        if entry.seq is not None:
            i = arch.index_of_sequence(entry.seq, oldest)
            if i is not None:
                return i
            log.info("replay: %s asked %s for sequence %06X, no longer available", self.peer, arch.key, entry.seq)
            if entry.begin_ns is None:
                return oldest
        if entry.begin_ns is not None:
            return arch.first_index_ending_after(entry.begin_ns, oldest, srv.loop_forever)
        # No start given: a live server sends only what comes next; a replay hands out its ring.
        return arch.released if srv.live_start else oldest

    async def _begin_streaming(self) -> None:
        self.streaming = True
        modes = {e.mode for e in self.entries}
        cursors = self._cursors()
        dialup = "FETCH" in modes
        windowed = all(e.mode == "TIME" and e.end_ns is not None for e in self.entries)
        log.info("replay: %s streaming %d stations", self.peer, len(cursors))
        self.sender = asyncio.create_task(self._send_loop(cursors, dialup, windowed))

    async def _send_loop(self, cursors: list[Cursor], dialup: bool, windowed: bool) -> None:
        srv = self.server
        try:
            while not self.closed:
                if srv.stalled:
                    await asyncio.sleep(0.02)
                    continue
                batch: list[tuple[int, str, int, Cursor]] = []
                for c in cursors:
                    if c.done:
                        continue
                    c.next = max(c.next, srv.oldest_available(c.arch))
                    stop = min(c.arch.released, c.next + 2000)
                    for i in range(c.next, stop):
                        batch.append((c.arch.end_ns(i), c.arch.key, i, c))
                batch.sort(key=lambda x: (x[0], x[1], x[2]))
                for n, (_end, _key, i, c) in enumerate(batch):
                    if n and n % 256 == 0:
                        # Skipped packets (selectors, windows) send nothing, so drain() would never
                        # yield: let other sessions and the release clock run during a long scan.
                        await asyncio.sleep(0)
                    if srv.stalled or self.closed:
                        break
                    if i != c.next:
                        continue
                    c.next = i + 1
                    arch = c.arch
                    if c.end_ns is not None and arch.start_ns(i) >= c.end_ns:
                        continue
                    rec = arch.record(i)
                    if not selection_accepts(c.selectors, rec.location, rec.channel):
                        continue
                    self._write(b"SL%06X" % arch.sequence(i) + arch.payload(i))
                    self.sent += 1
                    srv.packets_sent += 1
                    if srv.fail_after_packets is not None and self.sent >= srv.fail_after_packets:
                        # A clean close (FIN after the buffered packets), as a server restart gives.
                        log.info("replay: closing %s after %d packets (fault hook)", self.peer, self.sent)
                        self.closed = True
                        self.writer.close()
                        return
                    if self.sent % 64 == 0:
                        await self.writer.drain()
                await self.writer.drain()
                for c in cursors:
                    if c.end_ns is not None and not c.done and c.arch.window_finished(c.next, c.end_ns, srv.loop_forever):
                        c.done = True
                caught_up = all(c.done or c.next >= c.arch.released for c in cursors)
                if (dialup and caught_up) or (windowed and all(c.done for c in cursors)):
                    self._write(b"END")
                    await self.writer.drain()
                    return
                if caught_up:
                    await srv.wait_released(0.5)
        except (ConnectionError, asyncio.CancelledError):
            return
