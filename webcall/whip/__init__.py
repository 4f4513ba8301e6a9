"""WHIP (RFC 9725) ingest and WHEP playback: a front end of the stream core over plain HTTP.

`POST /whip/{stream}` publishes, `POST /whep/{stream}` plays any stream (whoever publishes it), each answering
with the SDP answer and a Location for the resource that `DELETE` ends. The front end speaks only to the stream
core (streams/registry.py) and the media plane (media/plane.py or workers/control.py); see http.py.
"""

from .http import WhipFrontEnd

__all__ = ["WhipFrontEnd"]
