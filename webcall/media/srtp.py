"""SRTP on the hot path: libsrtp through pylibsrtp's own cffi binding, without per-packet allocations.

pylibsrtp's `Session.protect()` allocates a length cell, validates, and copies the result out for every
packet; under profile that wrapper cost more than the encryption itself. Here each session keeps its
buffer and length cell, the forwarded packet is assembled directly in the buffer (header packed in
place, payload copied once), protected in place, and handed to `sendto` as a memoryview — no copy out.
"""

from __future__ import annotations

import socket
import struct

import pylibsrtp
from pylibsrtp._binding import ffi, lib

_MAX_PACKET = 1500 - 16 - 4  # room for the SRTP auth tag / GCM tag (and the SRTCP index)


class SrtpError(Exception):
    pass


class SrtpSession:
    __slots__ = ("_session", "_srtp", "_cdata", "_view", "_len")

    def __init__(self, session: pylibsrtp.Session) -> None:
        self._session = session  # owns the libsrtp context and the buffer; keep it alive
        self._srtp = session._srtp[0]
        self._cdata = session._cdata
        self._view = memoryview(session._buffer)
        self._len = ffi.new("int *")

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
        n = length[0]
        sock.sendto(view[:n], addr)
        return n
