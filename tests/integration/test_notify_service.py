"""``coldstream run`` as systemd sees it: a subprocess under a fake NOTIFY_SOCKET (this test plays
systemd's side) receives EXTEND_TIMEOUT_USEC while loading, READY=1, progress-gated WATCHDOG=1
pings with STATUS lines, and STOPPING=1 after SIGTERM, then exits 0 after draining."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from pipeline_helpers import weights_path
from streamer.demo_data.build import load_catalogue, recording_path
from streamer.replay import ReplayServerThread

pytestmark = [pytest.mark.integration, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def notify_socket() -> Iterator[tuple[socket.socket, str]]:
    d = tempfile.mkdtemp(prefix="csn-")  # AF_UNIX paths are limited to 108 bytes
    path = os.path.join(d, "notify")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    try:
        yield sock, path
    finally:
        sock.close()
        shutil.rmtree(d, ignore_errors=True)


def receive_until(sock: socket.socket, key: str, timeout_s: float, log: list[dict[str, str]]) -> dict[str, str]:
    """Collect datagrams into ``log`` until one carries ``key``; return that one."""
    deadline = time.monotonic() + timeout_s
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(f"no {key} within {timeout_s} s; got {log}")
        sock.settimeout(left)
        try:
            data = sock.recv(4096).decode()
        except TimeoutError:
            continue
        msg = dict(line.split("=", 1) for line in data.split("\n") if line)
        log.append(msg)
        if key in msg:
            return msg


def write_config(tmp_path: Path, replay_port: int, redis_url: str, prefix: str, weights: Path | None) -> Path:
    stations = [s.replace(".", "_").rstrip("_") for s in load_catalogue()["stations"]]
    lines = [
        "[seedlink]",
        f'state_file = "{tmp_path / "seedlink.state"}"',
        "reconnect_min_s = 0.2",
        "reconnect_max_s = 1.0",
        "[[seedlink.servers]]",
        'host = "127.0.0.1"',
        f"port = {replay_port}",
        f"streams = {stations!r}".replace("'", '"'),
        "[worker]",
        'device = "cpu"',
        "max_steps = 2",
        "batch_size = 16",
        "torch_threads = 1",
        "[picker]",
        "enabled = false",
        "[redis]",
        f'url = "{redis_url}"',
        f'stream_prefix = "{prefix}"',
        "[metrics]",
        "enabled = false",
        "[service]",
        "drain_timeout_s = 30.0",
        "watchdog_stall_s = 60.0",
    ]
    if weights is not None:
        lines += ["[model]", f'weights = "{weights}"']
    path = tmp_path / "coldstream.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_run_under_systemd_notify(tmp_path: Path, notify_socket, redis_url: str, redis_key_prefix: str) -> None:
    sock, sock_path = notify_socket
    weights = weights_path(tmp_path)
    with ReplayServerThread([recording_path()], speed=0) as replay:
        config = write_config(tmp_path, replay.port, redis_url, redis_key_prefix, weights)
        env = {k: v for k, v in os.environ.items() if not k.startswith(("COLDSTREAM_", "NOTIFY_", "WATCHDOG_"))}
        env.update(NOTIFY_SOCKET=sock_path, WATCHDOG_USEC="1000000", PYTHONUNBUFFERED="1")
        proc = subprocess.Popen(
            [sys.executable, "-m", "streamer.cli", "run", "--config", str(config)],
            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        )
        log: list[dict[str, str]] = []
        try:
            ready = receive_until(sock, "READY", 90, log)
            assert ready["READY"] == "1"
            # the start job was extended while the models loaded, before READY
            first_ready = next(i for i, m in enumerate(log) if "READY" in m)
            assert any("EXTEND_TIMEOUT_USEC" in m and int(m["EXTEND_TIMEOUT_USEC"]) > 0 for m in log[:first_ready])
            # the watchdog is pinged (every 0.5 s here) while the stages are healthy, with a status line
            ping = receive_until(sock, "WATCHDOG", 10, log)
            assert ping["WATCHDOG"] == "1"
            assert "stations=" in ping.get("STATUS", ""), ping
            receive_until(sock, "WATCHDOG", 5, log)

            proc.send_signal(signal.SIGTERM)
            stopping = receive_until(sock, "STOPPING", 10, log)
            assert stopping["STOPPING"] == "1"
            try:
                out, _ = proc.communicate(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                out, _ = proc.communicate()
                raise AssertionError("no exit within 60 s of SIGTERM:\n" + out.decode(errors="replace")[-4000:]) from None
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    sock.setblocking(False)
    while True:  # whatever arrived after STOPPING
        try:
            data = sock.recv(4096).decode()
        except BlockingIOError:
            break
        log.append(dict(line.split("=", 1) for line in data.split("\n") if line))
    text = out.decode(errors="replace")
    assert proc.returncode == 0, text[-3000:]
    assert "stop requested: draining" in text
    # after STOPPING no more watchdog pings
    after = log[next(i for i, m in enumerate(log) if "STOPPING" in m) + 1:]
    assert not any("WATCHDOG" in m for m in after), after


def test_watchdog_pings_stop_while_ingest_stalls_and_resume(tmp_path: Path, notify_socket, redis_url: str,
                                                            redis_key_prefix: str) -> None:
    """A real Service whose SeedLink server goes silent: pings are withheld once ingest has made no
    progress for ``service.watchdog_stall_s`` (systemd would restart it), and resume with the data."""
    from pipeline_helpers import make_settings
    from streamer.metrics import Metrics
    from streamer.service import Service, run_in_thread

    sock, sock_path = notify_socket
    metrics = Metrics()
    with ReplayServerThread([recording_path()], speed=1.0, loop_forever=True) as replay:
        settings = make_settings(tmp_path, redis_url, redis_key_prefix, replay.port, weights_path(tmp_path), None,
                                 service={"watchdog_stall_s": 5.0})
        environ = {"NOTIFY_SOCKET": sock_path, "WATCHDOG_USEC": "400000", "WATCHDOG_PID": str(os.getpid())}
        service = Service(settings, metrics, environ=environ)
        service.load_models()
        thread = run_in_thread(service)
        log: list[dict[str, str]] = []
        try:
            receive_until(sock, "READY", 60, log)
            receive_until(sock, "WATCHDOG", 5, log)  # healthy: data flowing

            replay.server.stalled = True  # the server keeps the connection but sends nothing
            status = receive_until(sock, "STATUS", 15, log)
            while status.get("STATUS") != "stalled: ingest":
                assert "WATCHDOG" in status, status
                status = receive_until(sock, "STATUS", 15, log)
            assert "WATCHDOG" not in status
            # no ping while stalled
            quiet: list[dict[str, str]] = []
            sock.settimeout(1.5)
            try:
                while True:
                    data = sock.recv(4096).decode()
                    quiet.append(dict(line.split("=", 1) for line in data.split("\n") if line))
            except TimeoutError:
                pass
            assert not any("WATCHDOG" in m for m in quiet), quiet

            replay.server.stalled = False  # data again: pings resume
            ping = receive_until(sock, "WATCHDOG", 10, log)
            assert ping["WATCHDOG"] == "1"
        finally:
            service.request_stop()
            thread.join(60)
    assert service.exit_code == 0
    assert (metrics.registry.get_sample_value("coldstream_watchdog_pings_total") or 0) >= 2
