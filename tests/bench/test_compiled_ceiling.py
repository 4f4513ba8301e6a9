"""The compiled ceiling of `webcall bench`: the fan-out core's loop in C, fed one publisher packet at a time.

`wc_bench_forward` must do the server's per-player work for real — what the players receive must decrypt,
with their own keys, to the publisher's payload under their own SSRC, sequence and timestamp — or the ratio the
bench reports against it would be against a loop that skips work. The arithmetic around it (the fit, the mean
of two runs, the stream's packet mix) is checked on inputs with known answers.
"""

from __future__ import annotations

import os
import socket
import struct
import threading
import time

import pylibsrtp
import pytest

from webcall.media import fanout as core
from webcall.media.srtp import SrtpSession, sockaddr
from webcall_bench.ceiling import compiled_cost_at, fit_linear, measure_compiled, stream_sizes
from webcall_bench.runner import apply_compiled, cheaper_compiled, server_fit

KEY = bytes(range(28))  # AEAD_AES_128_GCM: 16-byte key + 12-byte salt
GCM = pylibsrtp.Policy.SRTP_PROFILE_AEAD_AES_128_GCM


def _lib():
    lib = core.load_library()
    if lib is None:
        if os.environ.get("WEBCALL_ALLOW_SKIP") == "1":
            pytest.skip(core.load_error())
        pytest.fail(f"the compiled core is needed: {core.load_error()} (WEBCALL_ALLOW_SKIP=1 to skip)")
    return lib


def _session(key: bytes, direction: int) -> pylibsrtp.Session:
    return pylibsrtp.Session(pylibsrtp.Policy(key=key, ssrc_type=direction, srtp_profile=GCM))


def test_bench_forward_sends_what_each_player_can_decrypt() -> None:
    lib = _lib()
    publisher = _session(KEY, pylibsrtp.Policy.SSRC_ANY_OUTBOUND)
    rx = _session(KEY, pylibsrtp.Policy.SSRC_ANY_INBOUND)
    ext = struct.pack("!HH", 0xBEDE, 1) + bytes([0x10, 0x31, 0, 0])
    payload = os.urandom(900)
    seq, ts = 4000, 90000
    plain = struct.pack("!BBHII", 0x90, 96 | 0x80, seq, ts, 0x1234) + ext + payload
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as fwd, \
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as feeder:
        fwd.bind(("127.0.0.1", 0))
        sinks, players, keep, targets = [], [], [], []
        try:
            for i in range(3):
                sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                sink.bind(("127.0.0.1", 0))
                sink.settimeout(2)
                sinks.append(sink)
                key = os.urandom(28)
                tx, name = SrtpSession(_session(key, pylibsrtp.Policy.SSRC_ANY_OUTBOUND)), sockaddr(sink.getsockname())
                keep.append((tx, name))
                ssrc, seq_off, ts_off = 0x1000 + i, 100 * (i + 1), 7000 * (i + 1)
                players.append((key, ssrc, seq_off, ts_off))
                targets.append(core.FanoutCore.new_target(tx, name, ssrc, 111, seq_off, ts_off, 0))
            array = core.FanoutCore.target_array(targets)
            sender = core.ffi.gc(lib.wc_sender_new(fwd.fileno(), 16, core.srtp_function_pointer()), lib.wc_sender_free)
            rx_ctx = core.ffi.cast("void *", int(core.srtp_ffi.cast("uintptr_t", rx._srtp[0])))
            buf = core.ffi.new("char[]", 2048)
            unprotect = core.srtp_function_pointer("srtp_unprotect")
            # nothing to read yet: refused, nothing sent
            assert lib.wc_bench_forward(sender, fwd.fileno(), rx_ctx, unprotect, buf, 2048, array, 3) == -1
            feeder.sendto(publisher.protect(plain), fwd.getsockname())
            assert lib.wc_bench_forward(sender, fwd.fileno(), rx_ctx, unprotect, buf, 2048, array, 3) == 3
            for sink, (key, ssrc, seq_off, ts_off) in zip(sinks, players):
                got = _session(key, pylibsrtp.Policy.SSRC_ANY_INBOUND).unprotect(sink.recv(2048))
                b0, b1, s, t, x = struct.unpack_from("!BBHII", got)
                assert (b0, b1, s, t, x) == (0x90, 0x80 | 111, seq + seq_off, ts + ts_off, ssrc)
                assert got[12:] == ext + payload
            # a packet that does not authenticate is refused, not forwarded
            feeder.sendto(bytes(len(plain) + 16), fwd.getsockname())
            assert lib.wc_bench_forward(sender, fwd.fileno(), rx_ctx, unprotect, buf, 2048, array, 3) == -1
            assert all(t.packets == 1 for t in targets)
            # the waiting variant sleeps in recv until the packet comes (0.3 s later, from another thread), then
            # forwards it as the other does
            fwd.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, struct.pack("ll", 5, 0))  # never hangs the test
            later = struct.pack("!BBHII", 0x90, 96, seq + 1, ts, 0x1234) + ext + payload
            timer = threading.Timer(0.3, feeder.sendto, (publisher.protect(later), fwd.getsockname()))
            started = time.monotonic()
            timer.start()
            assert lib.wc_bench_forward_wait(sender, fwd.fileno(), rx_ctx, unprotect, buf, 2048, array, 3) == 3
            assert time.monotonic() - started >= 0.25
            timer.join()
            for sink, (key, ssrc, seq_off, ts_off) in zip(sinks, players):
                got = _session(key, pylibsrtp.Policy.SSRC_ANY_INBOUND).unprotect(sink.recv(2048))
                assert struct.unpack_from("!H", got, 2)[0] == seq + 1 + seq_off and got[12:] == ext + payload
            assert all(t.packets == 2 for t in targets)
        finally:
            for sink in sinks:
                sink.close()


def test_measure_compiled_reports_every_fanout_and_a_fit() -> None:
    _lib()
    result = measure_compiled([1, 8], packets=42, sizes=[[80, "a"], [1200, "v"], [1200, "v"]], rate=0)
    assert set(result["fanouts"]) == {"1", "8"}
    for r in result["fanouts"].values():
        assert r["input_packets"] == 42
        assert 0 < r["us_per_forwarded_packet"] < 10_000
        assert r["us_user_per_forwarded_packet"] + r["us_sys_per_forwarded_packet"] == pytest.approx(
            r["us_per_forwarded_packet"], abs=0.01)
        assert r["us_per_publisher_packet"] == pytest.approx(r["fanout"] * r["us_per_forwarded_packet"], rel=0.01)
        assert 0 < r["us_per_forwarded_packet_woken"] < 10_000  # the pass that waits in recv for each packet
    assert result["fit"] is not None and result["mean_payload_bytes"] == pytest.approx((80 + 2400) / 3, abs=1)
    assert result["audio_share"] == pytest.approx(1 / 3, abs=0.01)


def test_measure_compiled_passes_longer_than_the_replay_window() -> None:
    """Every pass sends the same packets again; with more of them than a player's outbound replay window (1024)
    the second pass must still reach every player (its sequence numbers moved on), and the back-to-back passes
    must not queue more than the loop's socket holds."""
    _lib()
    result = measure_compiled([2], packets=2600, sizes=[[1200, "v"]], rate=0)
    r = result["fanouts"]["2"]
    assert r["input_packets"] == 2600
    assert 0 < r["us_per_forwarded_packet_unpaced"] < 10_000


def test_fit_recovers_a_line() -> None:
    fixed, slope = fit_linear([(n, 50 + 2.5 * n) for n in (10, 100, 200)])
    assert fixed == pytest.approx(50) and slope == pytest.approx(2.5)
    assert fit_linear([(10, 1.0), (10, 2.0)]) is None


def test_stream_sizes_split_frames_and_loop_audio() -> None:
    packets = stream_sizes([3000, 500], [90, 100], fps=1, seconds=0.06, max_payload=1200)
    assert sorted(size for size, kind in packets if kind == "v") == [500, 1000, 1000, 1000]  # every video byte
    assert sorted(size for size, kind in packets if kind == "a") == [90, 90, 100]  # the audio clip, looped


def test_ratios_and_server_fit_per_step() -> None:
    compiled = {"fanouts": {"10": {"fanout": 10, "us_per_forwarded_packet": 4.0, "us_per_publisher_packet": 40.0,
                                   "us_user_per_forwarded_packet": 1.0, "us_sys_per_forwarded_packet": 3.0},
                            "100": {"fanout": 100, "us_per_forwarded_packet": 2.5, "us_per_publisher_packet": 250.0,
                                    "us_user_per_forwarded_packet": 0.5, "us_sys_per_forwarded_packet": 2.0}},
                "fit": {"fixed_us": 16.67, "per_player_us": 2.333}}
    assert compiled_cost_at(compiled, 100) == 2.5
    assert compiled_cost_at(compiled, 50) == pytest.approx(2.333 + 16.67 / 50)
    steps = [{"players": 20, "server_cpu": {"us_per_packet": 10.0, "us_per_publisher_packet": 100.0 + 20 * 5}},
             {"players": 200, "server_cpu": {"us_per_packet": 3.25, "us_per_publisher_packet": 100.0 + 200 * 5}}]
    apply_compiled(steps, compiled, publishers=2)  # fan-outs 10 and 100
    assert steps[0]["server_cpu"]["ratio_to_compiled"] == 2.5 and steps[1]["server_cpu"]["ratio_to_compiled"] == 1.3
    assert (steps[1]["server_cpu"]["compiled_us_user_per_packet"], steps[1]["server_cpu"]["compiled_us_sys_per_packet"]) \
        == (0.5, 2.0)
    fit = server_fit(steps, publishers=1)
    assert fit["fixed_us"] == pytest.approx(100) and fit["per_player_us"] == pytest.approx(5)
    # after the steps: disturbed at fan-out 10 (three times the cost), cheaper at 100 — each fan-out keeps its
    # cheaper run, whole (its user/kernel split with it), and the fit is made again from those
    after = {"fanouts": {"10": dict(compiled["fanouts"]["10"], us_per_forwarded_packet=12.0,
                                    us_per_publisher_packet=120.0, us_sys_per_forwarded_packet=11.0),
                         "100": dict(compiled["fanouts"]["100"], us_per_forwarded_packet=2.0,
                                     us_per_publisher_packet=200.0, us_user_per_forwarded_packet=0.4,
                                     us_sys_per_forwarded_packet=1.6)}}
    chosen = cheaper_compiled(compiled, after)
    assert len(chosen["runs"]) == 2
    assert chosen["fanouts"]["10"] == compiled["fanouts"]["10"]
    assert chosen["fanouts"]["100"] == after["fanouts"]["100"]
    # the loop woken per packet: the cheaper of the two runs on its own, and its ratio beside × C
    compiled["fanouts"]["10"]["us_per_forwarded_packet_woken"] = 6.0
    after["fanouts"]["10"]["us_per_forwarded_packet_woken"] = 5.0
    chosen = cheaper_compiled(compiled, after)
    assert chosen["fanouts"]["10"]["us_per_forwarded_packet"] == 4.0
    assert chosen["fanouts"]["10"]["us_per_forwarded_packet_woken"] == 5.0
    apply_compiled(steps, chosen, publishers=2)
    assert steps[0]["server_cpu"]["ratio_to_compiled_woken"] == 2.0
    assert steps[1]["server_cpu"]["ratio_to_compiled_woken"] is None  # not measured in either run
    assert chosen["fit"]["per_player_us"] == pytest.approx(160 / 90, abs=1e-3)
    assert chosen["fit"]["fixed_us"] == pytest.approx(40 - 10 * 160 / 90, abs=0.01)
