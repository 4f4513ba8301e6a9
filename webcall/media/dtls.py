"""DTLS-SRTP as the passive (server) side, over pyOpenSSL memory BIOs — fed datagrams, returns datagrams.

One certificate per server process; its fingerprint goes in every answer. After the handshake the peer's
certificate is checked against the fingerprint from its offer, and SRTP keys are exported (RFC 5764 §4.2).
"""

from __future__ import annotations

from dataclasses import dataclass

import pylibsrtp
from aiortc.rtcdtlstransport import (
    SRTP_AEAD_AES_128_GCM,
    SRTP_AES128_CM_SHA1_80,
    RTCCertificate,
    SRTPProtectionProfile,
    certificate_digest,
)
from OpenSSL import SSL

from ..protocol.sdp import FINGERPRINT_ALGORITHMS
from .srtp import SrtpSession

def _profile_available(profile: SRTPProtectionProfile) -> bool:
    try:
        pylibsrtp.Policy(srtp_profile=profile.libsrtp_profile)
    except pylibsrtp.Error:
        return False
    return True


# Server preference order: OpenSSL picks the first of ours that the client offers. GCM first: one pass
# for encryption and authentication is cheaper per packet than AES-CM + HMAC-SHA1.
SRTP_PROFILES = tuple(p for p in (SRTP_AEAD_AES_128_GCM, SRTP_AES128_CM_SHA1_80) if _profile_available(p))


class DtlsError(Exception):
    """Handshake failed; `fingerprint` tells the two failure statuses of the spec apart."""

    def __init__(self, reason: str, fingerprint: bool = False) -> None:
        super().__init__(reason)
        self.fingerprint = fingerprint


@dataclass(frozen=True, slots=True)
class SrtpKeys:
    profile: str
    rx: SrtpSession
    tx: SrtpSession


class DtlsIdentity:
    """The server's certificate and the SSL context every connection shares."""

    def __init__(self) -> None:
        self.certificate = RTCCertificate.generateCertificate()
        self.fingerprint = ("sha-256", certificate_digest(self.certificate._cert, "sha-256"))
        ctx = SSL.Context(SSL.DTLS_METHOD)
        ctx.set_options(SSL.OP_NO_TICKET | SSL.OP_NO_QUERY_MTU)
        # Any client certificate is accepted here; it is checked against the SDP fingerprint afterwards.
        ctx.set_verify(SSL.VERIFY_PEER | SSL.VERIFY_FAIL_IF_NO_PEER_CERT, lambda *args: True)
        ctx.use_certificate(self.certificate._cert)
        ctx.use_privatekey(self.certificate._key)
        ctx.set_cipher_list(
            b"ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-ECDSA-CHACHA20-POLY1305:"
            b"ECDHE-ECDSA-AES128-SHA:ECDHE-ECDSA-AES256-SHA"
        )
        ctx.set_tlsext_use_srtp(b":".join(p.openssl_profile for p in SRTP_PROFILES))
        self.context = ctx


class DtlsServer:
    """One DTLS association. `feed()` returns the datagrams to send back (a flight may be several)."""

    __slots__ = ("_ssl", "_remote_fingerprints", "connected", "closed")

    def __init__(self, identity: DtlsIdentity, remote_fingerprints: list[tuple[str, str]]) -> None:
        self._ssl = SSL.Connection(identity.context, None)
        self._ssl.set_accept_state()
        self._ssl.set_ciphertext_mtu(1200)
        self._remote_fingerprints = remote_fingerprints
        self.connected = False
        self.closed = False

    def release(self) -> None:
        """Free the OpenSSL connection now (its buffers and BIOs, ~10 KB of native memory) rather than when the
        collector gets to the ended connection's reference cycles; the association is dead afterwards."""
        self._ssl = None
        self.closed = True

    def feed(self, data: bytes) -> tuple[list[bytes], SrtpKeys | None]:
        """Process one datagram: (datagrams to send, SRTP keys once the handshake completes)."""
        if self._ssl is None:
            return [], None
        self._ssl.bio_write(data)
        keys = None
        if not self.connected:
            try:
                self._ssl.do_handshake()
            except SSL.WantReadError:
                pass
            except SSL.Error as exc:
                raise DtlsError(f"handshake failed: {exc}") from None
            else:
                self.connected = True
                self._check_fingerprint()
                keys = self._export_keys()
        else:
            # After the handshake only alerts (close_notify) or retransmitted handshake records arrive.
            try:
                self._ssl.recv(1500)
            except SSL.ZeroReturnError:
                self.closed = True
            except SSL.Error:
                pass
        return self._pending(), keys

    def handle_timeout(self) -> list[bytes]:
        """Retransmit the last flight if OpenSSL's DTLS timer expired."""
        if self.connected or self._ssl is None:
            return []
        try:
            self._ssl.DTLSv1_handle_timeout()
        except SSL.Error:
            return []
        return self._pending()

    def shutdown(self) -> list[bytes]:
        if self._ssl is None:
            return []
        if self.connected and not self.closed:
            try:
                self._ssl.shutdown()
            except SSL.Error:
                pass
        self.closed = True
        return self._pending()

    def _pending(self) -> list[bytes]:
        out = []
        while True:
            try:
                out.append(self._ssl.bio_read(1500))
            except SSL.WantReadError:
                return out

    def _check_fingerprint(self) -> None:
        cert = self._ssl.get_peer_certificate(as_cryptography=True)
        if cert is None:
            raise DtlsError("no peer certificate", fingerprint=True)
        checked = 0
        for algorithm, value in self._remote_fingerprints:
            if algorithm in FINGERPRINT_ALGORITHMS:
                checked += 1
                if certificate_digest(cert, algorithm) != value.upper():
                    raise DtlsError("fingerprint mismatch", fingerprint=True)
        if not checked:  # refused at offer time already (protocol/sdp.py); kept for endpoints made otherwise
            raise DtlsError("no usable fingerprint", fingerprint=True)

    def _export_keys(self) -> SrtpKeys:
        selected = self._ssl.get_selected_srtp_profile()
        profile = next((p for p in SRTP_PROFILES if p.openssl_profile == selected), None)
        if profile is None:
            raise DtlsError("no SRTP profile negotiated")
        material = self._ssl.export_keying_material(
            b"EXTRACTOR-dtls_srtp", 2 * (profile.key_length + profile.salt_length)
        )
        # As the DTLS server we send with the server key (index 1) and receive with the client's (index 0).
        rx = pylibsrtp.Policy(
            key=profile.get_key_and_salt(material, 0),
            ssrc_type=pylibsrtp.Policy.SSRC_ANY_INBOUND,
            srtp_profile=profile.libsrtp_profile,
        )
        tx = pylibsrtp.Policy(
            key=profile.get_key_and_salt(material, 1),
            ssrc_type=pylibsrtp.Policy.SSRC_ANY_OUTBOUND,
            srtp_profile=profile.libsrtp_profile,
        )
        for policy in (rx, tx):
            policy.allow_repeat_tx = True  # retransmissions reuse sequence numbers
            policy.window_size = 1024
        return SrtpKeys(selected.decode(), SrtpSession(pylibsrtp.Session(rx)), SrtpSession(pylibsrtp.Session(tx)))
