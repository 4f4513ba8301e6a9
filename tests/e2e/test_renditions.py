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


async def test_players_asking_for_a_smaller_size_share_a_scaled_rendition(server_shapes) -> None:
    """playStream width/height (spec §4.1): a smaller picture than published comes from one rendition per
    profile, in the publisher's codec; notifyVideoFormat tells the size the player really gets."""
    import numpy as np

    from tests.support.media import analyze_frame

    server = server_shapes
    pub_client = await server.client()
    publisher = await peers.publish(pub_client, "sized", video_codec="VP8")
    await publisher.wait_status("PUBLISHING", timeout=10)
    full_client = await server.client()
    full = await peers.play(full_client, "sized")  # as published: no rendition
    clients = [await server.client() for _ in range(2)]
    players = [await peers.play(c, "sized", extra_fields={"width": 320, "height": 240, "bitrate": 400})
               for c in clients]
    for player in [full, *players]:
        await player.wait_status("PLAYING", timeout=10)
    await asyncio.gather(*(p.wait_decoded_frames(45, timeout=25) for p in [full, *players]))
    assert full.frame_sizes[-1] == (640, 480)
    for player, client in zip(players, clients):
        assert set(player.frame_sizes[10:]) == {(320, 240)}, set(player.frame_sizes)
        first = player.last_video_frame.to_ndarray(format="gray").astype(int)
        await player.wait_decoded_frames(15, since=len(player.frames), timeout=10)
        last = player.last_video_frame
        assert not analyze_frame(last).is_black
        assert np.abs(last.to_ndarray(format="gray").astype(int) - first).mean() > 1, "the picture does not move"
        fmt = [m["data"][0] for m in client.messages if m["message"] == "notifyVideoFormat"]
        assert fmt and (fmt[-1]["streamerVideoWidth"], fmt[-1]["streamerVideoHeight"]) == (320, 240), fmt
        sdp = next(m for m in client.messages if m["message"] == "setRemoteSDP")["data"][1]
        assert "VP8/90000" in sdp
    assert server.hub.renditions.started == 1, "one rendition per profile"
    (entry,) = server.hub.renditions.describe()
    assert entry["profile"] == (320, 240, 400_000) and entry["players"] == 2

    await publisher.stop()
    for player in [full, *players]:
        await player.wait_status("STOPPED", timeout=5)
        await player.close()
    for client in [pub_client, full_client, *clients]:
        await client.close()
    await publisher.close()
    await server.wait_empty()
