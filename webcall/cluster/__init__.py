"""Several webcall nodes as one service, through Redis (`--cluster-redis`): one namespace of stream names,
streams pulled from the node that publishes them over the relay between workers (sealed), /lb.

`directory.py` (Redis: nodes, claims, stream lists, requests), `sealed.py` (the relay, sealed per datagram),
`node.py` (this node's part: claims, pulls, serving pulls, liveness, /lb), `reasons.py` (why a request failed,
in no protocol's words). Imported only with --cluster-redis (it needs the `redis` package).
"""
