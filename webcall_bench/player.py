"""Lightweight players: real ICE, DTLS and SRTP keys, but packets counted from the clear RTP header.

One load process hosts hundreds of these. Each has its own UDP socket (the server tells connections apart
by 5-tuple) read with `loop.add_reader`, and does what a browser does on the wire:

* signalling over its own WebSocket: `connection`, then `playStream` with an offer built here (BUNDLE
  audio+video recvonly, VP8/H264/Opus with nack/pli, a=setup:actpass, our certificate's fingerprint, our
  ICE credentials, no candidates);
* ICE: STUN Binding requests with USE-CANDIDATE and MESSAGE-INTEGRITY (the server's ice-pwd), and again
  every few seconds for consent freshness — or the server drops the connection;
* DTLS as the client over memory BIOs, the server's certificate checked against the answer's fingerprint,
  SRTP keys exported as the client side (RFC 5764 §4.2).

What it does NOT do per packet: decrypt. SRTP leaves the RTP header in the clear, so SSRC, sequence number
and timestamp are read directly. Decryption is done for the first keyframe (to know when it is complete,
and to learn this player's sequence/timestamp offsets from the payload) and then for one packet in
`sample_every`, to prove that what arrives authenticates and carries the publisher's payload.

Receive times are the kernel's (SO_TIMESTAMPNS), so a busy load generator does not show up as server
latency; how late the load generator itself reads its sockets is measured apart (`lag`).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import secrets
import socket
import string
import struct
import time
from dataclasses import dataclass, field

import pylibsrtp
from aioice import stun
from aiortc.rtcdtlstransport import RTCCertificate, certificate_digest
from OpenSSL import SSL

from webcall.media.dtls import SRTP_PROFILES  # the same profiles the server offers
from webcall.media.rtp import KEYFRAME_PROBES, split
from .publisher import SendLog, Window
from .signalling import SignallingError, WcsConnection, new_media_session_id, play_request

SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)  # Linux; SCM_TIMESTAMPNS has the same value
_TIMESPEC = struct.Struct("=qq")
_SEQ_TS_SSRC = struct.Struct("!HII")
_ICE_CHARS = string.ascii_letters + string.digits
CONSENT_INTERVAL = 5.0
LAG_SAMPLE_EVERY = 64
DEDUP_WINDOW = 1024  # sequence numbers remembered per source; older ones count as duplicates (late anyway)


class SeqDedup:
    """Which sequence numbers of one source arrived (a window of DEDUP_WINDOW behind the highest): a packet
    received twice — a retransmission of one that was not lost, a duplicate — is counted once."""

    __slots__ = ("highest", "mask")

    def __init__(self) -> None:
        self.highest = -1
        self.mask = 0

    def fresh(self, seq: int) -> bool:
        if self.highest < 0:
            self.highest, self.mask = seq, 1
            return True
        ahead = (seq - self.highest) & 0xFFFF
        if ahead == 0:
            return False
        if ahead < 0x8000:
            self.mask = ((self.mask << ahead) | 1) & ((1 << DEDUP_WINDOW) - 1)
            self.highest = seq
            return True
        bit = 1 << (0x10000 - ahead)
        if bit >> DEDUP_WINDOW or self.mask & bit:
            return False
        self.mask |= bit
        return True



class ClientIdentity:
    """One client certificate and DTLS context shared by every player of the process."""

    def __init__(self) -> None:
        self.certificate = RTCCertificate.generateCertificate()
        self.fingerprint = certificate_digest(self.certificate._cert, "sha-256")
        ctx = SSL.Context(SSL.DTLS_METHOD)
        ctx.set_options(SSL.OP_NO_TICKET | SSL.OP_NO_QUERY_MTU)
        ctx.set_verify(SSL.VERIFY_PEER | SSL.VERIFY_FAIL_IF_NO_PEER_CERT, lambda *args: True)
        ctx.use_certificate(self.certificate._cert)
        ctx.use_privatekey(self.certificate._key)
        ctx.set_cipher_list(b"ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-ECDSA-CHACHA20-POLY1305:"
                            b"ECDHE-ECDSA-AES128-SHA:ECDHE-ECDSA-AES256-SHA")
        ctx.set_tlsext_use_srtp(b":".join(p.openssl_profile for p in SRTP_PROFILES))
        self.context = ctx


# --- SDP -------------------------------------------------------------------------------------------

def build_play_offer(ufrag: str, pwd: str, fingerprint: str, session_id: int) -> str:
    """A browser-like recvonly offer: BUNDLE audio+video, Opus, VP8 and H264 (two profiles), RTX, no candidates."""
    common = [
        "c=IN IP4 0.0.0.0", "a=rtcp:9 IN IP4 0.0.0.0", f"a=ice-ufrag:{ufrag}", f"a=ice-pwd:{pwd}",
        "a=ice-options:trickle", f"a=fingerprint:sha-256 {fingerprint}", "a=setup:actpass",
    ]
    lines = ["v=0", f"o=- {session_id} 2 IN IP4 127.0.0.1", "s=-", "t=0 0", "a=group:BUNDLE 0 1",
             "a=extmap-allow-mixed", "a=msid-semantic: WMS"]
    lines += ["m=audio 9 UDP/TLS/RTP/SAVPF 111", *common, "a=mid:0",
              "a=extmap:1 urn:ietf:params:rtp-hdrext:ssrc-audio-level",
              "a=extmap:4 urn:ietf:params:rtp-hdrext:sdes:mid",
              "a=recvonly", "a=rtcp-mux", "a=rtcp-rsize",
              "a=rtpmap:111 opus/48000/2", "a=fmtp:111 minptime=10;useinbandfec=1"]
    lines += ["m=video 9 UDP/TLS/RTP/SAVPF 96 97 102 103 127 125", *common, "a=mid:1",
              "a=extmap:14 urn:ietf:params:rtp-hdrext:toffset",
              "a=extmap:13 urn:3gpp:video-orientation",
              "a=extmap:4 urn:ietf:params:rtp-hdrext:sdes:mid",
              "a=recvonly", "a=rtcp-mux", "a=rtcp-rsize"]
    for pt, rtx, name, fmtp in (
        (96, 97, "VP8", None),
        (102, 103, "H264", "level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42001f"),
        (127, 125, "H264", "level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42e01f"),
    ):
        lines += [f"a=rtpmap:{pt} {name}/90000", f"a=rtcp-fb:{pt} goog-remb", f"a=rtcp-fb:{pt} ccm fir",
                  f"a=rtcp-fb:{pt} nack", f"a=rtcp-fb:{pt} nack pli"]
        if fmtp:
            lines.append(f"a=fmtp:{pt} {fmtp}")
        lines += [f"a=rtpmap:{rtx} rtx/90000", f"a=fmtp:{rtx} apt={pt}"]
    return "\r\n".join(lines) + "\r\n"


@dataclass
class AnswerTrack:
    kind: str
    mid: str
    payload_type: int
    codec: str
    ssrc: int | None = None


@dataclass
class Answer:
    ice_ufrag: str = ""
    ice_pwd: str = ""
    fingerprint: tuple[str, str] = ("", "")
    candidates: list[tuple[str, int]] = field(default_factory=list)
    tracks: dict[str, AnswerTrack] = field(default_factory=dict)  # kind -> track


def parse_answer(sdp: str) -> Answer:
    answer = Answer()
    track: AnswerTrack | None = None
    for raw in sdp.splitlines():
        line = raw.strip()
        if line.startswith("m="):
            parts = line[2:].split()
            track = None
            if len(parts) > 3 and parts[1] != "0":
                track = AnswerTrack(parts[0], "", int(parts[3]), "")
                answer.tracks.setdefault(parts[0], track)
        elif line.startswith("a=ice-ufrag:"):
            answer.ice_ufrag = line.split(":", 1)[1]
        elif line.startswith("a=ice-pwd:"):
            answer.ice_pwd = line.split(":", 1)[1]
        elif line.startswith("a=fingerprint:"):
            algorithm, _, value = line.split(":", 1)[1].partition(" ")
            answer.fingerprint = (algorithm.lower(), value.strip().upper())
        elif line.startswith("a=candidate:"):
            parts = line.split()
            if len(parts) >= 6 and parts[2].lower() == "udp":
                candidate = (parts[4], int(parts[5]))
                if candidate not in answer.candidates:
                    answer.candidates.append(candidate)
        elif track is not None:
            if line.startswith("a=mid:"):
                track.mid = line.split(":", 1)[1]
            elif line.startswith(f"a=rtpmap:{track.payload_type} "):
                track.codec = line.split(" ", 1)[1].split("/")[0]
            elif line.startswith("a=ssrc-group:FID "):
                track.ssrc = int(line.split()[1])
            elif line.startswith("a=ssrc:") and track.ssrc is None:
                track.ssrc = int(line[7:].split()[0])
    return answer


def _rand(n: int) -> str:
    return "".join(secrets.choice(_ICE_CHARS) for _ in range(n))


# --- the player ---------------------------------------------------------------------------------------

class BenchPlayer:
    def __init__(self, index: int, stream: str, log: SendLog, identity: ClientIdentity, window: Window,
                 *, sample_every: int = 100) -> None:
        self.index = index
        self.stream = stream
        self.log = log
        self.identity = identity
        self.window = window
        self.sample_every = sample_every
        self.media_session_id = new_media_session_id()
        self.ufrag, self.pwd = _rand(8), _rand(24)
        self.conn: WcsConnection | None = None
        self.answer: Answer | None = None
        self.sock: socket.socket | None = None
        self.server_addr: tuple[str, int] | None = None
        self.ssl: SSL.Connection | None = None
        self.rx: pylibsrtp.Session | None = None
        self.tx: pylibsrtp.Session | None = None
        self.srtp_profile: str | None = None
        self.rtcp_ssrc = random.getrandbits(32)
        self.tie_breaker = random.getrandbits(64)
        self.video_ssrc = self.audio_ssrc = -1
        self.probe = None

        # timeline (time.time(), the clock of SO_TIMESTAMPNS)
        self.play_sent_at = self.answer_at = self.ice_at = self.dtls_at = self.first_frame_at = 0.0
        self.ttff: float | None = None
        self.failed: str | None = None
        self.closed = False

        # ICE / DTLS futures
        self._stun_pending: dict[bytes, asyncio.Future[None]] = {}
        self._dtls_done: asyncio.Future[None] | None = None
        self.next_consent = 0.0
        self.consent_sent = self.consent_answered = 0

        # counters (whole run): media packets of the answer's SSRCs, each sequence number once; anything else
        # (other SSRCs, RTX) is `other_packets`, a sequence number seen again `duplicates`
        self.video_packets = self.audio_packets = self.other_packets = self.rtcp_packets = 0
        self.duplicates = 0
        self._video_seen, self._audio_seen = SeqDedup(), SeqDedup()
        self.bytes = 0
        self.socket_errors = 0
        # integrity samples: bad = did not authenticate, or matched no packet the publisher sent
        self.sampled = self.sample_ok = self.sample_bad = 0
        self.sample_unmatched = 0  # (included in sample_bad)
        # window counters
        self.win_packets = self.win_bytes = 0
        self.latencies: list[float] = []
        self.lags: list[float] = []
        # first keyframe assembly and offsets
        self.seq_off: int | None = None
        self.ts_off = 0
        self._kf_ts: int | None = None
        self._kf_first = 0
        self._kf_last: int | None = None
        self._kf_seen: set[int] = set()
        self._kf_started_at = 0.0
        self.keyframe_intact: bool | None = None
        self._kf_bad = 0
        self._next_pli = float("inf")

    # --- setup --------------------------------------------------------------------------------------

    async def start(self, http, url: str, timeout: float = 15.0) -> None:
        """Signal, connect ICE and DTLS; returns when SRTP keys are ready (media then counts by itself)."""
        deadline = time.monotonic() + timeout
        self.conn = await WcsConnection.open(http, url, timeout)
        offer = build_play_offer(self.ufrag, self.pwd, self.identity.fingerprint, random.getrandbits(62))
        self.play_sent_at = time.time()
        channel, sdp = await self.conn.request_stream(
            "playStream", play_request(self.media_session_id, self.stream, offer), deadline - time.monotonic())
        channel.on_terminal = self._on_terminal
        self.answer_at = time.time()
        answer = self.answer = parse_answer(sdp)
        if not answer.candidates:
            raise SignallingError("answer without candidates")
        video, audio = answer.tracks.get("video"), answer.tracks.get("audio")
        if video is not None:
            self.video_ssrc = video.ssrc if video.ssrc is not None else -1
            self.probe = KEYFRAME_PROBES.get(video.codec.upper())
        if audio is not None:
            self.audio_ssrc = audio.ssrc if audio.ssrc is not None else -1
        self._open_socket(answer.candidates[0])
        await self._ice(deadline)
        self.ice_at = time.time()
        await self._dtls(deadline)
        self.dtls_at = time.time()
        self.next_consent = time.monotonic() + random.uniform(1.0, CONSENT_INTERVAL)
        self._next_pli = time.monotonic() + 2.0  # a PLI only if the first keyframe is not complete by then

    def _open_socket(self, candidate: tuple[str, int]) -> None:
        family = socket.AF_INET6 if ":" in candidate[0] else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_DGRAM)
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        sock.bind(("::" if family == socket.AF_INET6 else "0.0.0.0", 0))
        sock.connect(candidate)  # the kernel keeps anyone else's datagrams out
        sock.setblocking(False)
        self.sock, self.server_addr = sock, candidate
        asyncio.get_running_loop().add_reader(sock.fileno(), self._on_readable)

    def _send(self, data: bytes) -> None:
        if self.sock is None:
            return
        try:
            self.sock.send(data)
        except OSError:
            self.socket_errors += 1

    # --- ICE ----------------------------------------------------------------------------------------

    def _binding_request(self, use_candidate: bool) -> tuple[bytes, bytes]:
        assert self.answer is not None
        request = stun.Message(message_method=stun.Method.BINDING, message_class=stun.Class.REQUEST)
        request.attributes["USERNAME"] = f"{self.answer.ice_ufrag}:{self.ufrag}"
        request.attributes["PRIORITY"] = 1853824767
        request.attributes["ICE-CONTROLLING"] = self.tie_breaker
        if use_candidate:
            request.attributes["USE-CANDIDATE"] = None
        request.add_message_integrity(self.answer.ice_pwd.encode())
        request.add_fingerprint()
        return request.transaction_id, bytes(request)

    async def _ice(self, deadline: float) -> None:
        transaction_id, data = self._binding_request(use_candidate=True)
        future = asyncio.get_running_loop().create_future()
        self._stun_pending[transaction_id] = future
        interval = 0.1
        try:
            while True:
                self._send(data)
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError("ICE: no STUN response")
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(asyncio.shield(future), min(interval, remaining))
                if future.done():
                    future.result()
                    return
                interval = min(interval * 2, 1.0)
        finally:
            self._stun_pending.pop(transaction_id, None)

    def _on_stun(self, data: bytes) -> None:
        try:
            message = stun.parse_message(data)
        except ValueError:
            return
        if message.message_method != stun.Method.BINDING or message.message_class != stun.Class.RESPONSE:
            return
        assert self.answer is not None
        if not message.check_message_integrity(self.answer.ice_pwd.encode()):
            return
        self.consent_answered += 1
        future = self._stun_pending.get(message.transaction_id)
        if future is not None and not future.done():
            future.set_result(None)

    def keepalive(self, now: float) -> None:
        """Consent freshness (RFC 7675): a check every few seconds, answered or the server drops us."""
        if self.closed or self.answer is None:
            return
        if self.ttff is None and self.rx is not None and now >= self._next_pli:
            self._send_pli(now)
        if now < self.next_consent:
            return
        self.next_consent = now + CONSENT_INTERVAL
        _, data = self._binding_request(use_candidate=False)
        self.consent_sent += 1
        self._send(data)

    # --- DTLS ---------------------------------------------------------------------------------------

    async def _dtls(self, deadline: float) -> None:
        ssl = self.ssl = SSL.Connection(self.identity.context, None)
        ssl.set_connect_state()
        ssl.set_ciphertext_mtu(1200)
        self._dtls_done = asyncio.get_running_loop().create_future()
        self._handshake()
        while not self._dtls_done.done():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError("DTLS handshake timed out")
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(asyncio.shield(self._dtls_done), min(0.25, remaining))
            if not self._dtls_done.done():
                with contextlib.suppress(SSL.Error):
                    ssl.DTLSv1_handle_timeout()
                self._flush_dtls()
        self._dtls_done.result()

    def _flush_dtls(self) -> None:
        assert self.ssl is not None
        while True:
            try:
                self._send(self.ssl.bio_read(1500))
            except SSL.WantReadError:
                return

    def _handshake(self) -> None:
        assert self.ssl is not None and self._dtls_done is not None
        try:
            self.ssl.do_handshake()
        except SSL.WantReadError:
            self._flush_dtls()
            return
        except SSL.Error as exc:
            self._flush_dtls()
            if not self._dtls_done.done():
                self._dtls_done.set_exception(ConnectionError(f"DTLS failed: {exc}"))
            return
        self._flush_dtls()
        try:
            self._connected()
        except Exception as exc:
            if not self._dtls_done.done():
                self._dtls_done.set_exception(exc)
            return
        if not self._dtls_done.done():
            self._dtls_done.set_result(None)

    def _connected(self) -> None:
        assert self.ssl is not None and self.answer is not None
        cert = self.ssl.get_peer_certificate(as_cryptography=True)
        algorithm, value = self.answer.fingerprint
        if cert is None or certificate_digest(cert, algorithm or "sha-256") != value:
            raise ConnectionError("server certificate does not match the answer's fingerprint")
        selected = self.ssl.get_selected_srtp_profile()
        profile = next((p for p in SRTP_PROFILES if p.openssl_profile == selected), None)
        if profile is None:
            raise ConnectionError("no SRTP profile negotiated")
        material = self.ssl.export_keying_material(b"EXTRACTOR-dtls_srtp",
                                                   2 * (profile.key_length + profile.salt_length))
        # As the DTLS client we send with the client key (index 0) and receive with the server's (index 1).
        rx = pylibsrtp.Policy(key=profile.get_key_and_salt(material, 1),
                              ssrc_type=pylibsrtp.Policy.SSRC_ANY_INBOUND, srtp_profile=profile.libsrtp_profile)
        rx.window_size = 1024
        tx = pylibsrtp.Policy(key=profile.get_key_and_salt(material, 0),
                              ssrc_type=pylibsrtp.Policy.SSRC_ANY_OUTBOUND, srtp_profile=profile.libsrtp_profile)
        self.rx, self.tx = pylibsrtp.Session(rx), pylibsrtp.Session(tx)
        self.srtp_profile = selected.decode()

    def _on_dtls(self, data: bytes) -> None:
        if self.ssl is None or self._dtls_done is None:
            return
        self.ssl.bio_write(data)
        if not self._dtls_done.done():
            self._handshake()
        else:
            with contextlib.suppress(SSL.Error):
                self.ssl.recv(1500)  # a close_notify or a retransmitted Finished
            self._flush_dtls()

    def _send_pli(self, now: float) -> None:
        """Ask for a keyframe (the first one never completed), as a browser would."""
        self._next_pli = now + 1.0
        if self.tx is None or self.video_ssrc < 0:
            return
        pli = struct.pack("!BBHII", 0x81, 206, 2, self.rtcp_ssrc, self.video_ssrc)
        with contextlib.suppress(pylibsrtp.Error):
            self._send(self.tx.protect_rtcp(pli))

    # --- the receive path (hot) -------------------------------------------------------------------

    def _on_readable(self) -> None:
        # One datagram per call: epoll is level-triggered, so the loop calls again while more are queued, and
        # a second recvmsg that fails with EAGAIN would cost a system call and an exception per wake-up.
        sock = self.sock
        if sock is None:
            return
        try:
            data, anc, _flags, _addr = sock.recvmsg(2048, 64)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:  # ICMP unreachable: the server is gone
            self.socket_errors += 1
            return
        if anc:
            sec, nsec = _TIMESPEC.unpack_from(anc[0][2])
            t = sec + nsec * 1e-9
        else:
            t = time.time()
        first = data[0]
        if 127 < first < 192 and len(data) >= 12:
            if 191 < data[1] < 224:
                self.rtcp_packets += 1
            else:
                self._on_rtp(data, t)
        elif first < 4:
            self._on_stun(data)
        elif 19 < first < 64:
            self._on_dtls(data)

    def _on_rtp(self, data: bytes, t: float) -> None:
        seq, ts, ssrc = _SEQ_TS_SSRC.unpack_from(data, 2)
        if ssrc == self.video_ssrc:
            seen = self._video_seen
        elif ssrc == self.audio_ssrc:
            seen = self._audio_seen
        else:
            self.other_packets += 1
            return
        if not seen.fresh(seq):
            self.duplicates += 1
            return
        size = len(data)
        self.bytes += size
        window = self.window
        in_window = window.t0 <= t < window.t1
        if in_window:
            self.win_packets += 1
            self.win_bytes += size
        if ssrc == self.video_ssrc:
            self.video_packets += 1
            if self.ttff is None:
                self._assemble(data, seq, ts, t)
            elif in_window:
                seq_off = self.seq_off
                if seq_off is not None:
                    record = self.log.records.get((seq - seq_off) & 0xFFFF)
                    # (packets sent before we connected are the server's replay of the GOP: not a latency)
                    if (record is not None and record[0] == (ts - self.ts_off) & 0xFFFFFFFF
                            and record[1] >= self.dtls_at):
                        self.latencies.append(t - record[1])
            if self.video_packets % self.sample_every == 0:
                self._verify(data, seq, ts)
            if in_window and self.video_packets % LAG_SAMPLE_EVERY == 0:
                self.lags.append(time.time() - t)
        else:
            self.audio_packets += 1
            if self.audio_packets % self.sample_every == 0:
                self._verify_audio(data)

    def _decrypt(self, data: bytes) -> tuple[bytes, int, int] | None:
        """(plaintext, end of header extension, end of payload), or None if it does not authenticate."""
        try:
            plain = self.rx.unprotect(data)  # type: ignore[union-attr]
            _, ext_end, end = split(plain)
        except (pylibsrtp.Error, ValueError):
            return None
        return plain, ext_end, end

    def _learn_offsets(self, plain: bytes, ext_end: int, seq: int, ts: int) -> bool:
        """Find the publisher's packet with this payload: this player's seq/ts offsets follow."""
        pub_seq = self.log.by_hash.get(hash(plain[ext_end:]))
        if pub_seq is None:
            return False
        record = self.log.records.get(pub_seq)
        if record is None:
            return False
        self.seq_off = (seq - pub_seq) & 0xFFFF
        self.ts_off = (ts - record[0]) & 0xFFFFFFFF
        return True

    def _matches_publisher(self, plain: bytes, ext_end: int, seq: int, ts: int) -> bool | None:
        if self.seq_off is None:
            return None
        record = self.log.records.get((seq - self.seq_off) & 0xFFFF)
        if record is None or record[0] != (ts - self.ts_off) & 0xFFFFFFFF:
            return None  # too old to check
        return record[2] == hash(plain[ext_end:])

    def _assemble(self, data: bytes, seq: int, ts: int, t: float) -> None:
        """Decrypt until the first keyframe is complete: that is the time to first frame."""
        if self._kf_ts is not None and ts != self._kf_ts:
            # A later frame: the keyframe should be complete. If not (a lost packet), look for another one.
            if t - self._kf_started_at > 1.0 and self._kf_last is None:
                self._kf_ts = None
            elif self._kf_last is not None and len(self._kf_seen) < ((self._kf_last - self._kf_first) & 0xFFFF) + 1:
                if t - self._kf_started_at > 0.5:
                    self._kf_ts = None
            return
        decrypted = self._decrypt(data)
        if decrypted is None:
            return
        plain, ext_end, end = decrypted
        if self._kf_ts is None:
            if self.probe is None or self.probe(plain, ext_end, end) is None:
                return  # not the start of a keyframe
            self._kf_ts, self._kf_first, self._kf_last = ts, seq, None
            self._kf_seen = set()
            self._kf_started_at = t
            self._kf_bad = 0
        if self.seq_off is None:
            self._learn_offsets(plain, ext_end, seq, ts)
        if self._matches_publisher(plain, ext_end, seq, ts) is not True:  # wrong, or matching nothing sent
            self._kf_bad += 1
        self._kf_seen.add(seq)
        if data[1] & 0x80:
            self._kf_last = seq
        if self._kf_last is not None and len(self._kf_seen) == ((self._kf_last - self._kf_first) & 0xFFFF) + 1:
            self.first_frame_at = t
            self.ttff = t - self.play_sent_at
            self.keyframe_intact = self._kf_bad == 0 and self.seq_off is not None
            self._kf_seen = set()

    def _verify(self, data: bytes, seq: int, ts: int) -> None:
        self.sampled += 1
        decrypted = self._decrypt(data)
        if decrypted is None:
            self.sample_bad += 1
            return
        plain, ext_end, _ = decrypted
        if self.seq_off is None:
            self._learn_offsets(plain, ext_end, seq, ts)
        match = self._matches_publisher(plain, ext_end, seq, ts)
        if match is True:
            self.sample_ok += 1
        else:  # another payload, or none the publisher sent under this sequence number and timestamp
            self.sample_bad += 1
            self.sample_unmatched += match is None

    def _verify_audio(self, data: bytes) -> None:
        """An audio sample: it must authenticate and carry a payload the publisher sent (the clip repeats, so
        the payload alone identifies it; no offsets are needed)."""
        self.sampled += 1
        decrypted = self._decrypt(data)
        if decrypted is not None and hash(decrypted[0][decrypted[1]:]) in self.log.audio_hashes:
            self.sample_ok += 1
        else:
            self.sample_bad += 1
            self.sample_unmatched += decrypted is not None

    # --- window and teardown ------------------------------------------------------------------------

    def reset_window(self) -> None:
        self.win_packets = self.win_bytes = 0
        self.latencies = []
        self.lags = []

    def _on_terminal(self, status: str, info: str | None) -> None:
        if self.failed is None and not self.closed:
            self.failed = f"{status}: {info}"

    async def stop(self) -> None:
        self.closed = True
        if self.sock is not None:
            with contextlib.suppress(Exception):
                asyncio.get_running_loop().remove_reader(self.sock.fileno())
            self.sock.close()
            self.sock = None
        if self.conn is not None:
            await self.conn.close()
