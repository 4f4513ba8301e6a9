"""The MSE front end (spec §11.1): the SDK's MediaSource player, fed over a second WebSocket.

`flv.py` builds the binary records (sans-I/O); `signalling.py` the trivial answer SDP. The media itself comes
from a shared feed of the publication (streams/feeds.py, transcode/pipeline.py).
"""
