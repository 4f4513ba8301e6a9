"""WebRTC players whose offer lacks the publisher's video codec read a shared transcoded rendition instead of
FAILED "No common codecs" (transcode/rendition.py): decoded frames carry the publisher's moving pattern and its
counter, the audio is the publisher's own Opus track. Both server shapes."""

from __future__ import annotations

import asyncio

import pytest

from tests.e2e.test_publish_play import assert_audio_tone
from tests.support import peers


@pytest.mark.parametrize(("published", "played"), [("VP8", "H264"), ("H264", "VP8")])
async def test_player_without_the_publishers_codec_gets_a_rendition(server_shapes, published: str,
                                                                     played: str) -> None:
    server = server_shapes
    pub_client = await server.client()
    publisher = await peers.publish(pub_client, "rendition", video_codec=published)
    await publisher.wait_status("PUBLISHING", timeout=10)

    clients = [await server.client() for _ in range(2)]
    players = [await peers.play(c, "rendition", video_codec=played) for c in clients]
    for player in players:
        await player.wait_status("PLAYING", timeout=10)
    await asyncio.gather(*(p.wait_decoded_frames(60, timeout=25) for p in players))
    await asyncio.gather(*(p.wait_audio_frames(100, timeout=10) for p in players))
    for player, client in zip(players, clients):
        sdp = next(m for m in client.messages if m["message"] == "setRemoteSDP")["data"][1]
        assert f"{played}/90000" in sdp and f"{published}/90000" not in sdp
        frames = player.frames
        assert not any(f.is_black for f in frames), "black frames"
        assert player.intact_ratio() >= 0.9, "the publisher's moving square is missing"
        counters = player.counters
        assert len(counters) >= 0.9 * len(frames) and counters == sorted(counters), "the publisher's frame counter"
        assert_audio_tone(player)
    assert server.hub.renditions.started == 1, "one rendition for both players"

    await publisher.stop()
    for player in players:
        await player.wait_status("STOPPED", timeout=5)
        await player.close()
    for client in [pub_client, *clients]:
        await client.close()
    await publisher.close()
    await server.wait_empty()
