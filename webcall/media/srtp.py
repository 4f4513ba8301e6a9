"""SRTP on the hot path: libsrtp through pylibsrtp's own cffi binding, without per-packet allocations.

pylibsrtp's `Session.protect()` allocates a length cell, validates, and copies the result out for every
packet; under profile that wrapper cost more than the encryption itself. Here each session keeps its
buffer and length cell, the forwarded packet is assembled directly in the buffer (header packed in
place, payload copied once), protected in place, and handed to `sendto` as a memoryview — no copy out.

That relies on pylibsrtp's private layout: its cffi binding (`pylibsrtp._binding`), and per session the
`srtp_t *` (`_srtp`), the buffer (`_cdata`, `char[1500]` in 1.0.0) and its cffi view (`_buffer`). The version
is pinned exactly in requirements.txt, and `SrtpSession` checks the layout of every session it wraps
(`layout_problem`): a changed layout is refused with `SrtpLayoutError` instead of letting libsrtp write a
packet and its auth tag past the end of a buffer. The compiled core checks more when it loads (fanout.py).
"""

from __future__ import annotations

import socket
import struct

from typing import Any

import cffi
import pylibsrtp

try:
    from pylibsrtp._binding import ffi, lib
except ImportError as exc:  # a pylibsrtp without the private binding: every SrtpSession is refused
    ffi = lib = None
    _BINDING_ERROR = f"pylibsrtp has no usable _binding module ({exc})"
else:
    _BINDING_ERROR = ""

PYLIBSRTP_VERSION = getattr(pylibsrtp, "__version__", "?")

# sendmmsg(2) through cffi's ABI mode (no compiler needed): one system call sends a publisher packet to every
# player, instead of one sendto per player (the Python wrapper parses the address tuple on every call).
abi_ffi = cffi.FFI()
abi_ffi.cdef("""
struct iovec { void *iov_base; size_t iov_len; };
struct msghdr { void *msg_name; unsigned int msg_namelen; struct iovec *msg_iov; size_t msg_iovlen;
                void *msg_control; size_t msg_controllen; int msg_flags; };
struct mmsghdr { struct msghdr msg_hdr; unsigned int msg_len; };
int sendmmsg(int sockfd, struct mmsghdr *msgvec, unsigned int vlen, int flags);
""")
try:
    _libc = abi_ffi.dlopen(None)
    _sendmmsg = _libc.sendmmsg
except (OSError, AttributeError):  # not Linux/glibc: forwarding falls back to one sendto per player
    _sendmmsg = None

_TAG_ROOM = 16 + 4  # room for the SRTP auth tag / GCM tag (and the SRTCP index)
_MAX_PACKET = 1500 - _TAG_ROOM
_BUFFER_NEEDED = _MAX_PACKET + _TAG_ROOM  # the smallest session buffer the code below may write into

_LIB_FUNCTIONS = ("srtp_protect", "srtp_unprotect", "srtp_protect_rtcp", "srtp_unprotect_rtcp")


class SrtpError(Exception):
    pass


class SrtpLayoutError(SrtpError):
    """pylibsrtp's private layout is not the one this module was written against."""


def _describe(value: Any) -> str:
    if ffi is not None and isinstance(value, ffi.CData):
        return f"cdata {ffi.typeof(value).cname!r}"
    return "missing" if value is None else type(value).__name__


def _address(cdata: Any) -> int:
    return int(ffi.cast("uintptr_t", cdata))


def layout_problem(session: Any) -> str:
    """What differs in pylibsrtp's private layout, for `session`, from what this module uses; "" if nothing.

    Checked: the binding and its libsrtp functions, `_srtp` a `srtp_t *`, `_cdata` a `char[]` of at least
    _BUFFER_NEEDED bytes, `_buffer` a cffi buffer over exactly `_cdata`."""
    if lib is None:
        return _BINDING_ERROR
    for name in _LIB_FUNCTIONS:
        if not hasattr(lib, name):
            return f"pylibsrtp._binding.lib has no {name}"
    srtp = getattr(session, "_srtp", None)
    if not isinstance(srtp, ffi.CData) or ffi.typeof(srtp) is not ffi.typeof("srtp_t *"):
        return f"Session._srtp is {_describe(srtp)}, expected cdata 'srtp_t *'"
    cdata = getattr(session, "_cdata", None)
    if not isinstance(cdata, ffi.CData) or ffi.typeof(cdata) is not ffi.typeof("char[]"):
        return f"Session._cdata is {_describe(cdata)}, expected cdata 'char[]'"
    if len(cdata) < _BUFFER_NEEDED:
        return f"Session._cdata is {len(cdata)} bytes, the forwarding path needs {_BUFFER_NEEDED}"
    buffer = getattr(session, "_buffer", None)
    if not isinstance(buffer, ffi.buffer):
        return f"Session._buffer is {_describe(buffer)}, expected a cffi buffer"
    if len(buffer) != len(cdata) or _address(ffi.from_buffer(buffer)) != _address(cdata):
        return "Session._buffer is not a view of Session._cdata"
    return ""


def check_layout(session: Any) -> None:
    """Raise SrtpLayoutError if `session` does not have the private layout this module uses."""
    problem = layout_problem(session)
    if problem:
        raise SrtpLayoutError(
            f"pylibsrtp {PYLIBSRTP_VERSION} has a private layout webcall does not know: {problem}. "
            "webcall's SRTP forwarding writes into pylibsrtp's session buffers directly, so it refuses to run "
            "rather than corrupt memory; install the pylibsrtp version pinned in requirements.txt")


class SrtpSession:
    __slots__ = ("_session", "_srtp", "_cdata", "_view", "_len", "pointer")

    @property
    def context(self):
        """The libsrtp `srtp_t` (pylibsrtp's cdata), for the compiled fan-out core."""
        return self._srtp

    def __init__(self, session: pylibsrtp.Session) -> None:
        check_layout(session)
        self._session = session  # owns the libsrtp context and the buffer; keep it alive
        self._srtp = session._srtp[0]
        self._cdata = session._cdata
        self._view = memoryview(session._buffer)
        self._len = ffi.new("int *")
        self.pointer = abi_ffi.cast("void *", int(ffi.cast("uintptr_t", self._cdata)))  # the buffer, for sendmmsg

    def _run(self, func, data: bytes) -> bytes:
        n = len(data)
        if n > _MAX_PACKET:
            raise SrtpError("packet too long")
        self._view[:n] = data
        self._len[0] = n
        if func(self._srtp, self._cdata, self._len):
            raise SrtpError("srtp failure")
        return bytes(self._view[: self._len[0]])

    def protect(self, packet: bytes) -> bytes:
        return self._run(lib.srtp_protect, packet)

    def unprotect(self, packet: bytes) -> bytes:
        return self._run(lib.srtp_unprotect, packet)

    def protect_rtcp(self, packet: bytes) -> bytes:
        return self._run(lib.srtp_protect_rtcp, packet)

    def unprotect_rtcp(self, packet: bytes) -> bytes:
        return self._run(lib.srtp_unprotect_rtcp, packet)

    def send_rtp(self, sock: socket.socket, addr: tuple[str, int], header: struct.Struct, b0: int, b1: int,
                 seq: int, ts: int, ssrc: int, tail: bytes) -> int:
        """Assemble header + tail in place, protect, send. Returns bytes sent (0 if dropped)."""
        n = self.protect_in_place(header, b0, b1, seq, ts, ssrc, tail)
        if n:
            sock.sendto(self._view[:n], addr)
        return n

    def protect_in_place(self, header: struct.Struct, b0: int, b1: int, seq: int, ts: int, ssrc: int,
                         tail: bytes) -> int:
        """Assemble and protect a packet in this session's buffer; its length (0 if dropped). The buffer
        then holds the datagram until the next use of this session — `SendBatch.flush()` must come first."""
        n = 12 + len(tail)
        if n > _MAX_PACKET:
            return 0
        view = self._view
        header.pack_into(view, 0, b0, b1, seq, ts, ssrc)
        view[12:n] = tail
        length = self._len
        length[0] = n
        if lib.srtp_protect(self._srtp, self._cdata, length):
            return 0
        return length[0]


def pack_sockaddr(addr: tuple[str, int]) -> bytes | None:
    """The bytes of a `struct sockaddr_in` for sendmmsg, or None for addresses it does not take (IPv6)."""
    try:
        packed = socket.inet_pton(socket.AF_INET, addr[0])
    except OSError:
        return None
    return struct.pack("=H", socket.AF_INET) + struct.pack("!H", addr[1]) + packed + bytes(8)


def sockaddr(addr: tuple[str, int]):
    """A `struct sockaddr_in` for sendmmsg (cdata), or None for addresses it does not take (IPv6)."""
    packed = pack_sockaddr(addr)
    return None if packed is None else abi_ffi.new("char[16]", packed)


class SendBatch:
    """Datagrams waiting in their SRTP sessions' buffers, sent together by `flush()` with sendmmsg."""

    __slots__ = ("_fd", "_msgs", "_iovs", "_capacity", "count", "dropped")

    available = _sendmmsg is not None

    def __init__(self, sock: socket.socket, capacity: int = 512) -> None:
        self._fd = sock.fileno()
        self._capacity = capacity
        self._msgs = abi_ffi.new("struct mmsghdr[]", capacity)
        self._iovs = abi_ffi.new("struct iovec[]", capacity)
        for i in range(capacity):
            header = self._msgs[i].msg_hdr
            header.msg_iov = self._iovs + i
            header.msg_iovlen = 1
            header.msg_namelen = 16
        self.count = 0
        self.dropped = 0

    def add(self, pointer, length: int, name) -> None:
        i = self.count
        if i == self._capacity:
            self.flush()
            i = 0
        iov = self._iovs[i]
        iov.iov_base = pointer
        iov.iov_len = length
        self._msgs[i].msg_hdr.msg_name = name
        self.count = i + 1

    def flush(self) -> None:
        n, self.count = self.count, 0
        sent = 0
        while sent < n:
            result = _sendmmsg(self._fd, self._msgs + sent, n - sent, 0)
            if result <= 0:  # full socket buffer (the socket is non-blocking): UDP drops, and so do we
                self.dropped += n - sent
                return
            sent += result
