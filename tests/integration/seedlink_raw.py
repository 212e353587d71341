"""A bare SeedLink client on a socket (127.0.0.1), for wire-level checks of the replay server."""

from __future__ import annotations

import socket


class RawClient:
    """A bare SeedLink v3 client on a socket, for wire-level checks."""

    def __init__(self, port: int, timeout_s: float = 5.0) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout_s)
        self.buf = b""

    def send(self, text: str, end: str = "\r") -> None:
        self.sock.sendall(text.encode() + end.encode())

    def _fill(self, n: int) -> None:
        while len(self.buf) < n:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("closed")
            self.buf += chunk

    def line(self) -> str:
        while b"\r\n" not in self.buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("closed")
            self.buf += chunk
        line, _, self.buf = self.buf.partition(b"\r\n")
        return line.decode()

    def packet(self) -> tuple[str, bytes]:
        """(8-byte header as text, 512-byte payload); header 'END' for the end marker."""
        self._fill(3)
        if self.buf.startswith(b"END"):
            self.buf = self.buf[3:]
            return "END", b""
        self._fill(520)
        head, payload, self.buf = self.buf[:8], self.buf[8:520], self.buf[520:]
        return head.decode(), payload

    def close(self) -> None:
        self.sock.close()
