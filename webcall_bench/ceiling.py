"""The ceiling: what the minimal Python forwarding loop costs on this machine, in µs per forwarded packet.

    UDP receive → SRTP unprotect → (per player: header rewrite → SRTP protect → sendto)

Nothing else: no ring, no keyframe probe, no extension rewriting, no event loop. The server can't be cheaper
than this in Python, so its own µs/packet reads as a ratio to this figure.

Run as `python -m webcall_bench.ceiling --fanout 100 --packets 3000` (prints JSON). It runs in a process of
its own so it does not share an interpreter with the load generator; the sockets it sends to are drained by
a forked child, so sendto pays for delivery into a live socket as the server's does.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import selectors
import signal
import socket
import struct
import sys

import pylibsrtp
from pylibsrtp._binding import ffi, lib

HEADER = struct.Struct("!BBHII")
BURST = 32


def _profile(name: str) -> int:
    profiles = {"gcm": pylibsrtp.Policy.SRTP_PROFILE_AEAD_AES_128_GCM,
                "cm": pylibsrtp.Policy.SRTP_PROFILE_AES128_CM_SHA1_80}
    return profiles[name]


def _key_length(profile: int) -> int:
    return 28 if profile == pylibsrtp.Policy.SRTP_PROFILE_AEAD_AES_128_GCM else 30


def _thread_cpu() -> tuple[float, float]:
    """(user, system) CPU seconds of the calling thread."""
    usage = resource.getrusage(resource.RUSAGE_THREAD)
    return usage.ru_utime, usage.ru_stime


def _drain(sinks: list[socket.socket]) -> None:
    selector = selectors.DefaultSelector()
    for sink in sinks:
        sink.setblocking(False)
        selector.register(sink, selectors.EVENT_READ)
    while True:
        for key, _ in selector.select():
            sock = key.fileobj
            try:
                while True:
                    sock.recv(2048)  # type: ignore[union-attr]
            except BlockingIOError:
                pass


def measure(fanout: int = 100, packets: int = 3000, payload_size: int = 1100, profile_name: str = "gcm") -> dict:
    profile = _profile(profile_name)
    key_length = _key_length(profile)

    def session(key: bytes, inbound: bool) -> pylibsrtp.Session:
        policy = pylibsrtp.Policy(
            key=key, srtp_profile=profile,
            ssrc_type=pylibsrtp.Policy.SSRC_ANY_INBOUND if inbound else pylibsrtp.Policy.SSRC_ANY_OUTBOUND)
        policy.allow_repeat_tx = True
        policy.window_size = 1024
        return pylibsrtp.Session(policy)

    publisher_key = os.urandom(key_length)
    publisher = session(publisher_key, False)

    fwd = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    fwd.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    fwd.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
    fwd.bind(("127.0.0.1", 0))
    fwd_addr = fwd.getsockname()
    feeder = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)

    sinks = []
    for _ in range(fanout):
        sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sink.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        sink.bind(("127.0.0.1", 0))
        sinks.append(sink)
    cpus = sorted(os.sched_getaffinity(0))
    drainer = os.fork()
    if drainer == 0:  # child: read everything, until killed
        try:
            if len(cpus) > 1:
                os.sched_setaffinity(0, cpus[:-1])
            _drain(sinks)
        finally:
            os._exit(0)
    if len(cpus) > 1:  # the loop on the CPU the bench gives the server, the drainer elsewhere
        os.sched_setaffinity(0, {cpus[-1]})
    try:
        players = [
            (session(os.urandom(key_length), False), sink.getsockname(), int.from_bytes(os.urandom(4), "big"),
             int.from_bytes(os.urandom(2), "big"), int.from_bytes(os.urandom(4), "big"))
            for sink in sinks
        ]
        for sink in sinks:
            sink.close()
        # A browser-like packet: one-byte header extensions (mid, abs-send-time), a VP8-sized payload.
        ext = struct.pack("!HH", 0xBEDE, 2) + bytes([0x10, 0x31, 0x22, 0x01, 0x02, 0x03, 0, 0])
        payload = os.urandom(payload_size)
        warmup = min(320, packets // 4)
        datagrams = [
            publisher.protect(HEADER.pack(0x90, 96 | (0x80 if seq % 3 == 2 else 0), seq & 0xFFFF,
                                          (seq // 3) * 3000, 0x1234) + ext + payload)
            for seq in range(warmup + packets)
        ]

        def run_naive(fan: list) -> tuple[float, int]:
            """pylibsrtp's API as documented: protect() returns new bytes, sendto() sends them."""
            rx = session(publisher_key, True)  # fresh: the same packets again would be replays
            sendto, recv, unprotect, pack, unpack = fwd.sendto, fwd.recv, rx.unprotect, HEADER.pack, HEADER.unpack_from
            clock = _thread_cpu  # a system call: read once per burst, never per packet
            user = system = 0.0
            measured = 0
            for start in range(0, len(datagrams), BURST):
                burst = datagrams[start : start + BURST]
                for datagram in burst:  # not timed: this is the publisher's side
                    feeder.sendto(datagram, fwd_addr)
                u0, s0 = clock()
                for _ in burst:
                    plain = unprotect(recv(2048))
                    b0, b1, seq, ts, _ssrc = unpack(plain, 0)
                    tail = plain[12:]
                    for tx, addr, ssrc, seq_off, ts_off in fan:
                        sendto(tx.protect(pack(b0, b1, (seq + seq_off) & 0xFFFF, (ts + ts_off) & 0xFFFFFFFF, ssrc)
                                          + tail), addr)
                if start >= warmup:
                    u1, s1 = clock()
                    user += u1 - u0
                    system += s1 - s0
                    measured += len(burst)
            return user + system, measured, system

        def run_inplace(fan: list) -> tuple[float, int]:
            """The least Python can do: recv_into, unprotect in place, then per player pack_into, one copy of the
            payload, protect in place (libsrtp through cffi) and sendto of a memoryview: no allocation per
            forwarded packet."""
            rx = session(publisher_key, True)
            rbuf = ffi.new("char[]", 2048)
            rview = memoryview(ffi.buffer(rbuf))
            out = ffi.new("char[]", 2048)
            oview = memoryview(ffi.buffer(out))
            length = ffi.new("int *")
            rx_ctx = rx._srtp[0]
            contexts = [(tx._srtp[0], addr, ssrc, seq_off, ts_off) for tx, addr, ssrc, seq_off, ts_off in fan]
            srtp_protect, srtp_unprotect = lib.srtp_protect, lib.srtp_unprotect
            recv_into, sendto, pack_into, unpack = fwd.recv_into, fwd.sendto, HEADER.pack_into, HEADER.unpack_from
            clock = _thread_cpu
            user = system = 0.0
            measured = 0
            for start in range(0, len(datagrams), BURST):
                burst = datagrams[start : start + BURST]
                for datagram in burst:
                    feeder.sendto(datagram, fwd_addr)
                u0, s0 = clock()
                for _ in burst:
                    length[0] = recv_into(rview)
                    if srtp_unprotect(rx_ctx, rbuf, length):
                        raise RuntimeError("unprotect failed")
                    n = length[0]
                    b0, b1, seq, ts, _ssrc = unpack(rview, 0)
                    tail = rview[12:n]
                    for ctx, addr, ssrc, seq_off, ts_off in contexts:
                        pack_into(oview, 0, b0, b1, (seq + seq_off) & 0xFFFF, (ts + ts_off) & 0xFFFFFFFF, ssrc)
                        oview[12:n] = tail  # the previous player's protect encrypted it in place
                        length[0] = n
                        srtp_protect(ctx, out, length)
                        sendto(oview[: length[0]], addr)
                if start >= warmup:
                    u1, s1 = clock()
                    user += u1 - u0
                    system += s1 - s0
                    measured += len(burst)
            return user + system, measured, system

        def fresh(fan: list) -> list:
            return [(session(os.urandom(key_length), False), addr, ssrc, seq_off, ts_off)
                    for _, addr, ssrc, seq_off, ts_off in fan]

        # Each loop at fan-out N, then at fan-out 1: the per-input and per-output costs apart
        # (cost = in + N × out). Every run gets new player sessions: the same sequence numbers again are replays.
        figures = {}
        sys_share: dict[str, float] = {}
        measured = 0
        for name, run in (("inplace", run_inplace), ("naive", run_naive)):
            spent_n, measured, system_n = run(fresh(players))
            spent_1, _, _ = run(fresh(players[:1]))
            figures[name] = (spent_n / measured, spent_1 / measured)
            sys_share[name] = system_n / spent_n if spent_n else 0.0
    finally:
        os.kill(drainer, signal.SIGKILL)
        os.waitpid(drainer, 0)
        fwd.close()
        feeder.close()

    def split(per_input_n: float, per_input_1: float) -> tuple[float, float]:
        """(per input packet, per output packet) seconds from the fan-out N and fan-out 1 runs."""
        if fanout > 1:
            out_s = max(0.0, (per_input_n - per_input_1) / (fanout - 1))
            return max(0.0, per_input_1 - out_s), out_s
        return 0.0, per_input_1

    in_s, out_s = split(*figures["inplace"])
    naive_in, naive_out = split(*figures["naive"])
    return {
        "fanout": fanout,
        "input_packets": measured,
        "forwarded_packets": measured * fanout,
        "payload_bytes": payload_size,
        "srtp_profile": profile_name,
        # The ceiling: the in-place loop.
        "us_per_input_packet": round(1e6 * in_s, 3),  # receive + unprotect, once per publisher packet
        "us_per_output_packet": round(1e6 * out_s, 3),  # rewrite + protect + sendto, once per player
        "us_per_forwarded_packet": round(1e6 * figures["inplace"][0] / fanout, 3),  # at this fan-out
        "sys_share": round(sys_share["inplace"], 3),  # of that, the kernel's part (sendto, loopback delivery)
        # The same loop through pylibsrtp's documented API (new bytes for every protect), for comparison.
        "naive_us_per_input_packet": round(1e6 * naive_in, 3),
        "naive_us_per_output_packet": round(1e6 * naive_out, 3),
        "naive_us_per_forwarded_packet": round(1e6 * figures["naive"][0] / fanout, 3),
    }


def cost_at(ceiling: dict, fanout: float) -> float:
    """µs per forwarded packet of the minimal loop at another fan-out (the linear model above)."""
    return ceiling["us_per_output_packet"] + ceiling["us_per_input_packet"] / max(fanout, 1.0)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="webcall_bench.ceiling", description=__doc__.split("\n\n")[0])
    parser.add_argument("--fanout", type=int, default=100)
    parser.add_argument("--packets", type=int, default=3000)
    parser.add_argument("--payload", type=int, default=1100)
    parser.add_argument("--profile", choices=("gcm", "cm"), default="gcm")
    args = parser.parse_args(argv)
    json.dump(measure(args.fanout, args.packets, args.payload, args.profile), sys.stdout)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
