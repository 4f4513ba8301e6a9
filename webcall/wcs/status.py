"""Stream status values and the exact ``info`` texts of the WCS protocol (spec §6).

The SDK compares these strings literally (and apps show them to users), so
they must match ``constants.js`` byte for byte.
"""

from __future__ import annotations

import enum
from typing import Final

from ..media.failures import Failure
from ..cluster.reasons import Refusal
from ..streams.registry import EndReason

__all__ = ["StreamStatus", "Info", "OwnInfo", "TERMINAL", "FAILURE_INFO", "END_INFO", "REFUSAL_INFO"]


class StreamStatus(enum.StrEnum):
    """Server-sent values of notifyStreamStatusEvent ``status``.

    StrEnum (not a plain ``(str, Enum)``) so that ``str()``/f-strings and
    ``json.dumps`` all yield the bare value, e.g. ``"PUBLISHING"``.
    NEW/PAUSED/PLAYBACK_PROBLEM are client-local in the SDK and never sent.
    """

    PENDING = "PENDING"
    PUBLISHING = "PUBLISHING"
    PLAYING = "PLAYING"
    UNPUBLISHED = "UNPUBLISHED"
    STOPPED = "STOPPED"
    FAILED = "FAILED"
    # Pseudo-status: updates the player's resolution without changing status().
    RESIZE = "RESIZE"


# After one of these the SDK drops the stream's handlers and ignores anything
# else for that mediaSessionId (spec §5), so the server must forget it too.
TERMINAL: Final[frozenset[StreamStatus]] = frozenset(
    {StreamStatus.UNPUBLISHED, StreamStatus.STOPPED, StreamStatus.FAILED}
)


class Info:
    """STREAM_STATUS_INFO: the ``info`` texts, exactly as in the SDK's constants.js."""

    FAILED_BY_ICE_ERROR: Final = "Failed by ICE error"
    FAILED_BY_ICE_TIMEOUT: Final = "Failed by ICE timeout"
    FAILED_BY_KEEP_ALIVE: Final = "Failed by ICE keep alive"
    FAILED_BY_DTLS_FINGERPRINT_ERROR: Final = "Failed by DTLS fingerprint error"
    FAILED_BY_DTLS_ERROR: Final = "Failed by DTLS error"
    FAILED_BY_HLS_WRITER_ERROR: Final = "Failed by HLS writer error"
    FAILED_BY_RTMP_WRITER_ERROR: Final = "Failed by RTMP writer error"
    FAILED_BY_RTP_ACTIVITY: Final = "Failed by RTP activity"
    STOPPED_BY_SESSION_DISCONNECT: Final = "Stopped by session disconnect"
    STOPPED_BY_REST_TERMINATE: Final = "Stopped by rest /terminate"
    STOPPED_BY_PUBLISHER_STOP: Final = "Stopped by publisher stop"
    STOPPED_BY_USER: Final = "Stopped by user"
    FAILED_BY_ERROR: Final = "Failed by error"
    FAILED_TO_ADD_STREAM_TO_PROXY: Final = "Failed to add stream to proxy"
    DISTRIBUTOR_STOPPED: Final = "Distributor stopped"
    PUBLISH_STREAM_IS_NOT_READY: Final = "Publish stream is not ready"
    STREAM_NOT_FOUND: Final = "Stream not found"
    STREAM_NAME_ALREADY_IN_USE: Final = "Stream name is already in use"
    MEDIASESSION_ID_NULL: Final = "MediaSessionId is null"
    MEDIASESSION_ID_ALREADY_IN_USE: Final = "MediaSessionId is already in use"
    SESSION_NOT_READY: Final = "Session not ready"
    SESSION_DOES_NOT_EXIST: Final = "Session does not exist"
    RTSP_HAS_WRONG_FORMAT: Final = "Rtsp has wrong format"
    FILE_HAS_WRONG_FORMAT: Final = "File has wrong format"
    FAILED_TO_CONNECT_TO_RTSP_STREAM: Final = "Failed to connect to rtsp stream"
    RTSP_STREAM_NOT_FOUND: Final = "Rtsp stream not found"
    RTSPAGENT_SHUTDOWN: Final = "RtspAgent shutdown"
    STREAM_FAILED: Final = "Stream failed"
    NO_COMMON_CODECS: Final = "No common codecs"
    BAD_URI: Final = "Bad URI"
    GOT_EXCEPTION_WHILE_STREAMING_FILE: Final = "Got exception while streaming file"
    REQUESTED_STREAM_SHUTDOWN: Final = "Requested stream shutdown"
    FAILED_TO_READ_FILE: Final = "Failed to read file"
    FILE_NOT_FOUND: Final = "File not found"
    FAILED_TO_CONNECT_TO_ORIGIN_STREAM: Final = "Failed to connect to origin stream"
    CDN_STREAM_NOT_FOUND: Final = "CDN stream not found"
    FAILED_TO_GET_AGENT_STORAGE: Final = "Failed to get agent storage"
    AGENT_SERVICING_ORIGIN_STREAM_IS_SHUTTING_DOWN: Final = (
        "Agent servicing origin stream is shutting down"
    )
    TERMINATED_BY_KEEP_ALIVE: Final = "Terminated by keep-alive"
    TRANSCODING_REQUIRED_BUT_DISABLED: Final = "Transcoding required, but disabled"
    RESTRICTED_ACCESS: Final = "Restricted access"
    NO_AVAILABLE_TRANSCODERS: Final = "No available transcoders"


class OwnInfo:
    """webcall's own ``info`` texts (the guardrails): not in the SDK's list, which shows any info as given."""

    FAILED_BY_BITRATE: Final = "Failed by incoming bitrate over the limit"
    SERVER_SHUTDOWN: Final = "Server shutdown"
    TOO_MANY_SESSIONS: Final = "Too many sessions from this address"
    TOO_MANY_STREAMS: Final = "Too many streams in this session"
    TOO_MANY_PLAYERS: Final = "Too many players of this stream"
    TOO_MANY_PUBLISHERS: Final = "Too many publishers on this server"
    TOO_MANY_MESSAGES: Final = "Too many messages per second"
    ORIGIN_LOST: Final = "Origin node lost"  # cluster: the node publishing the stream went silent
    CLUSTER_UNAVAILABLE: Final = "Cluster directory unavailable"  # cluster: Redis does not answer
    ORIGIN_UNREACHABLE: Final = "Origin node unreachable"  # cluster: the publishing node did not answer
    MEDIA_TRANSPORT_TIMEOUT: Final = "Media transport not connected"  # MSE/WSPlayer: no media socket came
    MEDIA_TRANSPORT_NOT_READING: Final = "Media transport not reading"  # its socket's buffer overflowed


# The media plane's and the stream core's reasons (media/failures.py, streams/registry.py) in WCS words.
FAILURE_INFO: Final[dict[Failure, str]] = {
    Failure.ICE_TIMEOUT: Info.FAILED_BY_ICE_TIMEOUT,
    Failure.ICE_ERROR: Info.FAILED_BY_ICE_ERROR,
    Failure.CONSENT_EXPIRED: Info.FAILED_BY_KEEP_ALIVE,
    Failure.DTLS_ERROR: Info.FAILED_BY_DTLS_ERROR,
    Failure.DTLS_FINGERPRINT: Info.FAILED_BY_DTLS_FINGERPRINT_ERROR,
    Failure.PEER_CLOSED: Info.STOPPED_BY_USER,
    Failure.INTERNAL_ERROR: Info.FAILED_BY_ERROR,
    Failure.WORKER_LOST: Info.FAILED_BY_ERROR,
    Failure.RTP_ACTIVITY: Info.FAILED_BY_RTP_ACTIVITY,
    Failure.BITRATE_EXCEEDED: OwnInfo.FAILED_BY_BITRATE,
}

END_INFO: Final[dict[EndReason, str]] = {
    EndReason.PUBLISHER_STOPPED: Info.STOPPED_BY_PUBLISHER_STOP,
    EndReason.PUBLISHER_DISCONNECTED: Info.STOPPED_BY_SESSION_DISCONNECT,
    EndReason.TERMINATED: Info.STOPPED_BY_REST_TERMINATE,
    EndReason.ORIGIN_LOST: OwnInfo.ORIGIN_LOST,
}

# The cluster's refusals (cluster/reasons.py).
REFUSAL_INFO: Final[dict[Refusal, str]] = {
    Refusal.NAME_IN_USE: Info.STREAM_NAME_ALREADY_IN_USE,
    Refusal.DIRECTORY_UNAVAILABLE: OwnInfo.CLUSTER_UNAVAILABLE,
    Refusal.ORIGIN_UNREACHABLE: OwnInfo.ORIGIN_UNREACHABLE,
}
