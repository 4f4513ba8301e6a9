"""The event loop of `python -m webcall` (webcall/eventloop.py): uvloop by default, asyncio on request, for the
control process and its media workers; media flows on either."""

from __future__ import annotations

import asyncio
import os

import aiohttp
import pytest

from tests.e2e.test_shutdown import spawn
from tests.support import peers
from tests.support.cluster import free_port
from tests.support.wcs_client import WcsClient
from webcall import eventloop


@pytest.mark.parametrize("loop", ["uvloop", "asyncio"])
def test_run_on_each_loop(loop) -> None:
    async def main() -> str:
        await asyncio.sleep(0)
        return eventloop.loop_name()

    assert eventloop.run(main(), loop) == loop


async def test_the_tests_run_on_the_servers_default_loop() -> None:
    """tests/conftest.py: the in-process servers of the suite run on the loop `python -m webcall` uses."""
    assert eventloop.loop_name() == os.environ.get("WEBCALL_TEST_LOOP", eventloop.DEFAULT_LOOP)


def test_an_unknown_loop_is_refused() -> None:
    coro = asyncio.sleep(0)
    with pytest.raises(ValueError, match="uvloop, asyncio"):
        eventloop.run(coro, "trio")
    coro.close()


@pytest.mark.parametrize("flag", [None, "asyncio"])
async def test_the_server_plays_media_on_its_loop(tmp_path, flag) -> None:
    rest_port = free_port()
    args = ["--tls-port", "-1", "--workers", "2", "--placement", "spread", "--rest-port", str(rest_port)]
    server = await spawn(tmp_path, *args, *(["--event-loop", flag] if flag else []))
    try:
        async with aiohttp.ClientSession() as http:
            async with http.get(f"http://127.0.0.1:{rest_port}/health") as r:
                assert (await r.json())["event_loop"] == (flag or "uvloop")
        pub_client, play_client = await WcsClient.connect(server.url), await WcsClient.connect(server.url)
        publisher = await peers.publish(pub_client, "loop", width=320, height=240)
        players = [await peers.play(play_client, "loop") for _ in range(2)]  # spread: one on each worker
        try:
            await publisher.wait_status("PUBLISHING", timeout=10)
            for player in players:
                await player.wait_decoded_frames(10, timeout=15)
        finally:
            for peer in (*players, publisher):
                await peer.close()
            await pub_client.close()
            await play_client.close()
    finally:
        server.proc.kill()
        await server.proc.wait()
