"""GStreamer `webrtcbin` (Debian 12: GStreamer 1.22 through python3-gi) as a webcall client.

The GStreamer side is tests/support/gst_client.py, run with Debian's /usr/bin/python3 as a subprocess (the venv's
Python cannot import gi). Checked both ways: a GStreamer publisher (videotestsrc ball + audiotestsrc, VP8 + Opus)
decodes in an aiortc player, and a GStreamer player decodes moving frames (distinct frame hashes) of an aiortc
publisher; over the WCS WebSocket with bundle-policy max-bundle (later m-sections bundle-only, port 0) and
balanced, and over WHIP/WHEP.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import subprocess
from pathlib import Path

import pytest

from tests.support import peers
from tests.support.deps import missing_dependency
from tests.support.whip_client import whep_play, whip_publish

GST_PYTHON = os.environ.get("WEBCALL_GST_PYTHON", "/usr/bin/python3")
SCRIPT = Path(__file__).resolve().parents[1] / "support" / "gst_client.py"
APT = ("gstreamer1.0-plugins-base gstreamer1.0-plugins-good gstreamer1.0-plugins-bad gstreamer1.0-nice "
       "gir1.2-gst-plugins-bad-1.0 gir1.2-gst-plugins-base-1.0 python3-gi python3-gst-1.0 python3-websocket")


def _gst_missing() -> str | None:
    try:
        r = subprocess.run([GST_PYTHON, str(SCRIPT), "--check"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"{GST_PYTHON}: {exc}"
    return None if r.returncode == 0 else (r.stdout + r.stderr).strip()


_MISSING = _gst_missing()


@pytest.fixture(autouse=True)
def _need_gstreamer() -> None:
    if _MISSING:
        missing_dependency(f"GStreamer webrtcbin through {GST_PYTHON} ({_MISSING}; Debian: apt-get install {APT})")


class GstClient:
    """One gst_client.py subprocess; its JSON-line events are collected as they arrive."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.events: list[dict] = []
        self.stderr = b""
        self._changed = asyncio.Event()
        self._reader = asyncio.create_task(self._read())

    @classmethod
    async def start(cls, *args: str) -> GstClient:
        proc = await asyncio.create_subprocess_exec(
            GST_PYTHON, str(SCRIPT), *args, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, env={**os.environ, "GST_DEBUG": os.environ.get("GST_DEBUG", "1")})
        return cls(proc)

    async def _read(self) -> None:
        assert self.proc.stdout is not None
        async for line in self.proc.stdout:
            try:
                self.events.append(json.loads(line))
            except ValueError:
                self.events.append({"event": "text", "text": line.decode(errors="replace")})
            self._changed.set()

    def find(self, name: str) -> list[dict]:
        return [e for e in self.events if e["event"] == name]

    def describe(self) -> str:
        lines = [json.dumps(e)[:600] for e in self.events]
        return "gst_client events:\n  " + "\n  ".join(lines) + "\nstderr:\n" + self.stderr.decode(errors="replace")[-3000:]

    async def wait_event(self, name: str, timeout: float = 15.0) -> dict:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            for e in self.events:
                if e["event"] == name:
                    return e
                if e["event"] == "error":
                    await self.finish()
                    pytest.fail(f"GStreamer client failed: {e['error']}\n{self.describe()}")
            if self._reader.done():
                await self.finish()
                pytest.fail(f"GStreamer client exited (rc {self.proc.returncode}) before {name!r}\n{self.describe()}")
            left = deadline - loop.time()
            if left <= 0:
                await self.finish()
                pytest.fail(f"no {name!r} from the GStreamer client after {timeout} s\n{self.describe()}")
            self._changed.clear()
            try:
                await asyncio.wait_for(self._changed.wait(), min(left, 0.5))
            except TimeoutError:
                pass

    async def finish(self, timeout: float = 15.0) -> int:
        """Close stdin (a publisher stops), wait for the exit; kill after `timeout`. Returns the exit code."""
        if self.proc.stdin is not None and not self.proc.stdin.is_closing():
            self.proc.stdin.close()
        try:
            await asyncio.wait_for(self.proc.wait(), timeout)
        except TimeoutError:
            self.proc.kill()
            await self.proc.wait()
        await self._reader
        assert self.proc.stderr is not None
        self.stderr = await self.proc.stderr.read()
        return self.proc.returncode


def http_base(server) -> str:
    return f"http://127.0.0.1:{server.server.http_port}"


def luma_hash(frame) -> str:
    return hashlib.blake2b(frame.to_ndarray(format="gray").tobytes(), digest_size=16).hexdigest()


async def assert_aiortc_decodes(player: peers.Player) -> None:
    """The GStreamer stream (a moving ball) decodes in aiortc: frames, not black, changing; audio too."""
    await player.wait_frames(20, timeout=15)
    first = luma_hash(player.last_video_frame)
    await player.wait_frames(len(player.frames) + 10, timeout=10)
    assert luma_hash(player.last_video_frame) != first, "the ball must move"
    assert not any(f.is_black for f in player.frames[5:])
    assert player.frame_sizes[-1] == (320, 240)
    await player.wait_audio_frames(20, timeout=10)


def assert_gst_played(result: dict, rc: int, client: GstClient) -> None:
    assert rc == 0 and result["ok"], client.describe()
    assert result["frames"] >= 30 and result["distinct"] >= 10 and result["changes"] >= 10, result
    assert result["size"] == [640, 480], result
    assert result["audio_buffers"] > 0, result


# What webrtcbin 1.22 can do with BUNDLE: max-bundle (every section but the first a=bundle-only, port 0) and
# max-compat (a BUNDLE group, every section with its own port). "balanced" is not implemented there: webrtcbin
# logs "Balanced bundle policy not implemented yet" and keeps "none" (see test_gst_balanced_is_none_and_refused).
BUNDLES = ["max-bundle", "max-compat"]


@pytest.mark.parametrize("bundle", BUNDLES)
async def test_gst_publishes_over_wcs(server, bundle) -> None:
    gst = await GstClient.start("--mode", "publish", "--signal", "wcs", "--url", server.url,
                                "--name", "gst", "--bundle", bundle)
    try:
        offer = (await gst.wait_event("offer"))["sdp"]
        assert "a=group:BUNDLE" in offer
        assert ("a=bundle-only" in offer) == (bundle == "max-bundle")
        assert offer.count("m=") == 2
        await gst.wait_event("answer-applied")
        async with await server.client() as client:
            player = await peers.play(client, "gst")
            try:
                await assert_aiortc_decodes(player)
            finally:
                await player.close()
    except BaseException:
        await gst.finish()
        print(gst.describe())
        raise
    rc = await gst.finish()
    assert rc == 0, gst.describe()
    await server.wait_empty()


@pytest.mark.parametrize("bundle", BUNDLES)
async def test_gst_plays_over_wcs(server, bundle) -> None:
    async with await server.client() as client:
        pub = await peers.publish(client, "aio")
        try:
            gst = await GstClient.start("--mode", "play", "--signal", "wcs", "--url", server.url,
                                        "--name", "aio", "--bundle", bundle)
            result = await gst.wait_event("result", timeout=25)
            rc = await gst.finish()
            assert_gst_played(result, rc, gst)
        finally:
            await pub.close()
    await server.wait_empty()


async def test_gst_whip_publish(server) -> None:
    gst = await GstClient.start("--mode", "publish", "--signal", "whip", "--url", http_base(server),
                                "--name", "gst whip", "--bundle", "max-bundle")
    try:
        await gst.wait_event("answer-applied")
        player = await whep_play(http_base(server), "gst whip")
        try:
            await assert_aiortc_decodes(player)
        finally:
            await player.close()
    except BaseException:
        await gst.finish()
        print(gst.describe())
        raise
    rc = await gst.finish()
    assert rc == 0, gst.describe()
    await server.wait_empty()


async def test_gst_whep_play(server) -> None:
    pub = await whip_publish(http_base(server), "aio whip")
    try:
        gst = await GstClient.start("--mode", "play", "--signal", "whip", "--url", http_base(server),
                                    "--name", "aio whip", "--bundle", "max-bundle")
        result = await gst.wait_event("result", timeout=25)
        rc = await gst.finish()
        assert_gst_played(result, rc, gst)
    finally:
        await pub.delete()
        await pub.close()
    await server.wait_empty()


@pytest.mark.parametrize("mode", ["publish", "play"])
async def test_gst_balanced_is_none_and_refused(server, mode) -> None:
    """GStreamer 1.22 turns "balanced" into "none": no BUNDLE group, a transport per section. webcall has one
    transport per stream, so it refuses that offer at once with the reason (not after an ICE timeout)."""
    async with await server.client() as client:
        pub = await peers.publish(client, "aio") if mode == "play" else None
        try:
            gst = await GstClient.start("--mode", mode, "--signal", "wcs", "--url", server.url,
                                        "--name", "aio" if mode == "play" else "gst", "--bundle", "balanced")
            offer = (await gst.wait_event("offer"))["sdp"]
            assert "a=group:BUNDLE" not in offer and "a=bundle-only" not in offer
            rc = await gst.finish()
            assert rc == 1
            [result] = gst.find("result")
            assert result["bundle-policy"] == "none", result
            [error] = gst.find("error")
            assert "Offer without BUNDLE" in error["error"], gst.describe()
        finally:
            if pub is not None:
                await pub.close()
    await server.wait_empty()


# --- ICE over TCP (webcall/media/tcp.py) and the two-worker shape ----------------------------------------------


@pytest.mark.parametrize("mode", ["publish", "play"])
async def test_gst_over_ice_tcp(server, mode) -> None:
    """The SDK's transport "TCP" from GStreamer: the answer has only passive TCP candidates, and libnice (an
    ICE-TCP implementation no one here wrote) connects to them; the media goes over TCP both ways."""
    async with await server.client() as client:
        pub = await peers.publish(client, "aio tcp") if mode == "play" else None
        try:
            gst = await GstClient.start("--mode", mode, "--signal", "wcs", "--url", server.url, "--transport", "TCP",
                                        "--name", "aio tcp" if mode == "play" else "gst tcp", "--bundle", "max-bundle")
            answer = (await gst.wait_event("answer-applied"))
            if mode == "publish":
                player = await peers.play(client, "gst tcp")
                try:
                    await assert_aiortc_decodes(player)
                    links = [a for a in server.port.by_addr if not isinstance(a, tuple)]
                    assert len(links) == 1 and links[0].frames_in > 30, links  # GStreamer's media came over TCP
                finally:
                    await player.close()
                rc = await gst.finish()
                assert rc == 0, gst.describe()
            else:
                links = []
                for _ in range(100):  # the player's connection, while it lasts
                    links = [a for a in server.port.by_addr if not isinstance(a, tuple)]
                    if links:
                        break
                    await asyncio.sleep(0.1)
                result = await gst.wait_event("result", timeout=25)
                assert len(links) == 1 and links[0].frames_out > 30, links  # what GStreamer decoded came over TCP
                rc = await gst.finish()
                assert_gst_played(result, rc, gst)
            assert answer is not None
        finally:
            if pub is not None:
                await pub.close()
    await server.wait_empty()


async def test_gst_two_workers(make_server) -> None:
    """--workers 2 --placement spread: a GStreamer publisher (WCS) on one worker, a GStreamer player (WHEP) and an
    aiortc player spread over both, one of them through the relay between workers."""
    server = await make_server(workers="2", placement="spread")
    gst = await GstClient.start("--mode", "publish", "--signal", "wcs", "--url", server.url,
                                "--name", "gst2", "--bundle", "max-bundle")
    try:
        await gst.wait_event("answer-applied")
        async with await server.client() as client:
            player = await peers.play(client, "gst2")
            try:
                await assert_aiortc_decodes(player)
                gst_player = await GstClient.start("--mode", "play", "--signal", "whip", "--url", http_base(server),
                                                   "--name", "gst2", "--bundle", "max-bundle")
                result = await gst_player.wait_event("result", timeout=25)
                rc = await gst_player.finish()
                assert rc == 0 and result["ok"] and result["frames"] >= 30 and result["distinct"] >= 10, \
                    gst_player.describe()
                assert result["size"] == [320, 240] and result["audio_buffers"] > 0, result
            finally:
                await player.close()
    except BaseException:
        await gst.finish()
        print(gst.describe())
        raise
    rc = await gst.finish()
    assert rc == 0, gst.describe()
    await server.wait_empty()
