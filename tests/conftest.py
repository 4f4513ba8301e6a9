"""Shared fixtures: a real webcall server on 127.0.0.1 (ephemeral ports) and its teardown checks."""

from __future__ import annotations

import asyncio
import dataclasses
import os
from collections.abc import AsyncIterator, Callable

import pytest

from tests.support import cluster
from tests.support.peers import install_loopback_only
from tests.support.wcs_client import WcsClient
from webcall.server.app import WebcallServer
from webcall.server.config import Config

install_loopback_only()  # no test traffic may leave 127.0.0.0/8


def test_config(**overrides) -> Config:
    base = Config(host="127.0.0.1", port=0, media_host="127.0.0.1", media_port=0, media_tcp_port="0",
                  public_ip="127.0.0.1",
                  rest_host="127.0.0.1", rest_port=0, tls_port=-1, connect_timeout=4.0, consent_timeout=15.0, ping_interval=5.0,
                  workers="1")
    return dataclasses.replace(base, **overrides)


class RunningServer:
    def __init__(self, server: WebcallServer) -> None:
        self.server = server

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.server.http_port}/"

    @property
    def rest_url(self) -> str:
        """Base of the REST API, /metrics and /health (the REST port is ephemeral in tests)."""
        return f"http://127.0.0.1:{self.server.rest_port}"

    @property
    def hub(self):
        return self.server.hub

    @property
    def port(self):
        return self.server.port

    async def client(self, **kwargs) -> WcsClient:
        return await WcsClient.connect(self.url, **kwargs)

    def assert_empty(self) -> None:
        """Nothing is left of any client: registry, sessions, transports, address tables."""
        hub, port = self.hub, self.port
        assert hub.registry.names() == set(), hub.registry.names()
        assert hub.registry.readers_count() == 0
        assert hub.sessions == set(), hub.sessions
        if port is not None:
            assert port.transports == set(), port.transports
            assert port.by_addr == {} and port.by_ufrag == {}
        else:  # media workers: the control process holds no endpoint any more
            assert self.server.workers.endpoints == {}, self.server.workers.endpoints

    async def wait_empty(self, timeout: float = 5.0) -> None:
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            try:
                self.assert_empty()
                return
            except AssertionError:
                if asyncio.get_running_loop().time() > deadline:
                    raise
                await asyncio.sleep(0.05)


@pytest.fixture(autouse=True)
def _no_stray_cluster_processes():
    """A cluster test that fails while starting its nodes leaves the ones that did start: kill them here, or
    the next test that counts this process's children finds them."""
    yield
    cluster.reap()


@pytest.fixture
async def make_server() -> AsyncIterator[Callable[..., "asyncio.Future[RunningServer]"]]:
    servers: list[WebcallServer] = []

    async def start(**overrides) -> RunningServer:
        server = WebcallServer(test_config(**overrides))
        await server.start()
        servers.append(server)
        return RunningServer(server)

    yield start
    for server in servers:
        await server.stop()


@pytest.fixture
async def server(make_server) -> RunningServer:
    return await make_server()


# The server shapes that the forwarding, signalling, recording and REST tests run against: one process, and two
# media workers with players spread over both (so one stream's players are served from two workers, one of them
# over the relay).
SHAPES = {"one-process": {"workers": "1"}, "two-workers": {"workers": "2", "placement": "spread"}}


@pytest.fixture(params=list(SHAPES))
async def server_shapes(request, make_server) -> RunningServer:
    return await make_server(**SHAPES[request.param])


def pytest_asyncio_loop_factories(config, item):
    """The tests' own loop is the server's default one (webcall/eventloop.py): the in-process servers — and the
    test clients beside them — run on uvloop, as `python -m webcall` does. WEBCALL_TEST_LOOP=asyncio runs them
    on the standard library's loop instead."""
    if os.environ.get("WEBCALL_TEST_LOOP", "uvloop") == "asyncio":
        return {"asyncio": asyncio.new_event_loop}
    import uvloop

    return {"uvloop": uvloop.new_event_loop}
