"""Signals, on a real `python -m webcall` process: SIGTERM stops gracefully (every client told "Server shutdown",
the recording finalized, the queued hook events posted, exit 0), a second SIGTERM or --shutdown-timeout exits
at once (exit 1), and SIGHUP reloads the TLS certificate without dropping a connected client."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import signal
import ssl
import sys
import time
from pathlib import Path

import aiohttp
import pytest

from tests.e2e.test_hooks_backend import Backend
from tests.e2e.test_workers import alive, children_of, wait_until
from tests.support import peers
from tests.support.recfile import read_recording
from tests.support.wcs_client import WcsClient
from webcall.hooks.policy import STREAM_STATUS_EVENT
from webcall.server.tls import self_signed

REPO = Path(__file__).resolve().parents[2]
SHUTDOWN = "Server shutdown"


class Proc:
    def __init__(self, proc: asyncio.subprocess.Process, http: int, tls: int | None) -> None:
        self.proc, self.url = proc, f"ws://127.0.0.1:{http}/"
        self.wss_url = f"wss://127.0.0.1:{tls}/" if tls else None
        self.tls_port = tls


async def spawn(tmp_path: Path, *args: str) -> Proc:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "webcall", "--host", "127.0.0.1", "--port", "0", "--media-host", "127.0.0.1",
        "--media-port", "0", "--media-tcp-port", "0", "--public-ip", "127.0.0.1", "--rest-port", "-1", "--records-dir",
        str(tmp_path / "records"), "--log-level", "warning", *args, cwd=REPO, stdout=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.stdout is not None
    line = (await asyncio.wait_for(proc.stdout.readline(), 20)).decode()
    http = re.search(r"http://localhost:(\d+)/", line)
    tls = re.search(r"https://localhost:(\d+)/", line)
    assert http, line
    return Proc(proc, int(http[1]), int(tls[1]) if tls else None)


@pytest.fixture
async def procs():
    started: list[Proc] = []
    yield started
    for p in started:
        if p.proc.returncode is None:
            p.proc.kill()
            await p.proc.wait()


@pytest.fixture
async def backend():
    b = Backend()
    await b.start()
    yield b
    b.release.set()
    await b.runner.cleanup()


@pytest.mark.parametrize("workers", ["1", "2"])
async def test_sigterm_tells_everyone_finalizes_and_posts_hooks(tmp_path, procs, backend, workers) -> None:
    server = await spawn(tmp_path, "--tls-port", "-1", "--workers", workers, "--placement", "spread",
                         "--hook-url", backend.url("allow"), "--shutdown-timeout", "8")
    procs.append(server)
    pub_client, play_client = await WcsClient.connect(server.url), await WcsClient.connect(server.url)
    publisher = await peers.publish(pub_client, "bye", width=320, height=240, extra_fields={"record": True})
    player = await peers.play(play_client, "bye")
    try:
        await publisher.wait_status("PUBLISHING", timeout=10)
        await player.wait_status("PLAYING", timeout=10)
        await asyncio.sleep(2.0)  # a couple of recorded fragments
        signalled = time.monotonic()
        server.proc.send_signal(signal.SIGTERM)
        unpublished = await publisher.wait_status("UNPUBLISHED", timeout=5)
        stopped = await player.wait_status("STOPPED", timeout=5)
        assert unpublished["data"][0]["info"] == SHUTDOWN, unpublished
        assert stopped["data"][0]["info"] == SHUTDOWN, stopped
        record_name = unpublished["data"][0].get("recordName")
        assert record_name, unpublished
        assert await asyncio.wait_for(server.proc.wait(), 10) == 0
        assert time.monotonic() - signalled < 8
        await pub_client.wait_closed(5)
        await play_client.wait_closed(5)
    finally:
        await publisher.close()
        await player.close()
        await pub_client.close()
        await play_client.close()
    rec = await asyncio.get_running_loop().run_in_executor(
        None, read_recording, str(tmp_path / "records" / record_name))
    assert rec.duration is not None and rec.duration >= 1.0, rec.duration  # finalized: the header has it
    statuses = [(body.get("published"), body.get("status"), body.get("info"))
                for app, method, body, _ in backend.requests if app == "allow" and method == STREAM_STATUS_EVENT]
    assert (True, "UNPUBLISHED", SHUTDOWN) in statuses and (False, "STOPPED", SHUTDOWN) in statuses, statuses


async def test_second_sigterm_exits_at_once(tmp_path, procs, backend) -> None:
    # Hook events that never get an answer keep the graceful stop waiting (up to the hook timeout).
    server = await spawn(tmp_path, "--tls-port", "-1", "--workers", "2", "--hook-url", backend.url("hang"),
                         "--hook-timeout", "20", "--shutdown-timeout", "30")
    procs.append(server)
    workers = [pid for pid, state in children_of(server.proc.pid) if state != "Z"]
    assert len(workers) == 2, workers
    client = await WcsClient.connect(server.url)
    late: WcsClient | None = None
    try:
        server.proc.send_signal(signal.SIGTERM)
        await asyncio.sleep(0.5)
        late = await WcsClient.open(server.url)  # stopping: a new session is told why and closed
        refused = await late.wait_for("fail", timeout=5)
        assert refused["data"][0]["info"] == SHUTDOWN, refused
        await late.wait_closed(5)
        assert server.proc.returncode is None  # still posting its hook events
        signalled = time.monotonic()
        server.proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(server.proc.wait(), 5) == 1
        assert time.monotonic() - signalled < 1.5
        await wait_until(lambda: not any(alive(pid) for pid in workers), 3.0, f"workers {workers} gone")
    finally:
        await client.close()
        if late is not None:
            await late.close()


async def test_shutdown_timeout_exits_at_the_deadline(tmp_path, procs, backend) -> None:
    server = await spawn(tmp_path, "--tls-port", "-1", "--workers", "1", "--hook-url", backend.url("hang"),
                         "--hook-timeout", "20", "--shutdown-timeout", "1.5")
    procs.append(server)
    client = await WcsClient.connect(server.url)
    try:
        signalled = time.monotonic()
        server.proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(server.proc.wait(), 6) == 1
        assert 1.3 <= time.monotonic() - signalled < 3.0
    finally:
        await client.close()


def served_certificate(port: int) -> str:
    return ssl.get_server_certificate(("127.0.0.1", port))


def same_cert(pem_a: str, pem_b: str) -> bool:
    return ssl.PEM_cert_to_DER_cert(pem_a) == ssl.PEM_cert_to_DER_cert(pem_b)


async def test_sighup_reloads_the_tls_certificate_without_dropping_clients(tmp_path, procs) -> None:
    first = self_signed(tmp_path / "a", ["127.0.0.1"])
    second = self_signed(tmp_path / "b", ["127.0.0.1"])
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    shutil.copy(first[0], cert)
    shutil.copy(first[1], key)
    server = await spawn(tmp_path, "--tls-port", "0", "--tls-cert", str(cert), "--tls-key", str(key),
                         "--workers", "1")
    procs.append(server)
    loop = asyncio.get_running_loop()
    assert same_cert(await loop.run_in_executor(None, served_certificate, server.tls_port), first[0].read_text())
    http = aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=False))
    client = await WcsClient.connect(server.wss_url, session=http)
    try:
        shutil.copy(second[0], cert)
        shutil.copy(second[1], key)
        server.proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 5
        while True:
            served = await loop.run_in_executor(None, served_certificate, server.tls_port)
            if same_cert(served, second[0].read_text()) or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.1)
        assert same_cert(served, second[0].read_text())
        await client.send("ping", [])  # the client connected before the reload is still served
        await client.wait_for("pong", timeout=5)
        assert not client.closed and server.proc.returncode is None
    finally:
        await client.close()
        await http.close()
