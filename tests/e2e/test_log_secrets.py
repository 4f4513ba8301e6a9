"""The server's log never carries SDP, ICE passwords or authToken-bearing fields (README, *Logs*).

A real server process at --log-level debug, its whole output captured; a full publish and play, a client that
sends its own authToken and sip* credentials, an ignored message carrying an authToken, and offers the server
refuses (so error paths log too). Then the output is searched for every secret the clients and the server
exchanged.
"""

from __future__ import annotations

import asyncio
import os
import re
import sys
import uuid
from pathlib import Path

from tests.support import hostile, peers
from tests.support.peers import rewrite_fingerprints
from tests.support.wcs_client import WcsClient

REPO = Path(__file__).resolve().parents[2]
CLIENT_TOKEN = "tok-" + uuid.uuid4().hex
SIP_PASSWORD = "sippw-" + uuid.uuid4().hex


async def _read_until(stream: asyncio.StreamReader, pattern: bytes, lines: list[bytes]) -> re.Match[bytes]:
    while True:
        line = await asyncio.wait_for(stream.readline(), 20)
        assert line, b"".join(lines)
        lines.append(line)
        match = re.search(pattern, line)
        if match:
            return match


async def test_debug_log_has_no_sdp_passwords_or_tokens(tmp_path) -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "webcall", "--host", "127.0.0.1", "--port", "0", "--media-host", "127.0.0.1",
        "--media-port", "0", "--media-tcp-port", "0", "--public-ip", "127.0.0.1", "--rest-port", "0", "--tls-port", "-1",
        "--records-dir", str(tmp_path), "--log-level", "debug", cwd=REPO,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.stdout is not None
    lines: list[bytes] = []
    secrets: dict[str, str] = {"client authToken": CLIENT_TOKEN, "sipPassword": SIP_PASSWORD}
    clients: list[WcsClient] = []
    streams: list[peers._Stream] = []
    drain: asyncio.Task[None] | None = None
    try:
        port = int((await _read_until(proc.stdout, rb"http://localhost:(\d+)/", lines)).group(1))
        drain = asyncio.create_task(_drain(proc.stdout, lines))
        url = f"ws://127.0.0.1:{port}/"
        extra = {"authToken": CLIENT_TOKEN, "sipLogin": "alice", "sipPassword": SIP_PASSWORD,
                 "sipAuthenticationName": "alice"}
        pub_client = await WcsClient.connect(url, extra=extra)
        play_client = await WcsClient.connect(url)
        clients += [pub_client, play_client]
        publisher = await peers.publish(pub_client, "secret", width=320, height=240)
        streams.append(publisher)
        await publisher.wait_status("PUBLISHING", timeout=10)
        player = await peers.play(play_client, "secret")
        streams.append(player)
        await player.wait_status("PLAYING", timeout=10)
        await player.wait_frames(5, timeout=10)
        # An ignored message with a token, and offers the server refuses (their error paths log too).
        await pub_client.send("connectMediaTransport", {"authToken": CLIENT_TOKEN, "sipPassword": SIP_PASSWORD})
        refused = await peers.publish(play_client, "refused", offer_transform=rewrite_fingerprints(lambda a, v: []),
                                      raise_on_failure=False)
        pc, truncated = await hostile.raw_offer("publish")  # cut after its credentials: fails to parse
        await pc.close()
        msid = str(uuid.uuid1())
        await play_client.send("publishStream", hostile.stream_request("publish", "cut", truncated[:truncated.index("a=setup")], msid))
        await play_client.wait_for(lambda m: m.get("message") == "notifyStreamStatusEvent"
                                   and m["data"][0].get("mediaSessionId") == msid, timeout=5)
        await player.stop()
        await publisher.stop()
        for client in clients:
            await client.close()
        await asyncio.sleep(0.5)  # the server logs the departures
    finally:
        for stream in streams:
            await stream.close()
        for client in clients:
            await client.close()
        if proc.returncode is None:
            proc.terminate()
            await asyncio.wait_for(proc.wait(), 15)
    assert drain is not None
    await asyncio.wait_for(drain, 5)
    log = b"".join(lines).decode("utf-8", "replace")
    assert "publishing" in log and "secret" in log, log[-2000:]
    assert re.search(r"level=DEBUG logger=webcall", log), "not a debug log"

    for name, sdp in [("publisher offer", publisher.offer_sdp), ("publisher answer", publisher.answer_sdp),
                      ("player offer", player.offer_sdp), ("player answer", player.answer_sdp),
                      ("refused offer", refused.offer_sdp), ("truncated offer", truncated)]:
        assert sdp
        secrets[f"{name} ice-pwd"] = hostile.sdp_attr(sdp, "ice-pwd")
    for name, value in secrets.items():
        assert value and value not in log, f"{name} is in the server's log"
    for marker in ("a=fingerprint", "v=0", "a=ice-pwd", "ice-pwd", "sipPassword", "authToken"):
        assert marker not in log, f"{marker!r} is in the server's log: " + _around(log, marker)


async def _drain(stream: asyncio.StreamReader, lines: list[bytes]) -> None:
    while line := await stream.readline():
        lines.append(line)


def _around(text: str, needle: str) -> str:
    i = text.find(needle)
    return text[max(0, i - 300):i + 300]
