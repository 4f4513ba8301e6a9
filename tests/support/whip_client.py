"""aiortc as a WHIP publisher (RFC 9725) and a WHEP player: a full offer (candidates included) POSTed as
application/sdp, the 201's answer applied, DELETE on the Location to end."""

from __future__ import annotations

import uuid
from collections.abc import Callable

import aiohttp
from aiortc import RTCRtpTransceiver, RTCSessionDescription
from aiortc.rtcconfiguration import RTCBundlePolicy

from .media import PatternVideoTrack, ToneAudioTrack
from .peers import Player, assert_loopback_sdp, codec_preferences, create_peer_connection


class WhipError(Exception):
    def __init__(self, status: int, text: str) -> None:
        super().__init__(f"HTTP {status}: {text}")
        self.status, self.text = status, text


class _Http:
    location: str | None = None
    response_headers: dict[str, str]

    def __init__(self, base: str, token: str | None) -> None:
        self.base = base.rstrip("/")
        self.headers = {"Authorization": f"Bearer {token}"} if token else {}

    async def _post(self, path: str, offer: str) -> str:
        async with aiohttp.ClientSession() as http:
            async with http.post(self.base + path, data=offer.encode(),
                                 headers={**self.headers, "Content-Type": "application/sdp"}) as r:
                text = await r.text()
                if r.status != 201:
                    raise WhipError(r.status, text)
                assert r.content_type == "application/sdp"
                self.response_headers = dict(r.headers)
                self.location = r.headers["Location"]
                return text

    async def delete(self) -> int:
        assert self.location is not None
        async with aiohttp.ClientSession() as http:
            async with http.delete(self.base + self.location, headers=self.headers) as r:
                return r.status


async def _exchange(pc, session: _Http, path: str, offer_transform: Callable[[str], str] | None) -> tuple[str, str]:
    await pc.setLocalDescription(await pc.createOffer())  # gathers: the offer carries its candidates
    offer = pc.localDescription.sdp
    if offer_transform is not None:
        offer = offer_transform(offer)
    answer = await session._post(path, offer)
    assert_loopback_sdp(answer)
    await pc.setRemoteDescription(RTCSessionDescription(sdp=answer, type="answer"))
    return offer, answer


class WhipPublisher(_Http):
    def __init__(self, base: str, name: str, token: str | None) -> None:
        super().__init__(base, token)
        self.name = name
        self.pc = create_peer_connection(RTCBundlePolicy.MAX_BUNDLE)
        self.video_track = PatternVideoTrack(640, 480, 30.0)
        self.audio_track = ToneAudioTrack()
        self.offer = self.answer = ""

    async def close(self) -> None:
        await self.pc.close()
        self.video_track.stop()
        self.audio_track.stop()


async def whip_publish(base: str, name: str, *, token: str | None = None, video_codec: str = "VP8",
                       offer_transform: Callable[[str], str] | None = None) -> WhipPublisher:
    """Publish `name` to `base`/whip/`name`: audio (tone) and video (pattern); raises WhipError on a non-201."""
    pub = WhipPublisher(base, name, token)
    try:
        pub.pc.addTransceiver(pub.audio_track, direction="sendonly")
        vt: RTCRtpTransceiver = pub.pc.addTransceiver(pub.video_track, direction="sendonly")
        vt.setCodecPreferences(codec_preferences("video", video_codec))
        pub.offer, pub.answer = await _exchange(pub.pc, pub, f"/whip/{name}", offer_transform)
    except BaseException:
        await pub.close()
        raise
    return pub


class WhepPlayer(Player, _Http):
    """A peers.Player (decodes and checks frames) whose signalling is WHEP instead of the WCS WebSocket."""

    def __init__(self, base: str, name: str, token: str | None) -> None:
        _Http.__init__(self, base, token)
        Player.__init__(self, None, name, create_peer_connection(RTCBundlePolicy.MAX_BUNDLE),  # type: ignore[arg-type]
                        str(uuid.uuid4()), True, True)


async def whep_play(base: str, name: str, *, token: str | None = None,
                    offer_transform: Callable[[str], str] | None = None) -> WhepPlayer:
    player = WhepPlayer(base, name, token)
    try:
        player.pc.addTransceiver("audio", direction="recvonly")
        player.pc.addTransceiver("video", direction="recvonly")
        player.offer_sdp, player.answer_sdp = await _exchange(player.pc, player, f"/whep/{name}", offer_transform)
    except BaseException:
        await player.close()
        raise
    return player
