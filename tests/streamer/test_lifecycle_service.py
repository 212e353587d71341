"""The service's start and stop with real stages: the metrics port, start-up errors, stop requests."""

from __future__ import annotations

import asyncio
import socket
import threading
from pathlib import Path

import pytest
import torch

from models.denoiser import Denoiser
from streamer.config import Settings, load_settings
from streamer.redis_server import free_port
from streamer.service import Service, ServiceError, run_in_thread

pytestmark = [pytest.mark.integration, pytest.mark.timeout(30)]


class Identity(torch.nn.Module):
    downsampling_factor = 1

    def forward(self, x: torch.Tensor, t_frac: torch.Tensor, *_: object) -> torch.Tensor:
        return x


def _settings(tmp_path: Path, redis_url: str, metrics_port: int) -> Settings:
    # a SeedLink server nobody serves: the source keeps reconnecting, the rest of the service runs
    return load_settings(
        overrides={
            "seedlink": {"servers": [{"host": "127.0.0.1", "port": free_port()}],
                         "state_file": str(tmp_path / "seedlink.state")},
            "redis": {"url": redis_url, "stream_prefix": "lifecycle"},
            "metrics": {"port": metrics_port},
            "picker": {"enabled": False},
            "worker": {"batch_size": 2, "device": "cpu"},
            "service": {"drain_timeout_s": 5.0},
        },
        environ={},
    )


def _service(settings: Settings, metrics) -> Service:
    den = Denoiser(Identity(), n_train_steps=4, device="cpu", name="identity", version="test")
    return Service(settings, metrics, denoiser=den, load_picker_model=False, environ={})


def _refused(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1.0):
            return False
    except ConnectionRefusedError:
        return True


def test_metrics_port_is_released_when_the_service_stops(tmp_path, redis_url, metrics):
    svc = _service(_settings(tmp_path, redis_url, 0), metrics)
    thread = run_in_thread(svc)
    assert svc.ready.wait(20)
    port = svc.metrics_server.server_port
    assert not _refused(port)
    svc.request_stop()
    thread.join(15)
    assert not thread.is_alive() and svc.exit_code == 0
    # a restart in the same process (or the next unit start) must be able to bind it again
    assert _refused(port)


def test_metrics_port_in_use_stops_the_start_with_the_key_named(tmp_path, redis_url, metrics, caplog):
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        svc = _service(_settings(tmp_path, redis_url, port), metrics)
        svc.load_models()
        before = set(threading.enumerate())
        with pytest.raises(ServiceError, match="metrics.port"):
            asyncio.run(svc.run_async())
        started = [t.name for t in set(threading.enumerate()) - before if t.is_alive()]
        assert started == []  # no publisher, worker or output thread left behind
        assert svc.run() == 2  # coldstream run: a start-up error is exit status 2
        assert "metrics.port" in caplog.text


def test_stop_requested_from_another_thread_wakes_the_event_loop(metrics):
    svc = Service(load_settings(environ={}), metrics, environ={})
    loop = asyncio.new_event_loop()
    woke = threading.Event()

    async def wait_for_stop() -> None:
        svc._loop = asyncio.get_running_loop()
        svc._stop, svc._cancel = asyncio.Event(), asyncio.Event()
        started.set()
        await svc._stop.wait()  # nothing else on this loop would wake it
        woke.set()

    started = threading.Event()
    t = threading.Thread(target=loop.run_until_complete, args=(wait_for_stop(),), daemon=True)
    t.start()
    try:
        assert started.wait(5)
        svc.request_stop()  # from the main thread, as coldstream demo does
        assert woke.wait(2.0)
    finally:
        if not woke.is_set():
            loop.call_soon_threadsafe(svc._stop.set)
        t.join(5)
        loop.close()
