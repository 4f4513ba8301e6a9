"""The WebSocket Origin allow-list (`--allow-origins`, WCS's allow_domains): a pure check.

Patterns, comma-separated:

* ``https://example.com``        that scheme and host, on the scheme's default port (443);
* ``https://example.com:8443``   that scheme, host and port;
* ``example.com``                that host with any scheme (http or https) and any port;
* ``*.example.com``              any subdomain of example.com (not example.com itself), with or without a
                                 scheme or port as above;
* ``*``                          anything (the same as an empty list).

Hosts compare case-insensitively, a trailing dot ignored. An empty list allows every origin. With a list,
the literal origin ``null`` (sandboxed frames, file: pages) is allowed only if listed, and a malformed Origin
never matches. A request *without* an Origin header is allowed: browsers always send one on a WebSocket
upgrade, so its absence means a non-browser client, which could send any Origin it liked anyway — the list
protects users' browsers from other sites' pages (cross-site WebSocket hijacking), not the server from
scripts.
"""

from __future__ import annotations

from dataclasses import dataclass

DEFAULT_PORTS = {"http": 80, "https": 443, "ws": 80, "wss": 443}


@dataclass(frozen=True, slots=True)
class OriginPattern:
    scheme: str | None  # None: http or https
    host: str  # lower case; "*.example.com" keeps its "*."; "*" = any; "null" = the null origin
    port: int | None  # None: any port (only when scheme is None)

    def matches(self, scheme: str, host: str, port: int) -> bool:
        if self.host == "*":
            return True
        if self.scheme is not None and scheme != self.scheme:
            return False
        if self.scheme is None and scheme not in ("http", "https"):
            return False
        if self.port is not None and port != self.port:
            return False
        if self.host.startswith("*."):
            suffix = self.host[1:]  # ".example.com"
            return host.endswith(suffix) and len(host) > len(suffix)
        return host == self.host


def _split(text: str) -> tuple[str | None, str, int | None] | None:
    """(scheme, host, port) of "scheme://host[:port]" or "host[:port]"; None if malformed."""
    scheme: str | None = None
    if "://" in text:
        scheme, _, text = text.partition("://")
        scheme = scheme.lower()
        if not scheme or not scheme.isascii() or not scheme.isalpha():
            return None
    if not text or any(c in text for c in "/?#@ \t\r\n\\"):
        return None
    port: int | None = None
    if text.startswith("["):  # IPv6 literal
        end = text.find("]")
        if end < 0:
            return None
        host, rest = text[: end + 1], text[end + 1:]
        if rest:
            if not rest.startswith(":"):
                return None
            port_text = rest[1:]
        else:
            port_text = None
    else:
        host, colon, port_text = text.partition(":")
        if not colon:
            port_text = None
    if port_text is not None:
        if not port_text.isascii() or not port_text.isdigit() or len(port_text) > 5 or int(port_text) > 65535:
            return None
        port = int(port_text)
    host = host.lower().rstrip(".")
    if not host:
        return None
    return scheme, host, port


def parse_allow_list(text: str) -> tuple[OriginPattern, ...]:
    """Patterns from the comma-separated option value; raises ValueError for a malformed one."""
    patterns = []
    for item in text.split(","):
        item = item.strip()
        if not item:
            continue
        if item == "*":
            patterns.append(OriginPattern(None, "*", None))
            continue
        if item.lower() == "null":
            patterns.append(OriginPattern(None, "null", None))
            continue
        parts = _split(item)
        if parts is None:
            raise ValueError(f"bad origin pattern {item!r}")
        scheme, host, port = parts
        if "*" in host and not (host.startswith("*.") and "*" not in host[2:] and len(host) > 2):
            raise ValueError(f"bad origin pattern {item!r}: only a leading '*.' wildcard is allowed")
        if scheme is not None and port is None:
            port = DEFAULT_PORTS.get(scheme)
        patterns.append(OriginPattern(scheme, host, port))
    return tuple(patterns)


def origin_allowed(origin: str | None, patterns: tuple[OriginPattern, ...]) -> bool:
    """Whether a WebSocket upgrade with this Origin header may go on. Never raises."""
    if not patterns or origin is None:
        return True
    origin = origin.strip()
    if origin.lower() == "null":
        return any(p.host in ("null", "*") for p in patterns)
    parts = _split(origin)
    if parts is None or parts[0] is None or "*" in parts[1]:
        return any(p.host == "*" for p in patterns)
    scheme, host, port = parts
    if port is None:
        port = DEFAULT_PORTS.get(scheme, 0)
    return any(p.host != "null" and p.matches(scheme, host, port) for p in patterns)
