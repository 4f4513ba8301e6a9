"""Micro-benchmark of the forwarding path alone: Producer.receive → TrackRouter.deliver → the compiled core or
Consumer.forward → SRTP protect → sendmmsg.

No network peers: each consumer's transport has real SRTP keys and sends real datagrams to a local UDP sink.
Prints µs per forwarded packet for a fan-out of N players.

    .venv/bin/python tools/microbench_fanout.py --players 100 --packets 2000 [--core python]
"""

from __future__ import annotations

import argparse
import os
import socket
import struct
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import pylibsrtp  # noqa: E402

from webcall.media.consumer import Consumer  # noqa: E402
from webcall.media.fanout import FanoutCore, load_error, load_library  # noqa: E402
from webcall.media.producer import Producer  # noqa: E402
from webcall.media.router import TrackRouter  # noqa: E402
from webcall.media.srtp import SendBatch, SrtpSession, sockaddr  # noqa: E402
from webcall.protocol.sdp import EXT_ABS_SEND_TIME, EXT_AUDIO_LEVEL, Codec, Track  # noqa: E402


class SinkPort:
    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 8 << 20)
        self.sock.setblocking(False)


class BenchTransport:
    """The send half of WebRtcTransport with the same code path (protect + sendto)."""

    def __init__(self, port: SinkPort, addr) -> None:
        from webcall.media.transport import WebRtcTransport
        self.port, self.addr = port, addr
        self.sockaddr = sockaddr(addr)
        policy = pylibsrtp.Policy(key=os.urandom(28), ssrc_type=pylibsrtp.Policy.SSRC_ANY_OUTBOUND,
                                  srtp_profile=pylibsrtp.Policy.SRTP_PROFILE_AEAD_AES_128_GCM)
        self.tx = SrtpSession(pylibsrtp.Session(policy))
        self.send_errors = 0
        self.send_rtp = WebRtcTransport.send_rtp.__get__(self)
        self.send_raw = WebRtcTransport.send_raw.__get__(self)


def main(players: int, packets: int, batch: bool = True, core: str = "c") -> None:
    sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sink.bind(("127.0.0.1", 0))
    sink.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
    addr = sink.getsockname()
    codec = Codec("VP8", 96, 90000, None, "", ("nack", "nack pli"), 97)
    track = Track("1", "video", codec, {EXT_ABS_SEND_TIME: 2, EXT_AUDIO_LEVEL: 1}, ssrc=1234, rtx_ssrc=5678)
    producer = Producer(track, send_nack=lambda *a: None, send_keyframe_request=lambda *a: None,
                        on_keyframe=lambda *a: None)
    port = SinkPort()
    fanout_core = None
    if core == "c":
        lib = load_library()
        if lib is None:
            sys.exit(f"no compiled core: {load_error()}")
        fanout_core = FanoutCore(lib, port.sock)
    # As the server does: one sendmmsg per publisher packet (unless --no-batch).
    router = TrackRouter(producer, core=fanout_core, batch=SendBatch(port.sock) if batch else None)
    for _ in range(players):
        consumer = Consumer(producer, Track("1", "video", codec, {EXT_ABS_SEND_TIME: 3}), BenchTransport(port, addr))
        consumer.needs_keyframe = False
        router.consumers.append(consumer)
    router._regroup()
    ext = struct.pack("!HH", 0xBEDE, 1) + bytes([0x22, 1, 2, 3])
    payload = bytes([0x10, 0, 0x9D]) + os.urandom(1100)
    batch = [struct.pack("!BBHII", 0x90, 96, seq & 0xFFFF, seq * 3000, 1234) + ext + payload
             for seq in range(packets)]
    t0 = time.process_time()  # CPU time of this process: steadier than wall time on a busy machine
    for index, packet in enumerate(batch):
        producer.receive(packet, index / 100)
    elapsed = time.process_time() - t0
    forwarded = sum(c.packets for c in router.consumers)
    errors = sum(c.transport.send_errors for c in router.consumers) + (fanout_core.dropped if fanout_core else 0)
    if errors:
        print(f"warning: {errors} sends failed (socket buffer full): the figure is not representative")
    print(f"core={core} players={players} publisher_packets={packets} forwarded={forwarded} "
          f"=> {1e6 * elapsed / forwarded:.2f} us per forwarded packet "
          f"({1e6 * elapsed / packets:.0f} us per publisher packet)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--players", type=int, default=100)
    parser.add_argument("--packets", type=int, default=2000)
    parser.add_argument("--no-batch", action="store_true", help="one sendto per player instead of sendmmsg")
    parser.add_argument("--core", choices=("c", "python"), default="c", help="compiled fan-out core or Python")
    args = parser.parse_args()
    main(args.players, args.packets, not args.no_batch, args.core)
