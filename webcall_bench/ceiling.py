"""The ceiling: what the minimal Python forwarding loop costs on this machine, in µs per forwarded packet.

    UDP receive → SRTP unprotect → (per player: header rewrite → SRTP protect → sendto)

Nothing else: no ring, no keyframe probe, no extension rewriting, no event loop. The server can't be cheaper
than this in Python, so its own µs/packet reads as a ratio to this figure.

Run as `python -m webcall_bench.ceiling --fanout 100 --packets 3000` (prints JSON).

`--compiled --fanouts 10,100,200` measures the *compiled* ceiling instead: the same per-player work in a tight
C loop built with the fan-out core (`wc_bench_forward` in webcall/media/fanout.c: recv, `srtp_unprotect` in
place, then the very loop `wc_fanout` runs — header rewrite, copy, `srtp_protect` in place with pylibsrtp's
libsrtp, one `sendmmsg` for all players), one publisher packet per call, paced at the stream's packet rate
with the stream's packet sizes (`--sizes` on stdin), so player state goes as cold between packets as it does in
the server. Its µs per forwarded packet, split user/kernel, and `fixed + N × per-player` per publisher packet. It runs in a process of
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
import time
from typing import Any

import pylibsrtp
from pylibsrtp._binding import ffi, lib

HEADER = struct.Struct("!BBHII")
BURST = 32
MIN_ROUNDS = 2  # the Python ceiling's runs of each loop, at least...
MAX_ROUNDS = 50  # ...and at most, until it has spent...
MIN_CPU_SECONDS = 0.3  # ...this much CPU


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


def _burst_clock() -> tuple[float, float]:
    """(all, system) CPU seconds of the calling thread. The total is CLOCK_THREAD_CPUTIME_ID, which is exact;
    getrusage's user/system split is sampled once per tick, so only its system part is used, as a share."""
    return time.thread_time(), resource.getrusage(resource.RUSAGE_THREAD).ru_stime


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
            clock = _burst_clock  # system calls: read once per burst, never per packet
            spent = system = 0.0
            measured = 0
            for start in range(0, len(datagrams), BURST):
                burst = datagrams[start : start + BURST]
                for datagram in burst:  # not timed: this is the publisher's side
                    feeder.sendto(datagram, fwd_addr)
                c0, s0 = clock()
                for _ in burst:
                    plain = unprotect(recv(2048))
                    b0, b1, seq, ts, _ssrc = unpack(plain, 0)
                    tail = plain[12:]
                    for tx, addr, ssrc, seq_off, ts_off in fan:
                        sendto(tx.protect(pack(b0, b1, (seq + seq_off) & 0xFFFF, (ts + ts_off) & 0xFFFFFFFF, ssrc)
                                          + tail), addr)
                if start >= warmup:
                    c1, s1 = clock()
                    spent += c1 - c0
                    system += s1 - s0
                    measured += len(burst)
            return spent, measured, system

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
            clock = _burst_clock
            spent = system = 0.0
            measured = 0
            for start in range(0, len(datagrams), BURST):
                burst = datagrams[start : start + BURST]
                for datagram in burst:
                    feeder.sendto(datagram, fwd_addr)
                c0, s0 = clock()
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
                    c1, s1 = clock()
                    spent += c1 - c0
                    system += s1 - s0
                    measured += len(burst)
            return spent, measured, system

        def fresh(fan: list) -> list:
            return [(session(os.urandom(key_length), False), addr, ssrc, seq_off, ts_off)
                    for _, addr, ssrc, seq_off, ts_off in fan]

        # Each loop at fan-out N, then at fan-out 1: the per-input and per-output costs apart
        # (cost = in + N × out). Every run gets new player sessions: the same sequence numbers again are replays.
        # The pair is run again until the loop has spent MIN_CPU_SECONDS, and the cheapest run of each fan-out
        # counts: at a small fan-out one run is a millisecond, and one preemption or cold cache in either of
        # the two could swing the difference to below zero.
        figures = {}
        sys_share: dict[str, float] = {}
        measured = 0
        for name, run in (("inplace", run_inplace), ("naive", run_naive)):
            best_n = best_1 = float("inf")
            total = system_total = spent_total = 0.0
            rounds = 0
            while rounds < MIN_ROUNDS or (total < MIN_CPU_SECONDS and rounds < MAX_ROUNDS):
                spent_n, measured, system_n = run(fresh(players))
                spent_1, _, _ = run(fresh(players[:1]))
                best_n, best_1 = min(best_n, spent_n / measured), min(best_1, spent_1 / measured)
                total += spent_n + spent_1
                spent_total += spent_n
                system_total += system_n
                rounds += 1
            figures[name] = (best_n, best_1)
            sys_share[name] = system_total / spent_total if spent_total else 0.0
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


def fit_linear(points: list[tuple[float, float]]) -> tuple[float, float] | None:
    """(fixed, slope) of y = fixed + slope × x by least squares, or None with fewer than two distinct x."""
    if len({x for x, _ in points}) < 2:
        return None
    n = len(points)
    mx = sum(x for x, _ in points) / n
    my = sum(y for _, y in points) / n
    sxx = sum((x - mx) ** 2 for x, _ in points)
    slope = sum((x - mx) * (y - my) for x, y in points) / sxx
    return my - slope * mx, slope


def stream_sizes(video_frames: list[int], audio_frames: list[int], fps: float, seconds: float,
                 max_payload: int = 1200) -> list[list]:
    """[payload size, kind] of the packets a publisher sends for these frames, in time order: each video frame
    split into packets of at most `max_payload` bytes (as aiortc's packetizers do), one packet per 20 ms audio
    frame, `seconds` long (the audio clip looped). Kind "v" or "a": two SSRCs, two libsrtp streams per player."""
    events: list[tuple[float, int, str]] = []
    for i, size in enumerate(video_frames):
        count = max(1, -(-size // max_payload))
        events += [(i / fps, -(-size // count), "v")] * count
    if audio_frames:
        for k in range(round(seconds * 50)):
            events.append((k * 0.02, audio_frames[k % len(audio_frames)], "a"))
    events.sort(key=lambda e: e[0])
    return [[size, kind] for _, size, kind in events]


UNPACED_CHUNK = 1000  # packets queued on the loop's socket at once: well under the ≈ 3,500 its buffer holds


def measure_compiled(fanouts: list[int], packets: int = 300, sizes: list | None = None,
                     rate: float = 133.0, profile_name: str = "gcm") -> dict:
    """The compiled ceiling at each fan-out (see the module's docstring)."""
    import time

    from webcall.media import fanout as core
    from webcall.media.srtp import SrtpSession, sockaddr

    lib = core.load_library()
    if lib is None:
        raise RuntimeError(f"the compiled ceiling needs the fan-out core: {core.load_error()}")
    profile = _profile(profile_name)
    key_length = _key_length(profile)
    mix = [(item, "v") if isinstance(item, int) else (int(item[0]), str(item[1])) for item in sizes or [1100]]
    step = max(1, len(mix) // max(packets, 1))  # the whole stream's mix, sampled evenly
    chosen = [mix[(i * step) % len(mix)] for i in range(packets)]
    warmup = 16

    def session(key: bytes, inbound: bool) -> pylibsrtp.Session:
        policy = pylibsrtp.Policy(
            key=key, srtp_profile=profile,
            ssrc_type=pylibsrtp.Policy.SSRC_ANY_INBOUND if inbound else pylibsrtp.Policy.SSRC_ANY_OUTBOUND)
        policy.allow_repeat_tx = True
        policy.window_size = 1024
        return pylibsrtp.Session(policy)

    publisher_key = os.urandom(key_length)
    publisher = session(publisher_key, False)
    ext = struct.pack("!HH", 0xBEDE, 2) + bytes([0x10, 0x31, 0x22, 0x01, 0x02, 0x03, 0, 0])
    # Audio and video as the publisher sends them: an SSRC each, with its own sequence numbers and clock.
    datagrams: list[tuple[bytes, str]] = []
    counters = {"v": 0, "a": 0}
    for size, kind in chosen[:warmup] + chosen:
        seq = counters[kind]
        counters[kind] += 1
        header = (HEADER.pack(0x90, 96 | (0x80 if seq % 3 == 2 else 0), seq & 0xFFFF, (seq // 3) * 3000, 0x1234)
                  if kind == "v" else HEADER.pack(0x90, 111, seq & 0xFFFF, seq * 960, 0x5678))
        datagrams.append((publisher.protect(header + ext + os.urandom(size)), kind))

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and max(fanouts) + 64 > hard:
        raise RuntimeError(f"fan-out {max(fanouts)} needs as many sockets; the file limit is {hard}")
    if soft != resource.RLIM_INFINITY and max(fanouts) + 64 > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # one socket per player
    fwd = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    fwd.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    fwd.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
    fwd.bind(("127.0.0.1", 0))
    fwd.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, struct.pack("ll", 5, 0))  # a waiting recv gives up
    fwd_addr = fwd.getsockname()
    feeder = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sinks = []
    for _ in range(max(fanouts)):
        sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sink.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        sink.bind(("127.0.0.1", 0))
        sinks.append(sink)
    addresses = [sink.getsockname() for sink in sinks]
    cpus = sorted(os.sched_getaffinity(0))
    drainer = os.fork()
    if drainer == 0:
        try:
            if len(cpus) > 1:
                os.sched_setaffinity(0, cpus[:-1])
            _drain(sinks)
        finally:
            os._exit(0)
    if len(cpus) > 1:
        os.sched_setaffinity(0, {cpus[-1]})
    for sink in sinks:
        sink.close()
    sender = core.ffi.gc(lib.wc_sender_new(fwd.fileno(), core.SEND_CAPACITY, core.srtp_function_pointer()),
                         lib.wc_sender_free)
    unprotect = core.srtp_function_pointer("srtp_unprotect")
    rbuf = core.ffi.new("char[]", 2048)
    interval = 1.0 / rate if rate > 0 else 0.0
    results = {}
    try:
        for fanout in fanouts:
            keep = []  # the sessions and addresses the targets point into
            targets: dict[str, list] = {"v": [], "a": []}
            for addr in addresses[:fanout]:
                tx = SrtpSession(session(os.urandom(key_length), False))  # one session per player, as a transport
                name = sockaddr(addr)
                keep.append((tx, name))
                for kind, payload_type in (("v", 96), ("a", 111)):
                    targets[kind].append(core.FanoutCore.new_target(
                        tx, name, int.from_bytes(os.urandom(4), "big"), payload_type,
                        int.from_bytes(os.urandom(2), "big"), int.from_bytes(os.urandom(4), "big"), 0))
            arrays = {kind: core.FanoutCore.target_array(group) for kind, group in targets.items()}
            forward, forward_wait, fd = lib.wc_bench_forward, lib.wc_bench_forward_wait, fwd.fileno()

            def new_pass() -> tuple[pylibsrtp.Session, Any]:
                """A fresh inbound session (the same packets again would be replays) and its context for the C
                loop; keep the session while the context is used. Each pass sends the same packets again: moved
                past the last pass's sequence numbers, a player's packets stay new to its outbound session, whose
                replay window would refuse them once a pass is longer than the window (libsrtp: replay_old)."""
                rx = session(publisher_key, True)
                for group in targets.values():
                    for target in group:
                        target.seq_offset += len(datagrams)
                return rx, core.ffi.cast("void *", int(core.srtp_ffi.cast("uintptr_t", rx._srtp[0])))

            def wait_turn(last_at: float) -> float:
                """Sleep until the next packet's turn at the stream's pace (`last_at` the previous one's); returns it."""
                next_at = last_at + interval
                delay = next_at - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                return next_at

            def run(paced: bool) -> tuple[int, int, int, float, float]:
                """(CPU ns in the calls, publisher packets, datagrams queued, user s, sys s) of one pass."""
                rx, rx_ctx = new_pass()
                spent = measured = sent = 0
                user = system = 0.0
                # Unpaced, the packets are queued up front, so that the getrusage span holds nothing but the
                # calls; a chunk at a time, as many as the socket's receive buffer surely holds.
                chunk = len(datagrams) if paced else UNPACED_CHUNK
                for start in range(0, len(datagrams), chunk):
                    part = datagrams[start:start + chunk]
                    if not paced:
                        for datagram, _ in part:
                            feeder.sendto(datagram, fwd_addr)
                    u0, s0 = _thread_cpu()
                    next_at = time.monotonic()
                    for i, (datagram, kind) in enumerate(part, start):
                        if paced:
                            next_at = wait_turn(next_at)
                            feeder.sendto(datagram, fwd_addr)
                        # CLOCK_THREAD_CPUTIME_ID is exact; getrusage's user/sys are tick samples (see below).
                        t0 = time.thread_time_ns()
                        queued = forward(sender, fd, rx_ctx, unprotect, rbuf, 2048, arrays[kind], fanout)
                        t1 = time.thread_time_ns()
                        if queued != fanout:
                            raise RuntimeError(f"the compiled loop queued {queued} of {fanout} datagrams")
                        if i >= warmup:
                            spent += t1 - t0
                            measured += 1
                            sent += queued
                    u1, s1 = _thread_cpu()
                    user, system = user + u1 - u0, system + s1 - s0
                return spent, measured, sent, user, system

            def run_woken() -> tuple[int, int]:
                """(CPU ns of this thread over the pass, datagrams queued) with the loop waiting in recv(2) for each
                packet, which a feeder process on another CPU sends at the pace: the wake-up per packet counted, as
                a server's receiving thread pays it (the paced pass above times the calls alone)."""
                rx, rx_ctx = new_pass()
                feeder_pid = os.fork()
                if feeder_pid == 0:  # child: send the stream at its pace, then leave
                    try:
                        if len(cpus) > 1:
                            os.sched_setaffinity(0, cpus[:-1])
                        time.sleep(0.05)  # the loop is waiting in recv before the first packet
                        next_at = time.monotonic()
                        for datagram, _ in datagrams:
                            next_at = wait_turn(next_at)
                            feeder.sendto(datagram, fwd_addr)
                    finally:
                        os._exit(0)
                start = queued_total = 0
                try:
                    for i, (_, kind) in enumerate(datagrams):
                        if i == warmup:
                            start = time.thread_time_ns()
                        queued = forward_wait(sender, fd, rx_ctx, unprotect, rbuf, 2048, arrays[kind], fanout)
                        if queued != fanout:
                            raise RuntimeError(f"the waiting loop queued {queued} of {fanout} datagrams")
                        if i >= warmup:
                            queued_total += queued
                    return time.thread_time_ns() - start, queued_total
                finally:
                    os.waitpid(feeder_pid, 0)

            # The cost: paced, one packet at a time, as the server gets them. The user/kernel split: the kernel
            # samples it once per tick, too rarely in a paced run that is mostly asleep, so it comes from the
            # same packets sent back to back (no sleeps: every tick lands in this work), as a share of the whole.
            spent, measured, sent, _, _ = run(True)
            woken, woken_sent = run_woken()
            busy_user = busy_sys = 0.0
            busy_sent = 0
            for _ in range(100):  # until ~100 ticks (0.4 s) of samples, so small fan-outs get enough of them
                if busy_user + busy_sys >= 0.4:
                    break
                _, _, busy_n, user, system = run(False)
                busy_user += user
                busy_sys += system
                busy_sent += busy_n
            kernel_share = busy_sys / (busy_user + busy_sys) if busy_user + busy_sys > 0 else 0.0
            forwarded = max(sent, 1)
            per_packet = spent / 1000 / forwarded
            results[str(fanout)] = {
                "fanout": fanout,
                "input_packets": measured,
                "us_per_forwarded_packet": round(per_packet, 3),
                "us_user_per_forwarded_packet": round(per_packet * (1 - kernel_share), 3),
                "us_sys_per_forwarded_packet": round(per_packet * kernel_share, 3),
                "sys_share": round(kernel_share, 3),
                "us_per_publisher_packet": round(spent / 1000 / max(measured, 1), 2),
                # back to back, warm (getrusage over the passes, the pacing left out): what pacing costs
                "us_per_forwarded_packet_unpaced": round(1e6 * (busy_user + busy_sys) / max(busy_sent, 1), 3),
                # paced and waiting in recv for each packet (in the call): the thread's whole CPU, wake-ups included
                "us_per_forwarded_packet_woken": round(woken / 1000 / max(woken_sent, 1), 3),
            }
            del arrays, targets, keep
    finally:
        os.kill(drainer, signal.SIGKILL)
        os.waitpid(drainer, 0)
        fwd.close()
        feeder.close()
    fit = fit_linear([(r["fanout"], r["us_per_publisher_packet"]) for r in results.values()])
    return {
        "kind": "compiled",
        "srtp_profile": profile_name,
        "rate_pps": rate,
        "mean_payload_bytes": round(sum(size for size, _ in chosen) / len(chosen), 1),
        "audio_share": round(sum(1 for _, kind in chosen if kind == "a") / len(chosen), 3),
        "fanouts": results,
        "fit": {"fixed_us": round(fit[0], 2), "per_player_us": round(fit[1], 3)} if fit else None,
    }


def compiled_cost_at(compiled: dict, fanout: float) -> float | None:
    """µs per forwarded packet of the compiled loop at this fan-out: measured there, else from the fit."""
    found = compiled["fanouts"].get(str(round(fanout)))
    if found and abs(fanout - round(fanout)) < 1e-9:
        return found["us_per_forwarded_packet"]
    fit = compiled.get("fit")
    if not fit or fanout <= 0:
        return None
    return fit["per_player_us"] + fit["fixed_us"] / fanout


def cost_at(ceiling: dict, fanout: float) -> float:
    """µs per forwarded packet of the minimal loop at another fan-out (the linear model above)."""
    return ceiling["us_per_output_packet"] + ceiling["us_per_input_packet"] / max(fanout, 1.0)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="webcall_bench.ceiling", description=__doc__.split("\n\n")[0])
    parser.add_argument("--fanout", type=int, default=100)
    parser.add_argument("--packets", type=int, default=3000)
    parser.add_argument("--payload", type=int, default=1100)
    parser.add_argument("--profile", choices=("gcm", "cm"), default="gcm")
    parser.add_argument("--compiled", action="store_true", help="the compiled ceiling (the fan-out core's loop)")
    parser.add_argument("--fanouts", default="1,10,100", help="with --compiled: the fan-outs to measure")
    parser.add_argument("--rate", type=float, default=133.0, help="with --compiled: publisher packets per second")
    parser.add_argument("--sizes", action="store_true",
                        help="with --compiled: read the stream's payload sizes (a JSON list) from stdin")
    args = parser.parse_args(argv)
    if args.compiled:
        sizes = json.load(sys.stdin) if args.sizes else [args.payload]
        fanouts = sorted({int(x) for x in args.fanouts.split(",") if x.strip()})
        json.dump(measure_compiled(fanouts, args.packets, sizes, args.rate, args.profile), sys.stdout)
        sys.stdout.write("\n")
        return
    json.dump(measure(args.fanout, args.packets, args.payload, args.profile), sys.stdout)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
