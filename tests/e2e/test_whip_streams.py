"""WHIP/WHEP streams are streams like any other: REST find (mediaProvider, live metrics and rates), /metrics
counters, REST snapshots and REST recording of a WHIP publication. One process and two media workers.
"""

from __future__ import annotations

import asyncio
import base64
import io
import os
import re

import aiohttp
import av
import pytest

from tests.conftest import SHAPES
from tests.support.media import pattern_present, read_frame_counter
from tests.support.recfile import read_recording
from tests.support.whip_client import whep_play, whip_publish


@pytest.fixture
async def server(server_shapes):
    return server_shapes


async def rest(server, path: str, body: dict) -> tuple[int, dict | list]:
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{server.rest_url}/rest-api{path}", json=body) as r:
            return r.status, await r.json()


def metric(text: str, name: str, kind: str) -> float:
    match = re.search(rf'^{name}\{{kind="{kind}"\}} (\S+)$', text, re.M)
    assert match, name
    return float(match[1])


async def test_whip_and_whep_in_rest_metrics_and_prometheus(server) -> None:
    base = f"http://127.0.0.1:{server.server.http_port}"
    pub = await whip_publish(base, "whip metrics")
    player = await whep_play(base, "whip metrics")
    await player.wait_decoded_frames(20, timeout=15)

    # Rates need two samples of the counters, which media workers report once per rate interval: asked until
    # both streams have them (two intervals are usually enough; a loaded machine may take longer).
    deadline = asyncio.get_running_loop().time() + 10
    while True:
        status, found = await rest(server, "/stream/find", {"name": "whip metrics"})
        assert status == 200
        by_provider = {s["mediaProvider"]: s for s in found}
        rates = [s.get("metrics", {}).get("VIDEO_RATE", 0) for s in found]
        if (len(found) == 2 and all(rates) and by_provider.get("WHIP", {}).get("fps")) \
                or asyncio.get_running_loop().time() > deadline:
            break
        await asyncio.sleep(0.5)
    await asyncio.sleep(1.0)  # a full interval's rates, not a partial first one
    status, found = await rest(server, "/stream/find", {"name": "whip metrics"})
    assert status == 200
    by_provider = {s["mediaProvider"]: s for s in found}
    assert set(by_provider) == {"WHIP", "WHEP"}, found
    whip, whep = by_provider["WHIP"], by_provider["WHEP"]
    assert whip["metrics"]["VIDEO_RATE"] > 10_000 and whip["metrics"]["AUDIO_RATE"] > 5_000, whip["metrics"]
    assert whip["metrics"]["VIDEO_WIDTH"] == 640 and whip["metrics"]["VIDEO_FPS"] >= 10 and whip["fps"] >= 10
    assert whep["metrics"]["VIDEO_RATE"] > 10_000 and whep["metrics"]["VIDEO_FPS"] >= 10, whep["metrics"]
    assert whip["transport"] == "UDP"
    status, metrics = await rest(server, "/stream/metrics", {"mediaSessionId": whip["mediaSessionId"]})
    assert status == 200 and metrics["VIDEO_RATE"] > 10_000

    async with aiohttp.ClientSession() as http:
        async with http.get(f"{server.rest_url}/metrics") as r:
            text = await r.text()
    assert metric(text, "webcall_rtp_packets_received_total", "video") > 20
    assert metric(text, "webcall_rtp_packets_sent_total", "video") > 20
    assert re.search(r"^webcall_streams 1$", text, re.M) and re.search(r"^webcall_players 1$", text, re.M)

    for resource in (player, pub):
        assert await resource.delete() == 200
        await resource.close()
    await server.wait_empty()


async def test_rest_snapshot_of_a_whip_stream(server) -> None:
    base = f"http://127.0.0.1:{server.server.http_port}"
    pub = await whip_publish(base, "whip snap")
    for _ in range(100):
        if any(s.name == "whip snap" and s.live for s in server.hub.registry.sources()):
            break
        await asyncio.sleep(0.1)
    await asyncio.sleep(1.0)  # past the first keyframe
    status, result = await rest(server, "/stream/snapshot", {"streamName": "whip snap"})
    assert status == 200, result
    frame = next(av.open(io.BytesIO(base64.b64decode(result["data"]))).decode(video=0))
    assert (frame.width, frame.height) == (640, 480)
    assert pattern_present(frame) and read_frame_counter(frame) is not None
    assert await pub.delete() == 200
    await pub.close()
    await server.wait_empty()


@pytest.mark.parametrize("shape", list(SHAPES))
async def test_rest_recording_of_a_whip_stream(make_server, tmp_path, shape: str) -> None:
    server = await make_server(records_dir=str(tmp_path), **SHAPES[shape])
    base = f"http://127.0.0.1:{server.server.http_port}"
    pub = await whip_publish(base, "whip rec")
    for _ in range(100):
        if any(s.name == "whip rec" and s.live for s in server.hub.registry.sources()):
            break
        await asyncio.sleep(0.1)
    status, found = await rest(server, "/stream/find", {"name": "whip rec"})
    msid = found[0]["mediaSessionId"]
    status, body = await rest(server, "/stream/startRecording", {"mediaSessionId": msid})
    assert status == 200, body
    file_name = body["fileName"]
    assert file_name.endswith(".webm")  # VP8
    status, listed = await rest(server, "/recorder/find_all", {})
    assert [r["mediaSessionId"] for r in listed] == [msid]
    await asyncio.sleep(3.0)
    status, body = await rest(server, "/stream/stopRecording", {"mediaSessionId": msid})
    assert status == 200
    path = tmp_path / body["fileName"]
    for _ in range(100):  # finalized in the background
        if path.exists() and os.path.getsize(path) > 0 and not any(
                r.publication.name == "whip rec" and not r.done.done() for r in server.hub.recordings.list()):
            break
        await asyncio.sleep(0.1)
    recorded = read_recording(str(path))
    assert recorded.size == (640, 480) and recorded.video_codec == "vp8" and recorded.audio_codec == "opus"
    readable = [c for c in recorded.counters if c is not None]
    assert len(readable) >= 45 and recorded.counters_in_order(), len(readable)  # ~3 s at 30 fps, in order
    assert await pub.delete() == 200
    await pub.close()
    await server.wait_empty()
