"""The WSPlayer front end (spec §11.2): the SDK's legacy canvas player over the second WebSocket.

`packets.py` builds its binary packets (sans-I/O). The media comes from a shared feed of the publication
(streams/feeds.py, transcode/pipeline.py: MPEG-1 video and G.711 µ-law audio).
"""
