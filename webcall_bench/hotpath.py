"""In-process micro-benchmarks of the server's per-packet and per-tick Python, driving the real code.

Whole-server bench runs are too noisy on a shared machine to show a few-percent change; these time one piece
of the real hot path in one process, many times, and report the median and spread:

- `receive`: K publisher packets, SRTP-protected by a publisher session, through the real
  `WebRtcTransport.on_srtp` → `PublisherEndpoint.on_rtp` → `Producer.receive` → `TrackRouter.deliver` →
  compiled core (`wc_fanout`, libsrtp, sendmmsg) to N players with real SRTP sessions on 127.0.0.1.
- `sr`: one tick of sender reports (`PlayerEndpoint.on_tick`, two tracks each) for N players, and the same
  reports built by the compiled core (`SenderReports.run`, media/reports.py).

    python -m webcall_bench.hotpath --players 1,10 --repeat 9

The transports are the real classes' methods bound to small stand-ins (no ICE/DTLS handshake): the code timed is
the code the server runs per packet; what is left out (asyncio's datagram callback, the port's demux) is the
same before and after any change to the media path.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import struct
import time
from types import SimpleNamespace

import pylibsrtp

from webcall.media.consumer import Consumer
from webcall.media.endpoints import PlayerEndpoint, PublisherEndpoint
from webcall.media.fanout import FanoutCore, load_error, load_library
from webcall.media.producer import Producer
from webcall.media.reports import SenderReports
from webcall.media.router import TrackRouter
from webcall.media.srtp import SendBatch, SrtpSession
from webcall.media.transport import WebRtcTransport
from webcall.protocol.sdp import EXT_ABS_SEND_TIME, EXT_MID, EXT_TOFFSET, Codec, Track

PUB_SSRC = 0x01020304
GCM = pylibsrtp.Policy.SRTP_PROFILE_AEAD_AES_128_GCM


def _session(key: bytes, outbound: bool) -> pylibsrtp.Session:
    kind = pylibsrtp.Policy.SSRC_ANY_OUTBOUND if outbound else pylibsrtp.Policy.SSRC_ANY_INBOUND
    return pylibsrtp.Session(pylibsrtp.Policy(key=key, ssrc_type=kind, srtp_profile=GCM))


class _Transport:
    """The send half of a player's WebRtcTransport (real methods, real SRTP, a real socket to send to)."""

    def __init__(self, sock: socket.socket, inbox: socket.socket) -> None:
        self.port = SimpleNamespace(sock=sock)
        self.tx = SrtpSession(_session(os.urandom(28), True))
        self.addr = self.sockaddr = self.link = None
        self.ingest = None  # a player's transport has no ingest thread (media/ingest.py)
        self.state = "new"
        self.send_errors = 0
        self.send_raw = WebRtcTransport.send_raw.__get__(self)
        self.send_protected = WebRtcTransport.send_protected.__get__(self)
        self.send_rtcp = WebRtcTransport.send_rtcp.__get__(self)
        WebRtcTransport._send_to(self, inbox.getsockname())


def vp8() -> Codec:
    return Codec("VP8", 96, 90000, None, "", ("nack", "nack pli"), None)


def publisher_packets(count: int, start: int = 0, size: int = 1100, per_frame: int = 8,
                      gop: int = 240) -> list[bytes]:
    """Packets `start`.. of a VP8 stream with abs-send-time and toffset, a frame every `per_frame` packets, a
    keyframe every `gop`."""
    out = []
    for i in range(start, start + count):
        frame, index = divmod(i, per_frame)
        marker = index == per_frame - 1
        header = struct.pack("!BBHII", 0x90, (0x80 if marker else 0) | 96, i & 0xFFFF, frame * 3000, PUB_SSRC)
        header += struct.pack("!HH", 0xBEDE, 2) + bytes([0x22, i & 0xFF, 2, 3, 0x52, 0, 0, 9])
        if index == 0 and i % gop == 0:
            payload = bytes([0x10, 0x50, 0x01, 0x00, 0x9D, 0x01, 0x2A, 0x80, 0x02, 0xE0, 0x01])
        else:
            payload = bytes([0x10 if index == 0 else 0x00, 0x51, 0x01, 0x00])
        out.append(header + payload + bytes(size - len(payload)))
    return out


class ReceiveBench:
    """A publisher transport and endpoint (real methods), a producer, a router with the core, N players."""

    def __init__(self, players: int, lib) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.setblocking(False)
        self.inbox = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)  # all players share one (it just drops)
        self.inbox.bind(("127.0.0.1", 0))
        self.received = 0  # datagrams the players' shared inbox got (more than its buffer holds are dropped)
        track = Track("1", "video", vp8(), {EXT_ABS_SEND_TIME: 2, EXT_TOFFSET: 5, EXT_MID: 4}, PUB_SSRC)
        producer = Producer(track, send_nack=lambda *a: None, send_keyframe_request=lambda *a: None,
                            on_keyframe=lambda *a: None)
        core = FanoutCore(lib, self.sock) if lib is not None else None
        self.router = TrackRouter(producer, core=core, batch=SendBatch(self.sock))
        self.transports = [_Transport(self.sock, self.inbox) for _ in range(players)]
        self.consumers = [Consumer(producer, Track("v", "video", vp8(), {EXT_ABS_SEND_TIME: 3, EXT_MID: 1}), t)
                          for t in self.transports]
        key = os.urandom(28)
        self._pub_tx = _session(key, True)
        endpoint = SimpleNamespace(_by_ssrc={PUB_SSRC: producer}, _rtx_by_ssrc={}, media_started=True)
        endpoint.on_rtp = PublisherEndpoint.on_rtp.__get__(endpoint)
        self.endpoint = endpoint
        transport = SimpleNamespace(_rx=SrtpSession(_session(key, False)), listener=endpoint, rx_packets=0,
                                    rx_bytes=0, srtp_errors=0, ingest=None)
        transport.on_plain_rtp = WebRtcTransport.on_plain_rtp.__get__(transport)
        self.on_srtp = WebRtcTransport.on_srtp.__get__(transport)
        self.next_seq = 0
        for consumer in self.consumers:
            self.router.attach(consumer, 0.0)
        self.run(240)  # start every player on a keyframe, promote them to the core
        self.player_endpoints = []
        # The same players' reports built by the core (media/reports.py), for the `sr` comparison.
        self.reports = SenderReports(core, self.sock, (0.5, 1.3), 0.0) if core is not None else None
        python_only = SimpleNamespace(take_reports=lambda *args: False)  # the port's answer: "report in Python"
        for transport, consumer in zip(self.transports, self.consumers):
            # A player has an audio and a video track: a second consumer (not fed, started) stands for the audio.
            second = Consumer(producer, Track("a", "video", vp8(), {EXT_MID: 1}), transport)
            second.seq_offset = 0
            if core is not None:
                second.promote(core)
            endpoint = SimpleNamespace(consumers=[consumer, second], transport=transport, _next_rtcp=0.0,
                                       _reports_on_core=False, port=python_only)
            self.player_endpoints.append(PlayerEndpoint.on_tick.__get__(endpoint))
            if self.reports is not None:
                self.reports.take(transport, transport.tx, transport.sockaddr, endpoint.consumers, 0.0)

    def protected(self, count: int) -> list[bytes]:
        packets = publisher_packets(count, self.next_seq)
        self.next_seq += count
        return [self._pub_tx.protect(p) for p in packets]

    def run(self, count: int) -> float:
        """CPU seconds (user + system, this thread: time the machine's other load takes is not counted) to
        receive `count` publisher packets through the whole path."""
        datagrams = self.protected(count)
        on_srtp = self.on_srtp
        now = time.monotonic()
        self._drain()
        started = time.thread_time()
        for data in datagrams:
            on_srtp(data, now)
        elapsed = time.thread_time() - started
        self._drain()
        return elapsed

    def sender_reports(self) -> float:
        """CPU seconds for one tick's sender reports of every player."""
        now = time.monotonic()
        for endpoint in self.player_endpoints:
            endpoint.__self__._next_rtcp = 0.0
        started = time.thread_time()
        for on_tick in self.player_endpoints:
            on_tick(now)
        elapsed = time.thread_time() - started
        self._drain()
        return elapsed

    def core_sender_reports(self) -> float:
        """CPU seconds for the same reports built by the core (`SenderReports.run`, every player due)."""
        assert self.reports is not None
        for reporter in self.reports._reporters.values():
            reporter.struct.due_ns = 0
        started = time.thread_time()
        self.reports.run(time.monotonic())
        elapsed = time.thread_time() - started
        self._drain()
        return elapsed

    def _drain(self) -> None:
        self.inbox.setblocking(False)
        try:
            while True:
                self.inbox.recv(2048)
                self.received += 1
        except BlockingIOError:
            pass

    def close(self) -> None:
        self.sock.close()
        self.inbox.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m webcall_bench.hotpath", description=__doc__.split("\n")[0])
    parser.add_argument("--players", default="1,10", help="fan-outs to measure, comma-separated")
    parser.add_argument("--packets", type=int, default=2000, help="publisher packets per timed run")
    parser.add_argument("--repeat", type=int, default=9, help="timed runs per fan-out")
    parser.add_argument("--python", action="store_true", help="no compiled core: every player in Python")
    args = parser.parse_args(argv)
    lib = None if args.python else load_library()
    if lib is None and not args.python:
        raise SystemExit(f"fan-out core not usable: {load_error()}")
    for n in (int(x) for x in args.players.split(",")):
        bench = ReceiveBench(n, lib)
        try:
            bench.run(args.packets)  # warm
            runs = sorted(bench.run(args.packets) / args.packets * 1e6 for _ in range(args.repeat))
            srs = sorted(bench.sender_reports() / n * 1e6 for _ in range(args.repeat))
            core_srs = (sorted(bench.core_sender_reports() / n * 1e6 for _ in range(args.repeat))
                        if bench.reports is not None else None)
        finally:
            bench.close()
        core = (f" | core SR CPU µs/player median={statistics.median(core_srs):6.2f} min={core_srs[0]:6.2f} "
                f"max={core_srs[-1]:6.2f}" if core_srs else "")
        print(f"players={n:5d} receive CPU µs/publisher packet median={statistics.median(runs):7.2f} "
              f"min={runs[0]:7.2f} max={runs[-1]:7.2f} | SR CPU µs/player median={statistics.median(srs):6.2f} "
              f"min={srs[0]:6.2f} max={srs[-1]:6.2f}{core}", flush=True)


if __name__ == "__main__":
    main()
