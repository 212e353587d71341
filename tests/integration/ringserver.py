"""EarthScope's ringserver (the reference SeedLink server) for the integration tests.

``ringserver_binary()`` builds ringserver from the vendored tarball in the shared folder
(``$COLDSTREAM_SHARED_DIR/vendor/ringserver-*.tar.gz``) into the repository's ignored
``build/ringserver/<sha256 of the tarball>/`` and reuses that build while the tarball is unchanged;
it skips the test (with the reason) where there is no tarball or no C compiler. The shared folder is
only read.

``RingServer`` runs one server on a free loopback port: ``AcceptIP 127.0.0.1``, a small ring in a
test folder, and a miniSEED scan directory (``MSeedScan``) to feed it; ``ScanFeeder`` writes
512-byte records into that directory in (scaled) real time, by record end time.

Limitations: ringserver binds all interfaces (its ``ListenPort`` takes no address); ``AcceptIP``
refuses every client but loopback, and the tests connect only to 127.0.0.1. The scan directory is
rescanned about once a second, so a record reaches the ring up to ~1 s after it is written.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import shutil
import signal
import socket
import subprocess
import tarfile
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
BUILD_ROOT = REPO / "build" / "ringserver"
BUILD_TIMEOUT_S = 600


def vendored_tarball() -> Path | None:
    shared = os.environ.get("COLDSTREAM_SHARED_DIR")
    if not shared:
        return None
    found = sorted(Path(shared, "vendor").glob("ringserver-*.tar.gz"))
    return found[-1] if found else None


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _compiler() -> str | None:
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    return cc if cc and shutil.which("make") else None


def ringserver_binary() -> Path:
    """The ringserver executable, built once per tarball; ``pytest.skip`` where it cannot be."""
    tarball = vendored_tarball()
    if tarball is None:
        pytest.skip("no ringserver tarball: COLDSTREAM_SHARED_DIR unset or without vendor/ringserver-*.tar.gz")
    cc = _compiler()
    if cc is None:
        pytest.skip("no C compiler or make: cannot build ringserver")
    out_dir = BUILD_ROOT / _sha256(tarball)[:16]
    binary = out_dir / "ringserver"
    if binary.is_file() and os.access(binary, os.X_OK):
        return binary
    BUILD_ROOT.mkdir(parents=True, exist_ok=True)
    with (BUILD_ROOT / ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one build at a time; the second process reuses it
        if binary.is_file():
            return binary
        with tempfile.TemporaryDirectory(dir=BUILD_ROOT, prefix=".build-") as work:
            with tarfile.open(tarball) as tf:
                try:
                    tf.extractall(work, filter="data")
                except TypeError:  # Python before 3.10.12 / 3.11.4: no extraction filters
                    tf.extractall(work)  # noqa: S202 (our own vendored tarball)
            (src,) = [p for p in Path(work).iterdir() if (p / "Makefile").is_file()]
            jobs = str(max(1, min(4, os.cpu_count() or 1)))
            proc = subprocess.run(
                ["make", "-C", str(src), f"-j{jobs}", f"CC={cc}"],
                capture_output=True, text=True, timeout=BUILD_TIMEOUT_S,
            )
            if proc.returncode != 0 or not (src / "ringserver").is_file():
                raise RuntimeError(f"ringserver build failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
            out_dir.mkdir(parents=True, exist_ok=True)
            tmp = out_dir / ".ringserver.tmp"
            shutil.copy2(src / "ringserver", tmp)
            os.replace(tmp, binary)  # atomic: a half-copied binary is never used
    return binary


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RingServer:
    """One ringserver process: SeedLink on ``port`` (loopback clients only), ring in ``workdir/ring``,
    fed from ``workdir/scan``. ``start()`` waits until the port accepts connections."""

    def __init__(self, binary: Path, workdir: Path, port: int | None = None, ring_size: str = "32M") -> None:
        self.binary = binary.resolve()
        self.workdir = workdir
        self.port = port or free_port()
        self.ring_dir = workdir / "ring"
        self.scan_dir = workdir / "scan"
        self.config = workdir / "ring.conf"
        self.log_path = workdir / "ringserver.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0
        for d in (self.ring_dir, self.scan_dir):
            d.mkdir(parents=True, exist_ok=True)
        self.config.write_text(
            f"RingDirectory {self.ring_dir}\n"
            f"RingSize {ring_size}\n"
            f"ListenPort {self.port} SeedLink IPv4\n"
            "AcceptIP 127.0.0.1\n"
            f"MSeedScan {self.scan_dir}/ StateFile={workdir / 'scan.state'}\n"
            'ServerID "coldstream test ring"\n'
        )

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, timeout_s: float = 20.0) -> None:
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [str(self.binary), "-STDERR", "-v", str(self.config)], stdout=log, stderr=log, cwd=self.workdir
        )
        log.close()
        self.starts += 1
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"ringserver exited ({self.proc.returncode}): {self.log_tail()}")
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                return
            time.sleep(0.05)
        raise RuntimeError(f"ringserver did not listen on {self.port}: {self.log_tail()}")

    def stop(self, sig: int = signal.SIGTERM, timeout_s: float = 20.0) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(sig)
        try:
            self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def kill(self) -> None:
        self.stop(signal.SIGKILL)

    def log_tail(self, n: int = 3000) -> str:
        return self.log_path.read_text(errors="replace")[-n:] if self.log_path.exists() else ""

    def __enter__(self) -> RingServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


class ScanFeeder:
    """Writes the 512-byte records of miniSEED 2 files into the scan directory, one file per channel,
    releasing each record when its end time is reached on a clock running at ``speed`` x real time
    (anchored at the first record's end; ``speed=0``: everything at once). Runs in a thread."""

    def __init__(self, records: list[tuple[int, str, bytes]], scan_dir: Path, speed: float = 1.0) -> None:
        self.records = sorted(records, key=lambda r: r[0])  # (end_ns, channel file name, record)
        self.scan_dir = scan_dir
        self.speed = speed
        self.written = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="scan-feeder", daemon=True)

    def start(self) -> ScanFeeder:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)

    def wait(self, timeout_s: float | None = None) -> bool:
        """Wait until every record is written; True when done."""
        self._thread.join(timeout_s)
        return self.done

    @property
    def done(self) -> bool:
        return self.written == len(self.records)

    def _run(self) -> None:
        if not self.records:
            return
        t0_ns = self.records[0][0]
        wall0 = time.monotonic()
        files: dict[str, object] = {}
        try:
            for end_ns, name, rec in self.records:
                if self.speed > 0:
                    due = wall0 + (end_ns - t0_ns) / 1e9 / self.speed
                    while not self._stop.is_set() and time.monotonic() < due:
                        time.sleep(max(0.0, min(0.05, due - time.monotonic())))  # due may pass meanwhile
                if self._stop.is_set():
                    return
                fh = files.get(name)
                if fh is None:
                    fh = files[name] = (self.scan_dir / name).open("ab", buffering=0)
                fh.write(rec)  # type: ignore[attr-defined]
                self.written += 1
        finally:
            for fh in files.values():
                fh.close()  # type: ignore[attr-defined]


def mseed_records(paths: list[Path], start_ns: int | None = None, end_ns: int | None = None) -> list[tuple[int, str, bytes]]:
    """``(end_ns, NET.STA.LOC.CHA.mseed, record)`` for every 512-byte record of ``paths`` whose data
    lie in ``[start_ns, end_ns)`` (records are kept whole: one that starts before ``end_ns`` is in)."""
    from pymseed import MS3Record

    out: list[tuple[int, str, bytes]] = []
    for path in paths:
        data = path.read_bytes()
        for off in range(0, len(data) - 511, 512):
            rec = data[off:off + 512]
            msr = MS3Record.parse(rec, unpack_data=False)
            t0 = int(msr.starttime)
            t1 = t0 + round(msr.samplecnt * 1e9 / msr.samprate)
            if (start_ns is not None and t0 < start_ns) or (end_ns is not None and t0 >= end_ns):
                continue
            from pymseed import sourceid2nslc

            net, sta, loc, cha = sourceid2nslc(msr.sourceid)
            out.append((t1, f"{net}.{sta}.{loc}.{cha}.mseed", rec))
    return out


@contextlib.contextmanager
def running_ringserver(workdir: Path) -> Iterator[RingServer]:
    server = RingServer(ringserver_binary(), workdir)
    server.start()
    try:
        yield server
    finally:
        server.stop()
