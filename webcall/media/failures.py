"""Why a media connection ended, in the media plane's own words.

The media plane knows no signalling protocol: it reports one of these, and each front end says it in
its own protocol (the WCS front end maps them to the SDK's `info` strings in `wcs/status.py`).
"""

from __future__ import annotations

import enum


class Failure(enum.StrEnum):
    ICE_TIMEOUT = "ice-timeout"  # no valid connectivity check before the connect deadline
    ICE_ERROR = "ice-error"  # the client's address now speaks for another connection
    CONSENT_EXPIRED = "consent-expired"  # no STUN from the client for the consent timeout (RFC 7675)
    DTLS_ERROR = "dtls-error"  # the handshake failed or did not finish in time
    DTLS_FINGERPRINT = "dtls-fingerprint"  # the client's certificate does not match its offer's fingerprint
    PEER_CLOSED = "peer-closed"  # the client closed DTLS: it hung up
    INTERNAL_ERROR = "internal-error"  # a bug contained at the port, or the server stopping
    RTP_ACTIVITY = "rtp-activity"  # a publisher's RTP stopped for --rtp-activity-timeout (its network is gone)
    BITRATE_EXCEEDED = "bitrate-exceeded"  # a publisher stayed over the bitrate ceiling for the grace period
    WORKER_LOST = "worker-lost"  # the media worker process that held the connection died or stopped answering
