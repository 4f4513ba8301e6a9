"""The compiled fan-out core (fanout.c) as seen from Python: loading it, and the per-player targets.

`make core` builds `_fanout.so` next to this file with the system C compiler; it is loaded with cffi's
ABI mode, so there is no Python extension to build. Without it — or with `--fanout-core python` — every
player is served by `Consumer.forward` in Python: same packets, more CPU (both are measured by the bench).

A player's Consumer starts in Python (keyframe gating, offsets, GOP replay) and is then *promoted*: it
gets a `struct wc_target` holding its offsets, SSRC, payload type, SRTP context and address, and
from then on the producer hands each packet to `wc_fanout` once for all promoted players of a layout.

The core calls pylibsrtp's libsrtp directly on each player's session context, which depends on private
details of pylibsrtp (pinned exactly in requirements.txt). `load_library` therefore checks them once before
accepting the library (`srtp_layout_problem`): the private attributes and their types, and one packet
protected through `wc_fanout` against the same packet protected by pylibsrtp's public `Session.protect`.
A failed check refuses the core like a missing build does: `auto` forwards in Python with a warning, `c`
fails at start.

The core also reads a little of libsrtp's own private structures, to warm the next players' SRTP state
before their turn (fanout.c, "Warming"). `_enable_warming` lets it only if `wc_srtp_layout_check` recognises
them in real sessions of both SRTP profiles; if not, the core runs without warming, with a warning. It warms
OpenSSL's AES state as well only if the OpenSSL inside pylibsrtp is exactly the version fanout.c's offsets
were read from (`OPENSSL_LAYOUT_VERSION`) and `wc_aes_state_check` recognises its contexts.
"""

from __future__ import annotations

import ctypes
import logging
import socket
import struct
from pathlib import Path
from typing import Any

import pylibsrtp
import pylibsrtp._binding

from .srtp import PYLIBSRTP_VERSION, SrtpSession, abi_ffi as ffi, ffi as srtp_ffi, layout_problem
from .srtp import lib as srtp_lib, sockaddr

log = logging.getLogger("webcall.media")

LIBRARY = Path(__file__).with_name("_fanout.so")
ABI_VERSION = 9  # must match WC_ABI_VERSION in fanout.c: a stale build is refused, not trusted
# Players per sendmmsg: the core protects their packets into this many send slots (96 KB), reused for the next
# players, so it writes into memory still in the cache (per-player buffers, 1.5 KB each, went cold between
# packets), and the first players' packets leave before the last ones are protected.
SEND_CAPACITY = 64
SPLIT_MIN = 64  # with a helper thread, fan-outs to this many players or more are split in two

ffi.cdef("""
struct wc_target {
    void *srtp; const void *name;
    int64_t seq_offset; int64_t ts_offset; int64_t start_ext_seq;
    uint32_t ssrc; uint32_t payload_type;
    uint64_t packets; uint64_t octets; uint64_t dropped;
    const void *srtp_state[13]; int32_t srtp_state_found;
    int32_t aes_state_lines; const void *aes_state;
};
typedef struct wc_sender wc_sender;
int wc_abi_version(void);
wc_sender *wc_sender_new(int fd, int capacity, void *protect);
void wc_sender_free(wc_sender *s);
uint64_t wc_sender_sent(const wc_sender *s);
uint64_t wc_sender_dropped(const wc_sender *s);
uint64_t wc_sender_helper_jobs(const wc_sender *s);
int wc_sender_start_helper(wc_sender *s, int min_split);
int wc_fanout(wc_sender *s, struct wc_target *const *targets, int n, const char *tail, int tail_len,
              int b0, int marker, int64_t ext_seq, uint32_t ts, int payload_size);
int wc_target_size(void);
int wc_srtp_layout_check(const void *srtp, uint32_t ssrc);
int wc_aes_state_check(const void *srtp, uint32_t ssrc);
void wc_set_warm(int level);
int wc_warm(void);
struct wc_clock { int32_t valid; uint32_t rtp; };
struct wc_reporter {
    void *srtp; const void *name;
    struct wc_target *targets[2]; const struct wc_clock *clocks[2]; int32_t tracks;
    uint32_t base_packets[2]; uint32_t base_octets[2];
    int64_t due_ns; uint64_t rng; uint64_t reports;
};
int wc_sender_reports(wc_sender *s, struct wc_reporter *const *reporters, int n, int64_t now_ns, int64_t due_by_ns,
                      uint64_t ntp, void *protect_rtcp, int64_t min_ns, int64_t span_ns);
int wc_reporter_size(void);
int wc_bench_forward(wc_sender *s, int fd, void *rx_srtp, void *unprotect, char *buf, int capacity,
                     struct wc_target *const *targets, int n);
int wc_bench_forward_wait(wc_sender *s, int fd, void *rx_srtp, void *unprotect, char *buf, int capacity,
                          struct wc_target *const *targets, int n);
""")

_library: Any = None
_load_error = ""


def load_library(path: Path = LIBRARY) -> Any:
    """The loaded core, or None (the reason is in `load_error()`)."""
    global _library, _load_error
    if _library is None and not _load_error:
        if not path.exists():
            _load_error = f"{path.name} is not built (run `make core`)"
        else:
            try:
                lib = ffi.dlopen(str(path))
                version = lib.wc_abi_version()
            except (OSError, AttributeError) as exc:
                _load_error = f"{path.name} cannot be loaded: {exc}"
            else:
                if version != ABI_VERSION:
                    _load_error = f"{path.name} is stale (ABI {version}, want {ABI_VERSION}; run `make core`)"
                elif lib.wc_target_size() != ffi.sizeof("struct wc_target"):
                    _load_error = (f"{path.name} has a struct wc_target of {lib.wc_target_size()} bytes, "
                                   f"fanout.py declares {ffi.sizeof('struct wc_target')}")
                elif lib.wc_reporter_size() != ffi.sizeof("struct wc_reporter"):
                    _load_error = (f"{path.name} has a struct wc_reporter of {lib.wc_reporter_size()} bytes, "
                                   f"fanout.py declares {ffi.sizeof('struct wc_reporter')}")
                elif problem := srtp_layout_problem(lib):
                    _load_error = (f"{path.name} refused, pylibsrtp {PYLIBSRTP_VERSION} is not laid out as "
                                   f"fanout.c assumes: {problem} (requirements.txt pins the version it was "
                                   "written against)")
                else:
                    _library = lib
                    _enable_warming(lib)
    return _library


# The OpenSSL whose EVP_CIPHER_CTX and AES provider contexts fanout.c's "level 2" offsets were read from: the one
# pylibsrtp 1.0.0 links in (OpenSSL_version_num() of 3.5.4).
OPENSSL_LAYOUT_VERSION = 0x30500040


def bundled_openssl_version() -> int | None:
    """OpenSSL_version_num() of the OpenSSL linked into pylibsrtp's binding (the one that runs our ciphers)."""
    try:
        function = ctypes.CDLL(pylibsrtp._binding.__file__).OpenSSL_version_num
    except (OSError, AttributeError):
        return None
    function.restype = ctypes.c_ulong
    function.argtypes = []
    return int(function())


def _enable_warming(lib: Any) -> None:
    """Let the core warm the next players' SRTP state (fanout.c, "Warming") if libsrtp's private structures
    read as fanout.c expects in sessions of both SRTP profiles webcall offers; if not, it runs without. Level 2
    (OpenSSL's AES state too) also needs the OpenSSL of OPENSSL_LAYOUT_VERSION and its contexts recognised."""
    packet = struct.pack("!BBHII", 0x80, 96, 1, 2, _SAMPLE_SSRC) + _SAMPLE_PAYLOAD
    problems = []
    aes_problems = []
    if (version := bundled_openssl_version()) != OPENSSL_LAYOUT_VERSION:
        aes_problems.append(f"OpenSSL {version:#x} is not {OPENSSL_LAYOUT_VERSION:#x}" if version is not None
                            else "the OpenSSL version cannot be read")
    for profile, key_length in ((pylibsrtp.Policy.SRTP_PROFILE_AES128_CM_SHA1_80, 30),
                                (pylibsrtp.Policy.SRTP_PROFILE_AEAD_AES_128_GCM, 28)):
        try:
            session = pylibsrtp.Session(pylibsrtp.Policy(key=_SAMPLE_KEY[:key_length], srtp_profile=profile,
                                                         ssrc_type=pylibsrtp.Policy.SSRC_ANY_OUTBOUND))
            session.protect(packet)  # makes the stream the check reads
            context = context_pointer(SrtpSession(session))
        except Exception as exc:  # noqa: BLE001 - no session to check: no warming
            problems.append(f"profile {profile}: {exc!r}")
            continue
        if (code := lib.wc_srtp_layout_check(context, _SAMPLE_SSRC)) != 0:
            problems.append(f"profile {profile}: wc_srtp_layout_check {code}")
        elif not aes_problems and (code := lib.wc_aes_state_check(context, _SAMPLE_SSRC)) != 0:
            aes_problems.append(f"profile {profile}: wc_aes_state_check {code}")
    if problems:
        lib.wc_set_warm(0)
        log.warning("fan-out core runs without warming SRTP state: libsrtp is not laid out as fanout.c reads "
                    "it (%s)", "; ".join(problems))
    elif aes_problems:
        lib.wc_set_warm(1)
        log.info("fan-out core warms libsrtp's state but not OpenSSL's (%s)", "; ".join(aes_problems))
    else:
        lib.wc_set_warm(2)


def load_error() -> str:
    return _load_error


def context_pointer(tx: SrtpSession) -> Any:
    """The session's libsrtp `srtp_t`, as the core's `void *`."""
    return ffi.cast("void *", int(srtp_ffi.cast("uintptr_t", tx.context)))


def srtp_function_pointer(name: str = "srtp_protect") -> Any:
    """A function of pylibsrtp's own libsrtp, as a `void *` for the core: the sessions were made by that
    libsrtp, so they must be used by it (the bench's compiled ceiling also takes `srtp_unprotect`)."""
    address = int(srtp_ffi.cast("uintptr_t", srtp_ffi.addressof(srtp_lib, name)))
    return ffi.cast("void *", address)


def _srtp_protect_pointer() -> Any:
    return srtp_function_pointer("srtp_protect")


_SAMPLE_KEY = bytes(range(30))  # AES_CM_128_HMAC_SHA1_80: 16-byte key + 14-byte salt
_SAMPLE_SSRC = 0x5EB7C0DE
_SAMPLE_PAYLOAD = bytes(range(256)) * 4  # a 1036-byte packet: more than a small buffer, less than a big one


def _sample_session() -> pylibsrtp.Session:
    """An outbound session with a fixed key: two of them protect the same packet to the same bytes."""
    return pylibsrtp.Session(pylibsrtp.Policy(key=_SAMPLE_KEY, ssrc_type=pylibsrtp.Policy.SSRC_ANY_OUTBOUND,
                                              srtp_profile=pylibsrtp.Policy.SRTP_PROFILE_AES128_CM_SHA1_80))


def srtp_layout_problem(lib: Any) -> str:
    """Why the compiled core must not use pylibsrtp as installed, or "" when it may (run once, on load).

    The private attributes fanout.py and srtp.py read, and a sample packet sent through `wc_fanout` (to a UDP
    socket on 127.0.0.1) against the same packet protected by pylibsrtp's public API."""
    try:
        public, compiled = _sample_session(), _sample_session()
    except Exception as exc:  # noqa: BLE001 - whatever pylibsrtp raises, the core is not usable
        return f"cannot create a sample Session ({exc!r})"
    problem = layout_problem(compiled)
    if problem:
        return problem

    b0, payload_type, seq, ts = 0x80, 96, 4321, 1234567
    packet = struct.pack("!BBHII", b0, payload_type, seq, ts, _SAMPLE_SSRC) + _SAMPLE_PAYLOAD
    try:
        expected = public.protect(packet)
    except Exception as exc:  # noqa: BLE001
        return f"Session.protect fails on a sample packet ({exc!r})"

    tx = SrtpSession(compiled)
    tail = ffi.new("char[]", _SAMPLE_PAYLOAD)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        try:
            sock.bind(("127.0.0.1", 0))
        except OSError as exc:
            return f"cannot run the sample protect: no UDP socket on 127.0.0.1 ({exc})"
        sock.settimeout(1.0)
        name = sockaddr(sock.getsockname())
        sender = lib.wc_sender_new(sock.fileno(), 1, _srtp_protect_pointer())
        if sender == ffi.NULL:
            return "wc_sender_new failed"
        try:
            target = FanoutCore.new_target(tx, name, _SAMPLE_SSRC, payload_type, 0, 0, seq)
            targets = FanoutCore.target_array([target])
            queued = lib.wc_fanout(sender, targets, 1, tail, len(_SAMPLE_PAYLOAD), b0, 0, seq, ts,
                                   len(_SAMPLE_PAYLOAD))
        finally:
            lib.wc_sender_free(sender)
        if queued != 1 or target.packets != 1:
            return (f"the compiled path did not protect the sample packet "
                    f"(queued {queued}, dropped {target.dropped})")
        try:
            sent = sock.recv(2048)
        except OSError as exc:
            return f"the compiled path sent nothing ({exc})"
    if sent != expected:
        return (f"the compiled path protects a sample packet to {len(sent)} bytes that differ from "
                f"Session.protect's {len(expected)}")
    return ""


class FanoutCore:
    """One per media port: the library and a sender (its sendmmsg arrays and send slots) for the port's socket.

    With `threads=2` the sender gets a helper thread: a fan-out to SPLIT_MIN players or more is split, the
    event loop's thread doing one half (cffi releases the GIL during the call) and the helper the other, so
    a packet reaches a big audience in about half the time when a second core is free."""

    def __init__(self, lib: Any, sock: socket.socket, threads: int = 1) -> None:
        if sock.family != socket.AF_INET:
            raise ValueError("the fan-out core sends to IPv4 addresses only")
        sender = lib.wc_sender_new(sock.fileno(), SEND_CAPACITY, _srtp_protect_pointer())
        if sender == ffi.NULL:
            raise MemoryError("wc_sender_new")
        self.lib = lib
        self.sender = ffi.gc(sender, lib.wc_sender_free)
        self.fanout = lib.wc_fanout
        self.threads = 1
        if threads > 1:
            if lib.wc_sender_start_helper(sender, SPLIT_MIN) != 0:
                raise RuntimeError("cannot start the fan-out helper thread")
            self.threads = 2

    @property
    def split_fanouts(self) -> int:
        """Fan-outs the helper thread took half of."""
        return self.lib.wc_sender_helper_jobs(self.sender)

    @property
    def sent(self) -> int:
        return self.lib.wc_sender_sent(self.sender)

    @property
    def dropped(self) -> int:
        return self.lib.wc_sender_dropped(self.sender)

    @staticmethod
    def new_target(tx: SrtpSession, name: Any, ssrc: int, payload_type: int, seq_offset: int, ts_offset: int,
                   start_ext_seq: int) -> Any:
        target = ffi.new("struct wc_target *")
        target.srtp = context_pointer(tx)
        target.name = name
        target.seq_offset = seq_offset
        target.ts_offset = ts_offset
        target.start_ext_seq = start_ext_seq
        target.ssrc = ssrc
        target.payload_type = payload_type
        return target

    @staticmethod
    def target_array(targets: list[Any]) -> Any:
        """A `struct wc_target *[]` for wc_fanout. It does not own the targets: keep the list too."""
        return ffi.new("struct wc_target *[]", targets)


def new_core(sock: socket.socket, mode: str, threads: int = 1) -> FanoutCore | None:
    """The core for `--fanout-core MODE` (auto, c or python); raises if `c` was asked and cannot be had."""
    if mode == "python":
        return None
    lib = load_library()
    reason = load_error()
    if lib is not None and sock.family != socket.AF_INET:
        lib, reason = None, "the media socket is not IPv4"
    if lib is None:
        if mode == "c":
            raise RuntimeError(f"--fanout-core c: {reason}")
        log.warning("fan-out core unavailable, forwarding in Python: %s", reason)
        return None
    log.info("fan-out core loaded library=%s threads=%d", LIBRARY.name, threads)
    return FanoutCore(lib, sock, threads)
