"""A real cluster on 127.0.0.1 for the tests: Debian's redis-server on a free port (no persistence) and webcall
nodes as separate processes, each with its own ports, joined through it (--cluster-redis)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import socket
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.support.wcs_client import WcsClient

REPO = Path(__file__).resolve().parents[2]
REDIS = shutil.which("redis-server") or "/usr/bin/redis-server"
TTL = 1.5  # --cluster-ttl for the tests: a dead node is gone within 1.5 s, a silent relay ends after 1.5 s


# Every redis-server and node process started here and not stopped yet: `reap()` kills what a failed test left
# (a node that started while its sibling in the same gather() did not), so later tests count no stray children.
_RUNNING: set[asyncio.subprocess.Process] = set()


def reap() -> int:
    """Kill every process started here that is still running; how many there were."""
    left = [proc for proc in _RUNNING if proc.returncode is None]
    for proc in left:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGKILL)
        with contextlib.suppress(ChildProcessError, OSError):
            os.waitpid(proc.pid, 0)
    _RUNNING.clear()
    return len(left)


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RedisServer:
    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self.proc: asyncio.subprocess.Process | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    async def start(self) -> None:
        if not os.path.exists(REDIS):
            raise RuntimeError("redis-server is not installed: `make deps-test` installs it (Debian redis-server)")
        self.proc = await asyncio.create_subprocess_exec(
            REDIS, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
            "--protected-mode", "no", stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)
        _RUNNING.add(self.proc)
        deadline = time.monotonic() + 10
        while True:
            try:
                reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
                writer.write(b"PING\r\n")
                await writer.drain()
                line = await asyncio.wait_for(reader.readline(), 2)
                writer.close()
                if line.startswith(b"+PONG"):
                    return
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("redis-server did not start")
            await asyncio.sleep(0.05)

    async def stop(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.kill()
            await self.proc.wait()
        _RUNNING.discard(self.proc)
        self.proc = None


@dataclass
class Node:
    name: str
    proc: asyncio.subprocess.Process
    http: int
    rest: int
    log_path: Path

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.http}/"

    async def client(self) -> WcsClient:
        return await WcsClient.connect(self.url)

    async def rest_call(self, path: str, body: Any = None) -> tuple[int, Any]:
        return await asyncio.to_thread(_http, f"http://127.0.0.1:{self.rest}{path}", body)

    async def get(self, path: str) -> tuple[int, Any]:
        return await asyncio.to_thread(_http, f"http://127.0.0.1:{self.http}{path}", None)

    async def kill(self) -> None:
        if self.proc.returncode is None:
            self.proc.send_signal(signal.SIGKILL)
            await self.proc.wait()
        _RUNNING.discard(self.proc)

    async def stop(self) -> None:
        if self.proc.returncode is None:
            self.proc.terminate()
            try:
                await asyncio.wait_for(self.proc.wait(), 10)
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()
        _RUNNING.discard(self.proc)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


def _http(url: str, body: Any) -> tuple[int, Any]:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method="POST" if data is not None else "GET",
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, json.loads(resp.read() or b"null")
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"null")


START_ATTEMPTS = 3


async def start_node(name: str, redis_url: str, tmp: Path, *args: str, env: dict[str, str] | None = None) -> Node:
    """A node on free ports, up once /health answers. A free port can be taken by someone else before the node
    binds it (seen in CI: "address already in use"); then it starts again on other ports."""
    for attempt in range(START_ATTEMPTS):
        node = await _launch(name, redis_url, tmp, args, env)
        deadline = time.monotonic() + 20
        while True:
            try:
                status, _ = await node.rest_call("/health")
                if status == 200:
                    return node
            except OSError:
                pass
            if node.proc.returncode is not None or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.1)
        await node.kill()
        if "address already in use" not in node.log() or attempt == START_ATTEMPTS - 1:
            raise RuntimeError(f"node {name} did not start:\n{node.log()[-3000:]}")
    raise AssertionError("unreachable")


async def _launch(name: str, redis_url: str, tmp: Path, args: tuple[str, ...], env: dict[str, str] | None) -> Node:
    http, rest = free_port(), free_port()
    log_path = tmp / f"node-{name}.log"
    with open(log_path, "wb") as log:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "webcall", "--host", "127.0.0.1", "--port", str(http), "--media-host", "127.0.0.1",
            "--media-port", "0", "--media-tcp-port", "0", "--public-ip", "127.0.0.1", "--rest-port", str(rest),
            "--tls-port", "-1",
            "--workers", "1", "--records-dir", str(tmp / "records"), "--log-level", "info",
            "--cluster-redis", redis_url, "--node-id", name, "--relay-host", "127.0.0.1", "--relay-port", "0",
            "--cluster-ttl", str(TTL), "--connect-timeout", "6", *args,
            cwd=REPO, stdout=log, stderr=log, env={**os.environ, "PYTHONPATH": str(REPO), **(env or {})})
    _RUNNING.add(proc)
    return Node(name, proc, http, rest, log_path)
