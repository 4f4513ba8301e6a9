"""pylibsrtp's private layout, as webcall uses it (webcall/media/srtp.py, fanout.py and fanout.c).

The Python forwarding path writes packets into pylibsrtp's session buffers and the compiled core calls its
libsrtp on the sessions' private contexts (protecting into send slots of its own), so both depend on private
details that a new pylibsrtp may change. These tests make sessions look different (an attribute missing, a
smaller buffer, another protect result) and check that the Python path refuses them with SrtpLayoutError and
that the core is refused when it loads: `auto` falls back to Python with a warning naming the change, `c`
fails at start.
"""

from __future__ import annotations

import ctypes
import importlib.metadata
import logging
import os
import re
import socket
from pathlib import Path

import pylibsrtp
import pytest

from tests.support.deps import missing_dependency
from pylibsrtp._binding import ffi as srtp_ffi

from webcall.media import fanout
from webcall.media.fanout import FanoutCore, load_error, load_library, new_core, srtp_layout_problem
from webcall.media.srtp import SrtpLayoutError, SrtpSession, layout_problem

_REPO = Path(__file__).resolve().parents[2]
LIB = load_library()

KEY = bytes(range(100, 130))
POLICY = dict(key=KEY, srtp_profile=pylibsrtp.Policy.SRTP_PROFILE_AES128_CM_SHA1_80)


def outbound() -> pylibsrtp.Session:
    return pylibsrtp.Session(pylibsrtp.Policy(ssrc_type=pylibsrtp.Policy.SSRC_ANY_OUTBOUND, **POLICY))


def without_cdata() -> pylibsrtp.Session:
    session = outbound()
    del session._cdata
    return session


def with_buffer(size: int):
    def make() -> pylibsrtp.Session:
        session = outbound()
        session._cdata = srtp_ffi.new("char[]", size)
        session._buffer = srtp_ffi.buffer(session._cdata)
        return session
    return make


class MangledProtect(pylibsrtp.Session):
    """Protects like a pylibsrtp whose public API no longer agrees with what the compiled path does."""

    def protect(self, packet: bytes) -> bytes:
        out = bytearray(super().protect(packet))
        out[-1] ^= 0xFF
        return bytes(out)


def mangled_protect() -> pylibsrtp.Session:
    return MangledProtect(pylibsrtp.Policy(ssrc_type=pylibsrtp.Policy.SSRC_ANY_OUTBOUND, **POLICY))


# --------------------------------------------------------------------------- the pin


def test_pylibsrtp_is_pinned_exactly_and_the_pinned_version_is_installed():
    text = (_REPO / "requirements.txt").read_text(encoding="utf-8")
    pins = re.findall(r"^pylibsrtp==([0-9][^\s#]*)", text, re.M)
    assert len(pins) == 1, "requirements.txt must pin pylibsrtp with == (its private layout is used)"
    assert importlib.metadata.version("pylibsrtp") == pins[0]


# --------------------------------------------------------------------------- the Python path


def test_python_path_accepts_the_pinned_layout_and_protects_like_the_public_api():
    assert layout_problem(outbound()) == ""
    ours = SrtpSession(outbound())
    packet = bytes.fromhex("80e01234000000010a0b0c0d") + os.urandom(200)
    assert ours.protect(packet) == outbound().protect(packet)


@pytest.mark.parametrize(("make", "named"), [
    (without_cdata, "Session._cdata is missing"),
    (with_buffer(1024), "Session._cdata is 1024 bytes"),
])
def test_python_path_refuses_a_changed_layout(make, named):
    with pytest.raises(SrtpLayoutError, match=re.escape(named)) as info:
        SrtpSession(make())
    assert "requirements.txt" in str(info.value)


def test_python_path_refuses_a_buffer_that_is_not_the_sessions_buffer():
    session = outbound()
    session._buffer = srtp_ffi.buffer(srtp_ffi.new("char[]", 1500))
    with pytest.raises(SrtpLayoutError, match="not a view of Session._cdata"):
        SrtpSession(session)


def test_python_path_refuses_a_context_of_another_type():
    session = outbound()
    session._srtp = session._srtp[0]  # srtp_t instead of srtp_t *
    with pytest.raises(SrtpLayoutError, match=re.escape("Session._srtp is cdata")):
        SrtpSession(session)


# --------------------------------------------------------------------------- the compiled core


@pytest.fixture
def lib():
    if LIB is None:  # fails, unless WEBCALL_ALLOW_SKIP=1 (as every test that needs the core)
        missing_dependency(f"the fan-out core is not built (`make core`): {load_error()}")
    return LIB


@pytest.fixture
def fresh_load(lib, monkeypatch):
    """Forget the loaded core, so the next new_core loads (and checks) it again."""
    monkeypatch.setattr(fanout, "_library", None)
    monkeypatch.setattr(fanout, "_load_error", "")
    return monkeypatch


@pytest.fixture
def media_sock():
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    yield sock
    sock.close()


def test_core_check_passes_on_the_pinned_version(lib):
    assert srtp_layout_problem(lib) == ""


def test_core_loads_after_the_check(fresh_load, media_sock, caplog):
    caplog.set_level(logging.INFO, logger="webcall")
    assert isinstance(new_core(media_sock, "auto"), FanoutCore)
    assert "fan-out core loaded" in caplog.text


@pytest.mark.parametrize(("make", "named"), [
    (without_cdata, "Session._cdata is missing"),
    (with_buffer(1024), "Session._cdata is 1024 bytes"),
    (mangled_protect, "differ from Session.protect"),
])
def test_changed_layout_refuses_the_core_auto_falls_back_with_a_warning(fresh_load, media_sock, caplog, make,
                                                                         named):
    fresh_load.setattr(fanout, "_sample_session", make)
    caplog.set_level(logging.INFO, logger="webcall")
    assert new_core(media_sock, "auto") is None
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "forwarding in Python" in warnings[0]
    assert named in warnings[0]
    assert "pylibsrtp" in warnings[0]


@pytest.mark.parametrize(("make", "named"), [
    (without_cdata, "Session._cdata is missing"),
    (with_buffer(1024), "Session._cdata is 1024 bytes"),
    (mangled_protect, "differ from Session.protect"),
])
def test_changed_layout_makes_a_forced_core_fail_at_start(fresh_load, media_sock, make, named):
    fresh_load.setattr(fanout, "_sample_session", make)
    with pytest.raises(RuntimeError, match=r"^--fanout-core c: .*" + re.escape(named)):
        new_core(media_sock, "c")


# --------------------------------------------------------------------------- warming: libsrtp's own structures

GCM_POLICY = dict(key=bytes(range(28)), srtp_profile=pylibsrtp.Policy.SRTP_PROFILE_AEAD_AES_128_GCM)
SSRCS = (0x11223344, 0xCAFEF00D)


@pytest.mark.parametrize("policy", [POLICY, GCM_POLICY], ids=["AES_CM_128_HMAC_SHA1_80", "AEAD_AES_128_GCM"])
def test_core_finds_each_players_stream_in_the_pinned_libsrtp(lib, media_sock, policy):
    """fanout.c reads libsrtp's private stream list to warm a player's state before its turn; it must find
    exactly the stream of the target's SSRC (an audio and a video target share one session, as a player's do),
    and OpenSSL's AES state of that stream, inside the block OpenSSL allocated for it."""
    assert lib.wc_warm() == 2, "the pinned pylibsrtp's layout, and its OpenSSL's, are recognised when the core loads"
    session = SrtpSession(pylibsrtp.Session(pylibsrtp.Policy(ssrc_type=pylibsrtp.Policy.SSRC_ANY_OUTBOUND,
                                                             **policy)))
    name = fanout.sockaddr(media_sock.getsockname())
    targets = [FanoutCore.new_target(session, name, ssrc, 96, 0, 0, 0) for ssrc in SSRCS]
    sender = fanout.ffi.gc(lib.wc_sender_new(media_sock.fileno(), 4, fanout.srtp_function_pointer()),
                           lib.wc_sender_free)
    tail = fanout.ffi.new("char[]", b"x" * 300)
    for target in targets:
        assert target.srtp_state_found == 0
        assert lib.wc_srtp_layout_check(fanout.context_pointer(session), target.ssrc) == -2  # no stream before a packet
        array = FanoutCore.target_array([target])
        assert lib.wc_fanout(sender, array, 1, tail, 300, 0x80, 0, 7, 1000, 300) == 1
        assert lib.wc_srtp_layout_check(fanout.context_pointer(session), target.ssrc) == 0
    malloc_usable_size = ctypes.CDLL("libc.so.6").malloc_usable_size
    malloc_usable_size.restype, malloc_usable_size.argtypes = ctypes.c_size_t, [ctypes.c_void_p]
    for target in targets:
        assert target.srtp_state_found == 1
        stream = target.srtp_state[1]
        assert fanout.ffi.cast("uint32_t *", stream)[0] == socket.htonl(target.ssrc), "its own stream"
        assert target.aes_state_lines == (15 if policy is GCM_POLICY else 7)
        state = int(fanout.ffi.cast("uintptr_t", target.aes_state))
        assert state not in {int(fanout.ffi.cast("uintptr_t", line)) for line in target.srtp_state}
        # every line the warming reads is inside OpenSSL's allocation (OPENSSL_zalloc is malloc here)
        assert malloc_usable_size(state) >= 64 * target.aes_state_lines
    assert targets[0].srtp_state[1] != targets[1].srtp_state[1]
    # libsrtp clones a session's streams from its template with the template's ciphers: one AES state a player
    assert targets[0].aes_state == targets[1].aes_state


def test_layout_check_refuses_structures_it_does_not_recognise(lib):
    ffi = fanout.ffi
    assert lib.wc_srtp_layout_check(ffi.NULL, 1) == -1
    # A session whose one stream has the right SSRC but two master keys (libsrtp 2.x as pinned has one per
    # stream here): fields where fanout.c expects them do not hold what it expects, so it is refused.
    stream = ffi.new("uint8_t[]", 128)
    sentinel = ffi.new("uint8_t[]", 128)
    context = ffi.new("uint8_t[]", 24)
    ffi.cast("uint32_t *", stream)[0] = socket.htonl(0xABCD)
    ffi.cast("uint32_t *", stream + 16)[0] = 2
    ffi.cast("void **", sentinel + 112)[0] = stream
    ffi.cast("void **", context)[0] = sentinel
    assert lib.wc_srtp_layout_check(context, 0xABCD) == -3
    assert lib.wc_srtp_layout_check(context, 0xABCE) == -2
    assert lib.wc_aes_state_check(context, 0xABCD) == -3


def test_aes_state_check_refuses_a_cipher_context_it_does_not_recognise(lib):
    """A stream laid out as libsrtp 2.x lays it out, whose OpenSSL cipher context is not OpenSSL 3.5's
    (`fetched_cipher` is not `cipher`): libsrtp's state may be warmed, OpenSSL's is refused."""
    ffi = fanout.ffi
    blocks = []

    def block(size: int):
        blocks.append(ffi.new("uint8_t[]", size))
        return blocks[-1]

    def put(where, offset: int, value) -> None:
        ffi.cast("void **", where + offset)[0] = value

    stream, sentinel, context, keys, cipher, state, evp = (block(n) for n in (128, 128, 24, 96, 32, 16, 200))
    algctx, window, limit, method = block(1024), block(128), block(64), block(64)
    ffi.cast("uint32_t *", stream)[0] = socket.htonl(0xABCD)
    ffi.cast("uint32_t *", stream + 16)[0] = 1  # one master key
    ffi.cast("uint32_t *", stream + 32)[0] = 128  # replay window bits
    put(stream, 40, window)
    ffi.cast("uint32_t *", stream + 84)[0] = 1  # sender
    put(stream, 8, keys)
    put(keys, 0, cipher)
    put(keys, 80, limit)
    put(cipher, 8, state)
    ffi.cast("uint32_t *", cipher + 20)[0] = 6  # AES-GCM-128
    ffi.cast("uint32_t *", state)[0] = 16
    put(state, 8, evp)
    put(evp, 0, method)
    put(evp, 176, algctx)
    put(sentinel, 112, stream)
    put(context, 0, sentinel)
    assert lib.wc_srtp_layout_check(context, 0xABCD) == 0
    assert lib.wc_aes_state_check(context, 0xABCD) == -4  # fetched_cipher (NULL) is not cipher
    put(evp, 184, method)
    assert lib.wc_aes_state_check(context, 0xABCD) == 0


class _UnrecognisedLayout:
    """The real core, but its layout check fails as it would on a libsrtp laid out differently."""

    def __init__(self, lib) -> None:
        self._lib = lib
        self.warm: list[int] = []

    def wc_srtp_layout_check(self, context, ssrc) -> int:
        return -3

    def wc_set_warm(self, on: int) -> None:
        self.warm.append(on)


def test_unrecognised_layout_runs_the_core_without_warming(lib, caplog):
    caplog.set_level(logging.INFO, logger="webcall")
    fake = _UnrecognisedLayout(lib)
    fanout._enable_warming(fake)
    assert fake.warm == [0]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "without warming" in warnings[0] and "wc_srtp_layout_check -3" in warnings[0]


def test_another_openssl_warms_libsrtps_state_only(lib, monkeypatch, caplog):
    caplog.set_level(logging.INFO, logger="webcall")
    monkeypatch.setattr(fanout, "bundled_openssl_version", lambda: fanout.OPENSSL_LAYOUT_VERSION + 0x10)
    level = lib.wc_warm()
    try:
        fanout._enable_warming(lib)
        assert lib.wc_warm() == 1
    finally:
        lib.wc_set_warm(level)
    infos = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
    assert any("not OpenSSL's" in m and "0x30500050" in m for m in infos), infos
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_pinned_pylibsrtp_links_the_openssl_whose_layout_fanout_c_reads():
    assert fanout.bundled_openssl_version() == fanout.OPENSSL_LAYOUT_VERSION


def test_core_without_warming_forwards_the_same_bytes_and_reads_no_private_state(lib, media_sock):
    received = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    received.bind(("127.0.0.1", 0))
    received.settimeout(2)
    name = fanout.sockaddr(received.getsockname())
    key = os.urandom(28)
    policy = dict(key=key, srtp_profile=pylibsrtp.Policy.SRTP_PROFILE_AEAD_AES_128_GCM,
                  ssrc_type=pylibsrtp.Policy.SSRC_ANY_OUTBOUND)
    sender = fanout.ffi.gc(lib.wc_sender_new(media_sock.fileno(), 8, fanout.srtp_function_pointer()),
                           lib.wc_sender_free)
    tail = fanout.ffi.new("char[]", os.urandom(500))
    out = {}
    level = lib.wc_warm()
    try:
        for warm in (0, 1, 2):
            lib.wc_set_warm(warm)
            sessions = [SrtpSession(pylibsrtp.Session(pylibsrtp.Policy(**policy))) for _ in range(6)]
            targets = [FanoutCore.new_target(s, name, 0x1000 + i, 96, i, i, 0) for i, s in enumerate(sessions)]
            array = FanoutCore.target_array(targets)
            for seq in range(3):
                assert lib.wc_fanout(sender, array, len(targets), tail, 500, 0x80, 0, seq, 90 * seq, 500) == 6
            out[warm] = sorted(received.recv(2048) for _ in range(18))
            assert {t.srtp_state_found for t in targets} == ({0} if not warm else {1})
            assert {t.aes_state_lines for t in targets} == ({15} if warm == 2 else {0})
            if warm == 2:  # a player's session has its own cipher, so its own AES state
                assert len({int(fanout.ffi.cast("uintptr_t", t.aes_state)) for t in targets}) == len(targets)
    finally:
        lib.wc_set_warm(level)
        received.close()
    assert out[0] == out[1] == out[2]  # same keys, same labels: the same datagrams, warmed or not
