"""Server configuration: one dataclass, defaults that just work, overridable by WEBCALL_* env and CLI flags."""

from __future__ import annotations

import argparse
import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path

import ifaddr

PACKAGE_DIR = Path(__file__).resolve().parent
REPO_DIR = PACKAGE_DIR.parents[1]


@dataclass
class Config:
    host: str = field(default="0.0.0.0", metadata={"help": "HTTP/WebSocket bind address"})
    port: int = field(default=8080, metadata={"help": "HTTP + WebSocket signalling port (the SDK's urlServer)"})
    media_host: str = field(default="0.0.0.0", metadata={"help": "UDP media bind address"})
    media_port: int = field(default=31001, metadata={"help": "the one UDP port for all WebRTC media"})
    public_ip: str = field(default="auto", metadata={
        "help": "IP announced in ICE candidates (comma-separated); auto = this host's IPv4 addresses"})
    connect_timeout: float = field(default=10.0, metadata={
        "help": "seconds for ICE+DTLS (then first media) before a stream FAILs"})
    consent_timeout: float = field(default=30.0, metadata={
        "help": "seconds without STUN from a client before its connection is dropped"})
    ping_interval: float = field(default=5.0, metadata={"help": "seconds between server pings"})
    ping_probes: int = field(default=10, metadata={"help": "missed pongs before a session is closed"})
    max_bitrate: int = field(default=2_500_000, metadata={"help": "bitrate (bit/s) offered to publishers by REMB"})
    video_codecs: str = field(default="VP8,H264", metadata={"help": "publisher video codecs, in preference order"})
    max_message_size: int = field(default=256 * 1024, metadata={"help": "largest WebSocket message accepted"})
    static_dir: str = field(default=str(PACKAGE_DIR / "static"), metadata={"help": "demo pages"})
    sdk_file: str = field(default=str(REPO_DIR / "node_modules" / "@flashphoner" / "websdk" / "flashphoner.js"),
                          metadata={"help": "the official Web SDK bundle served at /sdk/flashphoner.js"})
    log_level: str = field(default="info", metadata={"help": "debug, info, warning or error"})

    @property
    def video_codec_list(self) -> tuple[str, ...]:
        return tuple(c.strip() for c in self.video_codecs.split(",") if c.strip())

    def announced_ips(self) -> list[str]:
        if self.public_ip and self.public_ip != "auto":
            return [ip.strip() for ip in self.public_ip.split(",") if ip.strip()]
        if self.media_host not in ("0.0.0.0", "::", ""):
            return [self.media_host]
        ips = [
            ip.ip for adapter in ifaddr.get_adapters() for ip in adapter.ips
            if isinstance(ip.ip, str) and not ip.ip.startswith("127.")
        ]
        return ips + ["127.0.0.1"]  # loopback last: a browser on this host can still use it


def parse_args(argv: list[str] | None = None) -> Config:
    """Defaults < WEBCALL_<NAME> environment variables < command-line flags."""
    parser = argparse.ArgumentParser(prog="webcall", description="WebRTC streaming server speaking the WCS API")
    for f in dataclasses.fields(Config):
        env = os.environ.get(f"WEBCALL_{f.name.upper()}")
        default = env if env is not None else f.default
        kind = type(f.default)
        parser.add_argument(f"--{f.name.replace('_', '-')}", dest=f.name, type=kind, default=kind(default),
                            help=f"{f.metadata.get('help', '')} (default: {f.default})")
    return Config(**vars(parser.parse_args(argv)))
