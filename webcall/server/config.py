"""Server configuration: one dataclass, defaults that just work.

Sources, each overriding the one before: the defaults below < a TOML file (`--config PATH`, or
`WEBCALL_CONFIG`) < `WEBCALL_<NAME>` environment variables < command-line flags. The README's option
table is `markdown_table()`'s output (a unit test keeps them equal).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ifaddr

from ..eventloop import DEFAULT_LOOP, LOOPS
from ..hooks.origins import parse_allow_list

PACKAGE_DIR = Path(__file__).resolve().parent
REPO_DIR = PACKAGE_DIR.parents[1]
ENV_PREFIX = "WEBCALL_"
LOG_LEVELS = ("debug", "info", "warning", "error")


@dataclass
class Config:
    host: str = field(default="0.0.0.0", metadata={"help": "HTTP/WebSocket bind address"})
    port: int = field(default=8080, metadata={"help": "HTTP + WebSocket signalling port (the SDK's urlServer)"})
    media_host: str = field(default="0.0.0.0", metadata={"help": "UDP media bind address"})
    media_port: int = field(default=31001, metadata={"help": "the one UDP port for all WebRTC media"})
    media_tcp_port: str = field(default="same", metadata={
        "help": "TCP port for WebRTC media over ICE-TCP (clients that cannot use UDP, the SDK's transport TCP), "
                "announced after UDP: same = the --media-port number, over TCP; a number; 0 = any free port; "
                "off = none. Worker i owns this + i"})
    public_ip: str = field(default="auto", metadata={
        "help": "IP announced in ICE candidates (comma-separated); auto = this host's IPv4 addresses"})
    tls_port: int = field(default=8443, metadata={
        "help": "HTTPS + WSS port (same pages and signalling as --port); 0 = any free port, -1 = off"})
    tls_cert: str = field(default="", metadata={"help": "PEM certificate for HTTPS; empty = self-signed"})
    tls_key: str = field(default="", metadata={"help": "PEM private key for --tls-cert"})
    tls_dir: str = field(default="certs", metadata={"help": "where the self-signed certificate is kept"})
    rest_host: str = field(default="127.0.0.1", metadata={
        "help": "REST API + /metrics bind address (it can stop any stream: expose it with care)"})
    rest_port: int = field(default=8081, metadata={
        "help": "WCS REST API, /metrics and /health port; 0 = any free port, -1 = off"})
    connect_timeout: float = field(default=10.0, metadata={
        "help": "seconds for ICE+DTLS (then first media) before a stream FAILs"})
    consent_timeout: float = field(default=30.0, metadata={
        "help": "seconds without STUN from a client before its connection is dropped"})
    ping_interval: float = field(default=5.0, metadata={"help": "seconds between server pings"})
    ping_probes: int = field(default=10, metadata={"help": "missed pongs before a session is closed"})
    max_bitrate: int = field(default=2_500_000, metadata={"help": "bitrate (bit/s) offered to publishers by REMB"})
    fanout_core: str = field(default="auto", metadata={
        "help": "forwarding to players: c (the compiled core, `make core`), python, or auto (c when built)"})
    fanout_threads: int = field(default=1, metadata={
        "help": "2: the compiled core splits fan-outs to 64+ players over a second thread (a spare core)"})
    ingest: str = field(default="auto", metadata={
        "help": "publishers' packets: auto (with the compiled core, each UDP publisher gets a socket of its own "
                "read by a C thread that forwards to started players before the event loop wakes), or loop "
                "(the event loop reads and forwards every packet)"})
    event_loop: str = field(default=DEFAULT_LOOP, metadata={
        "help": "uvloop (libuv, the default: half the CPU per wake-up) or asyncio (the standard library's loop); "
                "for this process and its media workers"})
    workers: str = field(default="auto", metadata={
        "help": "media worker processes: auto (one per core this process may use), or a number; 1 = one process, "
                "no workers. Worker i owns UDP port --media-port + i"})
    placement: str = field(default="fill", metadata={
        "help": "where players go with workers: fill (the publisher's worker until it is busy) or spread "
                "(the least-loaded worker; a stream is relayed once to each other worker)"})
    video_codecs: str = field(default="VP8,H264", metadata={"help": "publisher video codecs, in preference order"})
    rate_interval: float = field(default=1.0, metadata={
        "help": "seconds between inbound/outboundVideoRate messages and rate samples (the SDK assumes 1)"})
    snapshot_timeout: float = field(default=3.0, metadata={
        "help": "seconds a snapshot waits for a keyframe before snapshotFailed"})
    max_message_size: int = field(default=256 * 1024, metadata={"help": "largest WebSocket message accepted"})
    static_dir: str = field(default=str(PACKAGE_DIR / "static"), metadata={"help": "demo pages"})
    sdk_file: str = field(default=str(REPO_DIR / "node_modules" / "@flashphoner" / "websdk" / "flashphoner.js"),
                          metadata={"help": "the official Web SDK bundle served at /sdk/flashphoner.js"})
    log_level: str = field(default="info", metadata={"help": "debug, info, warning or error"})
    # --- recording (spec §14; webcall/streams/recording.py) ---
    records_dir: str = field(default="records", metadata={
        "help": "where recordings are written (relative to the working directory); served at /client/records/"})
    record_template: str = field(default="stream-{mediaSessionId}-{login}", metadata={
        "help": "recording file name: {streamName} {mediaSessionId} {login} {sessionId} {audioCodec} "
                "{videoCodec} {startTime} {endTime} {startTimeMillis} {endTimeMillis} {duration}"})
    record_formats: str = field(default="vp8-webm,h264-mp4", metadata={
        "help": "container per video codec: vp8-webm or vp8-mkv, h264-mp4 or h264-mkv (audio-only: webm)"})
    record_mp4_audio: str = field(default="opus", metadata={
        "help": "audio in MP4 recordings: opus (copied) or aac (transcoded, as WCS does)"})
    record_fragment: float = field(default=1.0, metadata={
        "help": "seconds per MP4 fragment / WebM cluster: the most of a recording a crash can lose"})
    # --- REST hooks and origins (spec §13, §15; webcall/hooks/, docs/hooks.md) ---
    hook_url: str = field(default="", metadata={
        "help": "backend URL of appKey defaultApp's REST hooks (POST URL/method); other apps: TOML "
                "[apps.NAME] hook_url; empty = no hooks, everything allowed"})
    hook_timeout: float = field(default=3.0, metadata={
        "help": "seconds a REST hook may take (WCS: 15, too long for a user waiting on Publish); then it is "
                "denied, or allowed if the backend set restOnError LOG"})
    hook_secret: str = field(default="", metadata={
        "help": "sign every hook request with the header Authorization: WCS + HMAC-MD5 hex of the body; empty = unsigned"})
    keep_alive_interval: float = field(default=0.0, metadata={
        "help": "seconds between StreamKeepAliveEvent hooks per stream (a 403 stops it; WCS uses 10); 0 = off"})
    hook_queue_size: int = field(default=64, metadata={
        "help": "events (status changes) queued per client for the backend; more are dropped and counted"})
    allow_origins: str = field(default="", metadata={
        "help": "WebSocket Origin allow-list, comma-separated (https://a.com, *.b.com, c.com:8080); "
                "empty = any origin"})
    whip_token: str = field(default="", metadata={
        "help": "WHIP/WHEP bearer tokens, comma-separated: requests need Authorization: Bearer <one of them>; "
                "empty = no static tokens (a --hook-url backend still decides, with the token as authToken)"})
    whip_ice_servers: str = field(default="", metadata={
        "help": "ICE servers sent to WHIP/WHEP clients as Link headers, comma-separated `URL [username credential]` "
                "(e.g. turn:turn.example.com:3478?transport=udp user pass); empty = none: no client needs one"})
    # --- guardrails (webcall/limits.py): 0 = no limit ---
    rtp_activity_timeout: float = field(default=5.0, metadata={
        "help": "seconds without RTP from a publishing client before its stream is FAILED (Failed by RTP "
                "activity) and its players STOPPED; browsers send audio or video every 0.4 s even when muted"})
    shutdown_timeout: float = field(default=8.0, metadata={
        "help": "seconds SIGTERM waits for clients to be told, recordings finalized and hook events posted, then "
                "exits anyway (a second SIGTERM exits at once); under Docker's 10 s stop grace"})
    max_sessions_per_ip: int = field(default=100, metadata={
        "help": "WebSocket sessions from one client IP address (an office behind NAT fits; one host cannot take "
                "every file descriptor); loopback is exempt: a reverse proxy on this host, or the bench"})
    max_streams_per_session: int = field(default=50, metadata={
        "help": "streams (published + played) of one session: a 50-person grid"})
    max_players_per_stream: int = field(default=1000, metadata={
        "help": "players of one stream: a guardrail, not the capacity (webcall bench forwards a 600 kbps stream "
                "to 2,200-3,500 players per core of CPU on loopback: README, Measuring)"})
    max_publishers: int = field(default=100, metadata={
        "help": "publishers on the server (each up to --max-bitrate in, plus its fixed per-packet cost)"})
    max_messages_per_second: float = field(default=50.0, metadata={
        "help": "WebSocket messages per second per session (token bucket, bursts of twice that); excess gets "
                "fail and counts as a protocol error (20 close the session); excess the server ignores "
                "anyway (pushLogs, client metrics) is dropped"})
    max_unverified_datagrams: int = field(default=100, metadata={
        "help": "UDP datagrams per second from an address that has not passed a STUN check (a browser sends "
                "≤ 50); more are dropped before parsing. Per media process (per worker with --workers 2+)"})
    max_dtls_handshakes: int = field(default=100, metadata={
        "help": "DTLS handshakes in progress; a new one beyond it is dropped (the client retransmits). Per media "
                "process (per worker with --workers 2+)"})
    bitrate_ceiling: int = field(default=0, metadata={
        "help": "bit/s a publisher may send (measured) for --bitrate-grace before it is FAILED; 0 = 1.5 × "
                "--max-bitrate (REMB asks for --max-bitrate)"})
    bitrate_grace: float = field(default=5.0, metadata={
        "help": "seconds a publisher may stay over --bitrate-ceiling (keyframes and retransmission bursts)"})
    keyframe_interval: float = field(default=2.0, metadata={
        "help": "ask every video publisher for a keyframe when its last is this many seconds old (PLI), so that the "
                "ring always holds one to start from: a stream's first MSE player starts at once from the recent "
                "past (README: MSE start) and a snapshot finds one without asking; 0 = only when a player needs "
                "one (a browser publisher then makes keyframes only when asked)"})
    cluster_redis: str = field(default="", metadata={
        "help": "join a cluster of webcall nodes through this Redis (redis://host:6379/0): one namespace of stream "
                "names, play anywhere what is published anywhere, GET /lb; empty = a single node, no Redis"})
    node_id: str = field(default="", metadata={
        "help": "this node's name in the cluster; empty = host name:port"})
    relay_host: str = field(default="", metadata={
        "help": "cluster: the address other nodes send relayed media to (announced in Redis); empty = the first "
                "--public-ip"})
    relay_port: int = field(default=31900, metadata={
        "help": "cluster: UDP port of the relay between nodes (sealed with AES-GCM); with workers, worker i "
                "binds this + i; 0 = any free port"})
    relay_max_out: int = field(default=0, metadata={
        "help": "cluster: outgoing relays to other nodes this node serves at most; beyond, they chain from a node "
                "that relays the stream already (A -> B -> C); 0 = no limit"})
    cluster_ttl: float = field(default=3.0, metadata={
        "help": "cluster: seconds a dead node's entries stay in Redis, and of silence before a relay between "
                "nodes ends"})
    # TOML-only tables (no flag, no environment variable): [apps.<appKey>] with the keys in APP_KEYS.
    apps: dict[str, dict[str, Any]] = field(default_factory=dict, metadata={"table": True})

    @property
    def publisher_bitrate_ceiling(self) -> int:
        """--bitrate-ceiling, or 1.5 × --max-bitrate when it is 0."""
        return self.bitrate_ceiling or int(self.max_bitrate * 1.5)

    @property
    def video_codec_list(self) -> tuple[str, ...]:
        return tuple(c.strip() for c in self.video_codecs.split(",") if c.strip())

    def hook_urls(self) -> dict[str, str]:
        """appKey -> backend URL: the [apps.X] tables, with hook_url (any source) for defaultApp."""
        urls = {key: app["hook_url"] for key, app in self.apps.items() if app.get("hook_url")}
        if self.hook_url:
            urls["defaultApp"] = self.hook_url
        return urls

    def media_tcp_port_number(self) -> int:
        """--media-tcp-port as a number: -1 when off (raises ValueError for a value no server can use)."""
        value = str(self.media_tcp_port).strip().lower()
        if value == "same":
            return self.media_port
        if value in ("off", "-1"):
            return -1
        if not value.isdigit() or not 0 <= int(value) <= 65535:
            raise ValueError("media_tcp_port must be same, off or 0..65535")
        return int(value)

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

    def validate(self) -> None:
        """Raise ValueError for values no server can run with."""
        for name in ("port", "media_port"):
            if not 0 <= getattr(self, name) <= 65535:
                raise ValueError(f"{name} must be 0..65535")
        self.media_tcp_port_number()  # raises ValueError
        for name in ("rest_port", "tls_port"):
            if not -1 <= getattr(self, name) <= 65535:
                raise ValueError(f"{name} must be -1..65535")
        if bool(self.tls_cert) != bool(self.tls_key):
            raise ValueError("give both tls_cert and tls_key, or neither")
        for name in ("connect_timeout", "consent_timeout", "ping_interval", "rate_interval", "snapshot_timeout"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0")
        if self.ping_probes < 1 or self.max_bitrate < 1 or self.max_message_size < 1024:
            raise ValueError("ping_probes and max_bitrate must be >= 1, max_message_size >= 1024")
        if self.log_level.lower() not in LOG_LEVELS:
            raise ValueError(f"log_level must be one of {', '.join(LOG_LEVELS)}")
        if not self.video_codec_list:
            raise ValueError("video_codecs must name at least one codec")
        formats = {f.strip().lower() for f in self.record_formats.split(",") if f.strip()}
        if not formats <= {"vp8-webm", "vp8-mkv", "h264-mp4", "h264-mkv"}:
            raise ValueError("record_formats items must be vp8-webm, vp8-mkv, h264-mp4 or h264-mkv")
        if self.fanout_core not in ("auto", "c", "python"):
            raise ValueError("fanout_core must be auto, c or python")
        if self.event_loop not in LOOPS:
            raise ValueError(f"event_loop must be {' or '.join(LOOPS)}")
        if self.ingest not in ("auto", "loop"):
            raise ValueError("ingest must be auto or loop")
        if self.fanout_threads not in (1, 2):
            raise ValueError("fanout_threads must be 1 or 2")
        if not (self.workers == "auto" or (self.workers.isdigit() and 1 <= int(self.workers) <= 256)):
            raise ValueError("workers must be auto or a number from 1 to 256")
        if self.cluster_redis:
            if not self.cluster_redis.startswith(("redis://", "rediss://", "unix://")):
                raise ValueError("cluster_redis must be a redis://, rediss:// or unix:// URL")
            if not 0 <= self.relay_port <= 65535 or not self.cluster_ttl > 0 or self.relay_max_out < 0:
                raise ValueError("relay_port must be 0..65535, cluster_ttl > 0, relay_max_out >= 0")
        if self.placement not in ("fill", "spread"):
            raise ValueError("placement must be fill or spread")
        if self.record_mp4_audio not in ("opus", "aac") or not self.record_fragment > 0:
            raise ValueError("record_mp4_audio must be opus or aac, record_fragment > 0")
        for app_key, url in self.hook_urls().items():
            if not url.startswith(("http://", "https://")):
                raise ValueError(f"hook_url of app {app_key!r} must start with http:// or https://")
        if not self.hook_timeout > 0 or not self.keep_alive_interval >= 0 or self.hook_queue_size < 1:
            raise ValueError("hook_timeout must be > 0, keep_alive_interval >= 0, hook_queue_size >= 1")
        parse_allow_list(self.allow_origins)  # raises ValueError for a malformed pattern
        for entry in filter(str.strip, self.whip_ice_servers.split(",")):
            parts = entry.split()
            if len(parts) not in (1, 3) or not parts[0].startswith(("stun:", "stuns:", "turn:", "turns:")):
                raise ValueError("whip_ice_servers entries must be `stun:/turn: URL [username credential]`")
        if not self.rtp_activity_timeout > 0 or not self.shutdown_timeout > 0 or not self.bitrate_grace > 0:
            raise ValueError("rtp_activity_timeout, shutdown_timeout and bitrate_grace must be > 0")
        if self.keyframe_interval < 0:
            raise ValueError("keyframe_interval must be >= 0 (0 = off)")
        for name in ("max_sessions_per_ip", "max_streams_per_session", "max_players_per_stream", "max_publishers",
                     "max_messages_per_second", "max_unverified_datagrams", "max_dtls_handshakes",
                     "bitrate_ceiling"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0 (0 = no limit)")


# The options with a flag, an environment variable and a README row; tables (apps) are TOML-only.
FIELDS = {f.name: f for f in dataclasses.fields(Config) if not f.metadata.get("table")}
APP_KEYS = {"hook_url": str}  # what an [apps.<appKey>] table may hold


class ConfigError(ValueError):
    pass


_TYPE_NAMES = {int: "an integer", float: "a number", str: "a string"}


def _convert(name: str, value: Any, source: str, text: bool = False) -> Any:
    """A value from TOML (typed) or, with `text`, from the environment, as the field's type."""
    kind = type(FIELDS[name].default)
    if text and kind is not str:
        try:
            return kind(value.strip())
        except ValueError:
            raise ConfigError(f"{source}: {name} must be {_TYPE_NAMES[kind]}, not {value!r}") from None
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if type(value) is not kind:
        raise ConfigError(f"{source}: {name} must be {_TYPE_NAMES[kind]}, not {value!r}")
    return value


def load_toml(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Option values from a TOML file: top-level keys named like the options (`media_port` or `media-port`)."""
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    values: dict[str, Any] = {}
    if "apps" in data:
        values["apps"] = _load_apps(data.pop("apps"), str(path))
    for key, value in data.items():
        name = key.replace("-", "_")
        if name not in FIELDS:
            raise ConfigError(f"{path}: unknown option {key!r}")
        values[name] = _convert(name, value, str(path))
    return values


def _load_apps(apps: Any, source: str) -> dict[str, dict[str, Any]]:
    """[apps.<appKey>] tables: per-application settings (today only hook_url)."""
    if not isinstance(apps, dict):
        raise ConfigError(f"{source}: apps must be a table of [apps.<appKey>] tables")
    out = {}
    for app_key, table in apps.items():
        if not isinstance(table, dict):
            raise ConfigError(f"{source}: apps.{app_key} must be a table")
        for key, value in table.items():
            name = key.replace("-", "_")
            if name not in APP_KEYS:
                raise ConfigError(f"{source}: unknown option {key!r} in [apps.{app_key}]")
            if type(value) is not APP_KEYS[name]:
                raise ConfigError(f"{source}: apps.{app_key}.{name} must be {_TYPE_NAMES[APP_KEYS[name]]}")
        out[app_key] = {key.replace("-", "_"): value for key, value in table.items()}
    return out


def load_env(environ: dict[str, str]) -> dict[str, Any]:
    return {
        name: _convert(name, environ[ENV_PREFIX + name.upper()], ENV_PREFIX + name.upper(), text=True)
        for name in FIELDS if ENV_PREFIX + name.upper() in environ
    }


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _shown_default(name: str) -> str:
    value = FIELDS[name].default
    if isinstance(value, str) and value.startswith(str(REPO_DIR) + os.sep):
        return os.path.relpath(value, REPO_DIR)  # the checkout's own paths, as the README shows them
    return str(value)


def build_parser(defaults: dict[str, Any] | None = None) -> argparse.ArgumentParser:
    defaults = defaults or {}
    parser = argparse.ArgumentParser(
        prog="webcall", description="WebRTC streaming server (SFU) speaking the Flashphoner WCS API.",
        epilog="Each option can also be set in the TOML file given by --config (key = the option name with "
               "underscores) or by the environment variable shown; flags win over the environment, which "
               "wins over the file.")
    parser.add_argument("--config", metavar="PATH", default=os.environ.get(ENV_PREFIX + "CONFIG"),
                        help=f"TOML configuration file (env {ENV_PREFIX}CONFIG)")
    for name, f in FIELDS.items():
        kind = type(f.default)
        parser.add_argument(_flag(name), dest=name, type=kind, default=defaults.get(name, f.default),
                            metavar=kind.__name__.upper(),
                            help=f"{f.metadata.get('help', '')} (default: {_shown_default(name)}; "
                                 f"env {ENV_PREFIX}{name.upper()})")
    return parser


def parse_args(argv: list[str] | None = None, environ: dict[str, str] | None = None) -> Config:
    """Defaults < TOML file (--config / WEBCALL_CONFIG) < WEBCALL_<NAME> environment < command-line flags."""
    environ = dict(os.environ if environ is None else environ)
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--config", default=environ.get(ENV_PREFIX + "CONFIG"))
    known, _ = pre.parse_known_args(argv)
    parser = build_parser()
    try:
        defaults = load_toml(known.config) if known.config else {}
        defaults.update(load_env(environ))
    except ConfigError as exc:
        parser.error(str(exc))
    apps = defaults.pop("apps", {})
    parser = build_parser(defaults)
    args = vars(parser.parse_args(argv))
    args.pop("config")
    config = Config(**args, apps=apps)
    try:
        config.validate()
    except ValueError as exc:
        parser.error(str(exc))
    return config


def markdown_table() -> str:
    """The README's configuration table."""
    lines = ["| flag | environment | TOML key | default | meaning |", "| --- | --- | --- | --- | --- |"]
    for name, f in FIELDS.items():
        lines.append(f"| `{_flag(name)}` | `{ENV_PREFIX}{name.upper()}` | `{name}` | `{_shown_default(name)}` | "
                     f"{f.metadata.get('help', '')} |")
    return "\n".join(lines)

