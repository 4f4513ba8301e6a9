"""The bench's verdict rules, fed crafted packets and steps: they must not flatter a broken server.

* delivery counts only media packets of the answer's SSRCs, each sequence number once;
* a sampled packet that authenticates but matches nothing the publisher sent is a failure;
* a step holds only if integrity holds too, and every player learned its offsets;
* pinning the server pins every one of its threads (and every one of ours).
"""

from __future__ import annotations

import copy
import os
import struct
import subprocess
import sys
import threading
import time

import pylibsrtp
import pytest

from webcall_bench.player import BenchPlayer, ClientIdentity, SeqDedup
from webcall_bench.publisher import SendLog, Window
from webcall_bench.runner import _all_cpus, _pin, step_reasons

PUB_VIDEO, PUB_AUDIO = 0x1111, 0x2222  # the publisher's SSRCs
VIDEO, AUDIO = 0xAAAA, 0xBBBB  # what the server's answer gave this player
SEQ_OFF, TS_OFF = 1000, 500_000


def rtp(ssrc: int, seq: int, ts: int, payload: bytes, pt: int = 96) -> bytes:
    return struct.pack("!BBHII", 0x80, pt, seq & 0xFFFF, ts & 0xFFFFFFFF, ssrc) + payload


@pytest.fixture(scope="module")
def identity() -> ClientIdentity:
    return ClientIdentity()


def srtp_pair() -> tuple[pylibsrtp.Session, pylibsrtp.Session]:
    """(protect with this, the player unprotects with that): one key, as DTLS would have exported."""
    key = os.urandom(30)
    tx = pylibsrtp.Session(pylibsrtp.Policy(key=key, ssrc_type=pylibsrtp.Policy.SSRC_ANY_OUTBOUND))
    rx = pylibsrtp.Session(pylibsrtp.Policy(key=key, ssrc_type=pylibsrtp.Policy.SSRC_ANY_INBOUND))
    return tx, rx


def make_player(identity: ClientIdentity, log: SendLog | None = None, window: Window | None = None) -> BenchPlayer:
    window = window or Window()
    log = log or SendLog(window)
    player = BenchPlayer(0, "s", log, identity, window, sample_every=10**9)
    player.video_ssrc, player.audio_ssrc = VIDEO, AUDIO
    player.ttff = 0.1  # past the first keyframe: no assembly
    player.dtls_at = 1.0
    return player


def publisher_sent(log: SendLog, seq: int, ts: int, payload: bytes, t: float = 5.0) -> None:
    plain = rtp(PUB_VIDEO, seq, ts, payload)
    log.on_plain(plain)
    log.on_wire(plain, t)


# --- delivery ---------------------------------------------------------------------------------------

def test_seq_dedup() -> None:
    d = SeqDedup()
    assert d.fresh(65530) and not d.fresh(65530)
    assert d.fresh(3)  # across the wrap
    assert d.fresh(65533) and not d.fresh(65533)  # late but new, then a duplicate of it
    assert not d.fresh(3)
    assert d.fresh(3 + 2000)
    assert not d.fresh(3 + 2000 - 1500)  # further back than the window: not counted again


def test_delivery_counts_only_the_answers_ssrcs_once_each(identity) -> None:
    window = Window()
    window.set(0.0, 100.0)
    player = make_player(identity, window=window)
    for seq in range(10):
        player._on_rtp(rtp(VIDEO, seq, 3000 * seq, b"v" * 100), 10.0)
    for seq in range(5):
        player._on_rtp(rtp(AUDIO, seq, 960 * seq, b"a" * 50, pt=111), 10.0)
    for seq in (3, 4, 4):  # the same sequence numbers again (a retransmission of what arrived, a duplicate)
        player._on_rtp(rtp(VIDEO, seq, 3000 * seq, b"v" * 100), 10.0)
    player._on_rtp(rtp(AUDIO, 2, 1920, b"a" * 50, pt=111), 10.0)
    for seq in range(7):  # a source this player was never told about (another stream's, an RTX stream)
        player._on_rtp(rtp(0xDEAD, seq, 0, b"x" * 100), 10.0)
    assert player.win_packets == 15 and player.video_packets == 10 and player.audio_packets == 5
    assert player.win_bytes == 10 * 112 + 5 * 62
    assert player.duplicates == 4 and player.other_packets == 7


# --- integrity samples --------------------------------------------------------------------------------

def test_samples_must_match_what_the_publisher_sent(identity) -> None:
    log = SendLog(Window())
    log.video_ssrc, log.audio_ssrc = PUB_VIDEO, PUB_AUDIO
    player = make_player(identity, log)
    tx, player.rx = srtp_pair()
    for seq in range(100, 110):
        publisher_sent(log, seq, 90 * seq, f"frame {seq}".encode() * 20)

    def receive(seq: int, payload: bytes, ts: int | None = None) -> None:
        ts = 90 * seq if ts is None else ts
        data = tx.protect(rtp(VIDEO, seq + SEQ_OFF, ts + TS_OFF, payload))
        player._verify(data, seq + SEQ_OFF, ts + TS_OFF)

    receive(100, b"frame 100" * 20)  # learns the offsets from it
    assert (player.seq_off, player.ts_off) == (SEQ_OFF, TS_OFF)
    assert (player.sampled, player.sample_ok, player.sample_bad) == (1, 1, 0)
    receive(101, b"frame 102" * 20)  # another packet's payload under this number
    assert player.sample_bad == 1 and player.sample_unmatched == 0
    receive(150, b"frame 150" * 20)  # a sequence number the publisher never sent
    assert player.sample_bad == 2 and player.sample_unmatched == 1
    receive(103, b"frame 103" * 20, ts=1)  # the right payload at a timestamp it was not sent with
    assert player.sample_bad == 3 and player.sample_unmatched == 2
    tampered = bytearray(tx.protect(rtp(VIDEO, 104 + SEQ_OFF, 90 * 104 + TS_OFF, b"frame 104" * 20)))
    tampered[-1] ^= 1
    player._verify(bytes(tampered), 104 + SEQ_OFF, 90 * 104 + TS_OFF)  # does not authenticate
    assert player.sample_bad == 4
    receive(105, b"frame 105" * 20)
    assert (player.sampled, player.sample_ok, player.sample_bad) == (6, 2, 4)


def test_a_player_that_never_learns_its_offsets_fails_its_samples(identity) -> None:
    log = SendLog(Window())
    log.video_ssrc = PUB_VIDEO
    publisher_sent(log, 1, 90, b"sent" * 30)
    player = make_player(identity, log)
    tx, player.rx = srtp_pair()
    data = tx.protect(rtp(VIDEO, 7, 7, b"never sent" * 10))
    player._verify(data, 7, 7)
    assert player.seq_off is None
    assert (player.sample_ok, player.sample_bad, player.sample_unmatched) == (0, 1, 1)


def test_audio_samples_must_carry_a_payload_the_publisher_sent(identity) -> None:
    log = SendLog(Window())
    log.audio_ssrc = PUB_AUDIO
    log.on_plain_audio(rtp(PUB_AUDIO, 1, 960, b"opus-1" * 10, pt=111))
    player = make_player(identity, log)
    tx, player.rx = srtp_pair()
    player._verify_audio(tx.protect(rtp(AUDIO, 501, 77, b"opus-1" * 10, pt=111)))
    player._verify_audio(tx.protect(rtp(AUDIO, 502, 78, b"silence" * 10, pt=111)))
    assert (player.sampled, player.sample_ok, player.sample_bad, player.sample_unmatched) == (2, 1, 1, 1)


# --- the step's verdict -----------------------------------------------------------------------------

HEALTHY = {
    "players": 3, "connected": 3, "failed": 0,
    "delivery": {"players_below_min": 0, "min_ratio": 1.0},
    "ttff_ms": {"missing": 0},
    "latency_ms": {"p99": 3.0},
    "integrity": {"sampled": 30, "ok": 30, "bad": 0, "unmatched": 0, "first_keyframes_intact": 3,
                  "offsets_learned": 3, "players_with_first_frame": 3, "players_without_offsets": []},
}


def verdict(**changes) -> list[str]:
    step = copy.deepcopy(HEALTHY)
    for path, value in changes.items():
        section, _, key = path.partition("__")
        if key:
            step[section][key] = value
        else:
            step[section] = value
    return step_reasons(step, 0.99, 50.0, [])


@pytest.mark.parametrize(("changes", "reason"), [
    ({"failed": 1}, "player(s) failed"),
    ({"delivery__players_below_min": 1, "delivery__min_ratio": 0.9}, "under 99% delivery"),
    ({"ttff_ms__missing": 1}, "without a first frame"),
    ({"latency_ms__p99": 51.0}, "latency p99"),
    ({"latency_ms__p99": None}, "no latency sample"),
    ({"integrity__bad": 1, "integrity__unmatched": 1}, "integrity: 1 sampled packet(s)"),
    ({"integrity__sampled": 0, "integrity__ok": 0}, "no packet sampled"),
    ({"integrity__first_keyframes_intact": 2}, "first keyframe(s) not the publisher's"),
    ({"integrity__players_without_offsets": [2], "integrity__offsets_learned": 2}, "never learned their offsets"),
])
def test_each_rule_breaks_the_step(changes, reason) -> None:
    assert verdict() == []
    reasons = verdict(**changes)
    assert len(reasons) == 1 and reason in reasons[0], reasons


def test_publisher_problems_break_the_step() -> None:
    assert step_reasons(copy.deepcopy(HEALTHY), 0.99, 50.0, ["publisher p stalled"]) == ["publisher p stalled"]


# --- pinning ------------------------------------------------------------------------------------------

def _affinity(pid: int) -> dict[int, set[int]]:
    return {int(tid): os.sched_getaffinity(int(tid)) for tid in os.listdir(f"/proc/{pid}/task")}


def test_pinning_pins_every_thread_of_both_processes() -> None:
    cpus = sorted(os.sched_getaffinity(0))
    child = subprocess.Popen([sys.executable, "-c",
                              "import threading, time\n"
                              "for _ in range(3): threading.Thread(target=time.sleep, args=(60,), daemon=True).start()\n"
                              "print('ready', flush=True); time.sleep(60)"], stdout=subprocess.PIPE, text=True)
    ours = threading.Thread(target=time.sleep, args=(5,), daemon=True)
    ours.start()
    try:
        assert child.stdout.readline().strip() == "ready"
        pinned = _pin(child.pid)
        if len(cpus) < 2:
            assert pinned is None
            return
        assert pinned["server_threads"] == 4
        server, own = set(pinned["server_cpus"]), set(pinned["loadgen_cpus"])
        assert server.isdisjoint(own) and server | own == set(cpus)
        assert all(a == server for a in _affinity(child.pid).values()), _affinity(child.pid)
        assert all(a == own for a in _affinity(os.getpid()).values()), _affinity(os.getpid())
    finally:
        _all_cpus()
        for tid in _affinity(os.getpid()):
            os.sched_setaffinity(tid, cpus)  # as it was before
        child.kill()
        child.wait()
