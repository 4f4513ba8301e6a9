"""--fanout-threads 2 end to end: a fan-out big enough to be split over the helper thread (64+ players).

70 lightweight bench players (real ICE, DTLS, SRTP; they check sampled payloads against what the publisher
sent) and one aiortc player that decodes the frames, all on one publisher, on a server with the helper thread.
"""

from __future__ import annotations

import asyncio
import logging
import time

import aiohttp

from tests.support import peers
from webcall_bench.player import BenchPlayer, ClientIdentity
from webcall_bench.publisher import BenchPublisher, Window, encode_audio_clip, encode_video_clip

PLAYERS = 70  # over the core's SPLIT_MIN (64)


async def test_fanout_threads_2_delivers_to_every_player(make_server, caplog) -> None:
    caplog.set_level(logging.INFO, logger="webcall")
    server = await make_server(fanout_threads=2, fanout_core="c")
    assert any("fan-out core loaded" in r.getMessage() and "threads=2" in r.getMessage() for r in caplog.records)
    loop = asyncio.get_running_loop()
    video_clip = await loop.run_in_executor(None, encode_video_clip, "VP8", 320, 240, 30.0, 300_000, 2.0)
    audio_clip = await loop.run_in_executor(None, encode_audio_clip)
    window = Window()
    publisher = BenchPublisher("split", window, video_clip, audio_clip, width=320, height=240)
    identity = ClientIdentity()
    players = [BenchPlayer(i, "split", publisher.log, identity, window, sample_every=20) for i in range(PLAYERS)]
    client = decoder = None
    async with aiohttp.ClientSession() as http:
        try:
            await publisher.start(http, server.url)
            await publisher.wait_media()
            semaphore = asyncio.Semaphore(10)

            async def join(player: BenchPlayer) -> None:
                async with semaphore:
                    await player.start(http, server.url, 30.0)

            await asyncio.gather(*(join(p) for p in players))
            client = await server.client()
            decoder = await peers.play(client, "split")
            await decoder.wait_status("PLAYING", timeout=10)
            await decoder.wait_frames(10, timeout=15)
            since, sent_before = len(decoder.frames), publisher.video_track.sent
            deadline = time.monotonic() + 20
            while any(p.ttff is None for p in players) or publisher.video_track.sent - sent_before < 60:
                assert time.monotonic() < deadline, [p.index for p in players if p.ttff is None]
                await asyncio.sleep(0.1)
            video_before = [p.video_packets for p in players]
            await asyncio.sleep(0.5)
            sent = publisher.video_track.sent - sent_before
            decoded = len(decoder.frames) - since
            assert decoded >= 0.8 * sent, (decoded, sent)  # the aiortc player decodes what the publisher sends
            assert set(decoder.frame_sizes[since:]) == {(320, 240)}
            for player, before in zip(players, video_before):
                assert player.failed is None, player.failed
                assert player.keyframe_intact, player.index
                assert player.seq_off is not None and player.video_packets > before, player.index
                assert player.sampled > 0 and player.sample_bad == 0, (player.index, player.sample_bad)
                assert player.duplicates == 0 and player.other_packets == 0, player.index
            # The helper thread really took half of the fan-outs (an internal figure, when reachable).
            core = getattr(getattr(server.server, "port", None), "core", None)
            if core is not None and hasattr(core, "split_fanouts"):
                assert core.split_fanouts > 0, "no fan-out was split over the helper thread"
        finally:
            await asyncio.gather(*(p.stop() for p in players), return_exceptions=True)
            if decoder is not None:
                await decoder.close()
            if client is not None:
                await client.close()
            await publisher.stop()
    await server.wait_empty()
