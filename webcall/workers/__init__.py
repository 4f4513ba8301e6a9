"""Media workers under one control process.

The control process owns HTTP/WebSocket signalling and the stream registry; N worker processes each own one
UDP media port (media-port + i). This package is the plumbing between them and nothing else:

- `channel`    — the control↔worker command channel (length-prefixed JSON, requests/replies/events, pings)
- `supervisor` — starts the workers, keeps one channel each, replaces lost ones, leaves no orphans
- `main`       — the worker process entry point (`python -m webcall.workers.main`)
- `placement`  — which worker gets a publisher or a player (pure policy)
- `relay`      — decrypted RTP between workers over Unix datagram sockets, with NACK/keyframe feedback

It imports nothing from webcall.server, webcall.streams or webcall.protocol: those import it, not the other
way round.
"""
