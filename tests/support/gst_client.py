#!/usr/bin/python3
"""A GStreamer `webrtcbin` client for webcall, run as a subprocess with Debian's /usr/bin/python3 (python3-gi,
python3-gst-1.0): the project's venv Python cannot import gi.

It publishes (videotestsrc + audiotestsrc, VP8 + Opus) or plays (decodes, hashes every video frame) one stream,
signalling over the WCS WebSocket (python3-websocket, a thread answering the server's pings) or over WHIP/WHEP
(urllib). ICE is not trickled: the offer is sent once gathering is complete (the server is ICE-lite and learns
the address from the connectivity checks anyway; only 127.0.0.1 candidates are kept in the offer).

Progress is written to stdout as JSON lines, one object each with an "event" key:
  {"event": "offer", "sdp": ...}            the offer as sent
  {"event": "answer", "sdp": ...}           the answer as received, before it is applied
  {"event": "answer-applied"}               set-remote-description succeeded
  {"event": "wcs", "message": ...}          a WCS message other than ping (data included)
  {"event": "error", "error": ...}          a failure (GStreamer error message, HTTP status, ...); exit 1
  {"event": "result", ...}                  the last line: frames, distinct frame hashes, size, states
A publisher runs until its stdin closes (or --duration s); a player until it decoded --frames video frames with
--distinct different hashes and 10 audio buffers (exit 0), or until --timeout s passed (exit 1).

Bundle policies: GStreamer 1.22's webrtcbin implements none, max-compat and max-bundle. Asked for "balanced" it
logs "Balanced bundle policy not implemented yet" and keeps none (no BUNDLE group, one transport per m-section);
the result's "bundle-policy" says which policy was in effect.

`gst_client.py --check` exits 0 when every element and typelib it needs is present, else prints what is missing.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid

ELEMENTS = ("webrtcbin", "nicesrc", "nicesink", "dtlssrtpenc", "srtpenc", "videotestsrc", "audiotestsrc",
            "vp8enc", "vp8dec", "rtpvp8pay", "rtpvp8depay", "opusenc", "opusdec", "rtpopuspay", "rtpopusdepay",
            "decodebin", "videoconvert", "audioconvert", "audioresample", "appsink", "fakesink", "queue")

_out_lock = threading.Lock()


def emit(event: str, **fields) -> None:
    with _out_lock:
        sys.stdout.write(json.dumps({"event": event, **fields}) + "\n")
        sys.stdout.flush()


def check() -> int:
    missing: list[str] = []
    try:
        import gi
        gi.require_version("Gst", "1.0")
        gi.require_version("GstWebRTC", "1.0")
        gi.require_version("GstSdp", "1.0")
        from gi.repository import Gst, GstSdp, GstWebRTC  # noqa: F401
    except (ImportError, ValueError) as exc:
        print(f"python3-gi / GStreamer typelibs: {exc}")
        return 1
    Gst.init(None)
    missing = [name for name in ELEMENTS if Gst.ElementFactory.find(name) is None]
    try:
        import websocket  # noqa: F401  (python3-websocket)
    except ImportError:
        missing.append("python module websocket (python3-websocket)")
    if missing:
        print("missing GStreamer elements or modules: " + ", ".join(missing))
        return 1
    print(f"ok {Gst.version_string()}")
    return 0


def loopback_candidates_only(sdp: str) -> str:
    """Drop every a=candidate line that is not 127.0.0.1 (no test traffic may leave 127.0.0.0/8)."""
    keep = []
    for line in sdp.split("\r\n"):
        if line.startswith("a=candidate:"):
            parts = line.split()
            if len(parts) < 5 or parts[4] != "127.0.0.1":
                continue
        keep.append(line)
    return "\r\n".join(keep)


class Signalling:
    def exchange(self, offer: str) -> str:
        raise NotImplementedError

    def close(self) -> None:
        pass


class WcsSignalling(Signalling):
    """The minimal WCS WebSocket conversation (docs/protocol.md §1-§4): connection/getUserData, then
    publishStream or playStream with the offer, setRemoteSDP back; pings answered by a reader thread."""

    def __init__(self, url: str, name: str, publish: bool, transport: str | None = None) -> None:
        import websocket
        self.name, self.publish = name, publish
        self.transport = transport  # "TCP": the SDK's field, the server answers with ICE-TCP candidates only
        self.media_session_id = str(uuid.uuid1())
        self.ws = websocket.create_connection(url, timeout=10)
        self._lock = threading.Lock()
        self._cond = threading.Condition()
        self._messages: list[dict] = []
        self._closed = False
        self.send("connection", {"appKey": "defaultApp", "mediaProviders": ["WebRTC"], "clientVersion": "2.0",
                                 "clientOSVersion": "GStreamer", "clientBrowserVersion": "webcall gst_client.py",
                                 "msePacketizationVersion": 2, "clientInfo": {}})
        self.ws.settimeout(None)
        self._reader = threading.Thread(target=self._read, name="wcs-reader", daemon=True)
        self._reader.start()
        self.wait(lambda m: m.get("message") == "getUserData", 10, "getUserData")

    def send(self, name: str, obj) -> None:
        with self._lock:
            self.ws.send(json.dumps({"message": name, "data": [obj]}))

    def _read(self) -> None:
        import websocket
        try:
            while True:
                text = self.ws.recv()
                if not text:
                    break
                try:
                    msg = json.loads(text)
                except ValueError:
                    continue
                if msg.get("message") == "ping":
                    self.send("pong", None)
                    continue
                emit("wcs", message=msg)
                with self._cond:
                    self._messages.append(msg)
                    self._cond.notify_all()
        except (websocket.WebSocketException, OSError):
            pass
        finally:
            with self._cond:
                self._closed = True
                self._cond.notify_all()

    def wait(self, pred, timeout: float, what: str) -> dict:
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for msg in self._messages:
                    if pred(msg):
                        self._messages.remove(msg)
                        return msg
                if self._closed:
                    raise RuntimeError(f"WCS socket closed while waiting for {what}")
                left = deadline - time.monotonic()
                if left <= 0:
                    raise RuntimeError(f"no {what} from the WCS server after {timeout} s")
                self._cond.wait(left)

    def _about_us(self, msg: dict) -> bool:
        data = msg.get("data") or [None]
        first = data[0]
        return first == self.media_session_id or (isinstance(first, dict)
                                                  and first.get("mediaSessionId") == self.media_session_id)

    def exchange(self, offer: str) -> str:
        request = {"mediaSessionId": self.media_session_id, "name": self.name, "published": self.publish,
                   "hasVideo": True, "hasAudio": True, "status": "PENDING", "record": False,
                   "mediaProvider": "WebRTC", "sdp": offer, "custom": {}, "bitrate": 0, "minBitrate": 0,
                   "maxBitrate": 0, "constraints": {"audio": True, "video": True}}
        if self.transport:
            request["transport"] = self.transport
        self.send("publishStream" if self.publish else "playStream", request)
        msg = self.wait(lambda m: self._about_us(m) and (
            m.get("message") == "setRemoteSDP"
            or (isinstance(m["data"][0], dict) and m["data"][0].get("status") in ("FAILED", "STOPPED"))),
            10, "setRemoteSDP")
        if msg.get("message") != "setRemoteSDP":
            self.failed = True
            raise RuntimeError(f"the server failed the stream: {json.dumps(msg)}")
        return msg["data"][1]

    failed = False

    def close(self) -> None:
        try:
            if self.failed:
                pass  # nothing to stop (the server would answer "Stream not found")
            elif self.publish:
                self.send("unPublishStream", {"mediaSessionId": self.media_session_id, "name": self.name})
            else:
                self.send("stopStream", {"mediaSessionId": self.media_session_id, "name": self.name})
        except Exception:  # noqa: BLE001 - the socket may be gone already
            pass
        try:
            self.ws.close()
        except Exception:  # noqa: BLE001
            pass


class WhipSignalling(Signalling):
    """WHIP (publish) or WHEP (play): POST the offer as application/sdp, 201 with the answer; DELETE to end."""

    def __init__(self, base: str, name: str, publish: bool) -> None:
        self.base = base.rstrip("/")
        self.path = ("/whip/" if publish else "/whep/") + urllib.parse.quote(name)
        self.location: str | None = None

    def exchange(self, offer: str) -> str:
        req = urllib.request.Request(self.base + self.path, data=offer.encode(), method="POST",
                                     headers={"Content-Type": "application/sdp"})
        try:
            with urllib.request.urlopen(req, timeout=10) as r:
                if r.status != 201:
                    raise RuntimeError(f"HTTP {r.status}: {r.read().decode(errors='replace')}")
                self.location = r.headers["Location"]
                return r.read().decode()
        except urllib.error.HTTPError as exc:
            raise RuntimeError(f"HTTP {exc.code}: {exc.read().decode(errors='replace')}") from None

    def close(self) -> None:
        if self.location:
            req = urllib.request.Request(urllib.parse.urljoin(self.base + "/", self.location), method="DELETE")
            try:
                urllib.request.urlopen(req, timeout=5).close()
            except (urllib.error.URLError, OSError):
                pass


class Client:
    def __init__(self, args) -> None:
        import gi
        gi.require_version("Gst", "1.0")
        gi.require_version("GstWebRTC", "1.0")
        gi.require_version("GstSdp", "1.0")
        from gi.repository import Gst, GstSdp, GstWebRTC
        self.Gst, self.GstSdp, self.GstWebRTC = Gst, GstSdp, GstWebRTC
        Gst.init(None)
        self.args = args
        self.frames = 0
        self.hashes: set[str] = set()
        self.changes = 0  # consecutive frames whose hash differs
        self._last_hash: str | None = None
        self.audio_buffers = 0
        self.size: tuple[int, int] | None = None
        self.lock = threading.Lock()
        self.error: str | None = None

        publish = args.mode == "publish"
        webrtc = f"webrtcbin name=webrtc bundle-policy={args.bundle} latency=100"
        if publish:
            desc = (f"{webrtc} "
                    "videotestsrc is-live=true pattern=ball ! video/x-raw,width=320,height=240,framerate=30/1 ! "
                    "videoconvert ! queue ! vp8enc deadline=1 keyframe-max-dist=30 ! rtpvp8pay pt=96 ! "
                    "application/x-rtp,media=video,encoding-name=VP8,payload=96,clock-rate=90000 ! webrtc. "
                    "audiotestsrc is-live=true wave=sine freq=440 ! audioconvert ! audioresample ! queue ! "
                    "opusenc ! rtpopuspay pt=111 ! "
                    "application/x-rtp,media=audio,encoding-name=OPUS,payload=111,clock-rate=48000 ! webrtc. ")
        else:
            desc = webrtc
        self.pipeline = Gst.parse_launch(desc)
        if not isinstance(self.pipeline, Gst.Pipeline):  # a lone element comes back as itself
            element, self.pipeline = self.pipeline, Gst.Pipeline.new("player")
            self.pipeline.add(element)
        self.webrtc = self.pipeline.get_by_name("webrtc")
        # libnice leaves loopback out of its automatic interface list: gather on 127.0.0.1 only (no test traffic
        # may leave 127.0.0.0/8, and the server's only candidate is 127.0.0.1)
        # (PyGObject sinks the agent's floating reference as if it were its own, so dropping the wrapper would free
        # the agent under webrtcbin: one extra reference, never dropped, keeps both sides valid)
        self.ice = self.webrtc.get_property("ice-agent")
        self.ice.ref()
        self.ice.emit("add-local-ip-address", "127.0.0.1")
        if publish:
            self._sendonly()
        else:
            self.webrtc.connect("pad-added", self._on_pad_added)
            for caps in ("application/x-rtp,media=audio,encoding-name=OPUS,payload=111,clock-rate=48000",
                         "application/x-rtp,media=video,encoding-name=VP8,payload=96,clock-rate=90000"):
                self.webrtc.emit("add-transceiver", GstWebRTC.WebRTCRTPTransceiverDirection.RECVONLY,
                                 Gst.Caps.from_string(caps))

    def _sendonly(self) -> None:
        i = 0
        while True:
            t = self.webrtc.emit("get-transceiver", i)
            if t is None:
                break
            t.set_property("direction", self.GstWebRTC.WebRTCRTPTransceiverDirection.SENDONLY)
            i += 1

    # -- playing

    def _on_pad_added(self, _webrtc, pad) -> None:
        Gst = self.Gst
        if pad.get_direction() != Gst.PadDirection.SRC:
            return
        decode = Gst.ElementFactory.make("decodebin")
        decode.connect("pad-added", self._on_decoded_pad)
        self.pipeline.add(decode)
        decode.sync_state_with_parent()
        pad.link(decode.get_static_pad("sink"))

    def _on_decoded_pad(self, _decodebin, pad) -> None:
        Gst = self.Gst
        caps = pad.get_current_caps() or pad.query_caps(None)
        kind = caps.get_structure(0).get_name()
        if kind.startswith("video/"):
            bin_ = Gst.parse_bin_from_description(
                "queue ! videoconvert ! video/x-raw,format=I420 ! "
                "appsink name=sink emit-signals=true sync=false max-buffers=4 drop=true", True)
            bin_.get_by_name("sink").connect("new-sample", self._on_video_sample)
        else:
            bin_ = Gst.parse_bin_from_description(
                "queue ! audioconvert ! appsink name=sink emit-signals=true sync=false max-buffers=4 drop=true",
                True)
            bin_.get_by_name("sink").connect("new-sample", self._on_audio_sample)
        self.pipeline.add(bin_)
        bin_.sync_state_with_parent()
        pad.link(bin_.get_static_pad("sink"))

    def _on_video_sample(self, sink):
        Gst = self.Gst
        sample = sink.emit("pull-sample")
        buf = sample.get_buffer()
        ok, info = buf.map(Gst.MapFlags.READ)
        if ok:
            digest = hashlib.blake2b(bytes(info.data), digest_size=16).hexdigest()
            buf.unmap(info)
            s = sample.get_caps().get_structure(0)
            with self.lock:
                self.frames += 1
                self.hashes.add(digest)
                if self._last_hash is not None and digest != self._last_hash:
                    self.changes += 1
                self._last_hash = digest
                self.size = (s.get_value("width"), s.get_value("height"))
        return Gst.FlowReturn.OK

    def _on_audio_sample(self, sink):
        sink.emit("pull-sample")
        with self.lock:
            self.audio_buffers += 1
        return self.Gst.FlowReturn.OK

    # -- negotiation

    def _promise(self, signal: str, *args):
        promise = self.Gst.Promise.new()
        self.webrtc.emit(signal, *args, promise)
        result = promise.wait()
        if result != self.Gst.PromiseResult.REPLIED:
            raise RuntimeError(f"{signal}: promise {result.value_nick}")
        reply = promise.get_reply()
        if reply is not None and reply.has_field("error"):
            raise RuntimeError(f"{signal}: {reply.get_value('error').message}")
        return reply

    def negotiate(self, signalling: Signalling) -> None:
        GstSdp, GstWebRTC = self.GstSdp, self.GstWebRTC
        reply = self._promise("create-offer", None)
        offer = reply.get_value("offer")
        self._promise("set-local-description", offer)
        deadline = time.monotonic() + 5
        while (self.webrtc.get_property("ice-gathering-state") != GstWebRTC.WebRTCICEGatheringState.COMPLETE
               and time.monotonic() < deadline):
            self._poll_bus(0.05)
        local = self.webrtc.get_property("local-description") or offer
        full = local.sdp.as_text()
        emit("gathered", candidates=[line for line in full.split("\r\n") if line.startswith("a=candidate:")])
        sdp = loopback_candidates_only(full)
        emit("offer", sdp=sdp)
        answer_text = signalling.exchange(sdp)
        emit("answer", sdp=answer_text)
        res, sdpmsg = GstSdp.SDPMessage.new_from_text(answer_text)
        if res != GstSdp.SDPResult.OK:
            raise RuntimeError(f"the answer does not parse: {res}")
        answer = GstWebRTC.WebRTCSessionDescription.new(GstWebRTC.WebRTCSDPType.ANSWER, sdpmsg)
        self._promise("set-remote-description", answer)
        emit("answer-applied")


    def _poll_bus(self, timeout_s: float) -> None:
        Gst = self.Gst
        bus = self.pipeline.get_bus()
        msg = bus.timed_pop_filtered(int(timeout_s * Gst.SECOND), Gst.MessageType.ERROR | Gst.MessageType.WARNING)
        if msg is None:
            return
        if msg.type == Gst.MessageType.ERROR:
            err, debug = msg.parse_error()
            self.error = f"{msg.src.get_name()}: {err.message} ({debug})"
            raise RuntimeError(self.error)
        warn, debug = msg.parse_warning()
        emit("warning", warning=f"{msg.src.get_name()}: {warn.message} ({debug})")

    def states(self) -> dict:
        return {prop: self.webrtc.get_property(prop).value_nick
                for prop in ("connection-state", "ice-connection-state", "signaling-state")}

    def result(self) -> dict:
        with self.lock:
            # GStreamer 1.22 logs "Balanced bundle policy not implemented yet" and keeps its default (none)
            return {"bundle-policy": self.webrtc.get_property("bundle-policy").value_nick,"frames": self.frames, "distinct": len(self.hashes), "changes": self.changes,
                    "audio_buffers": self.audio_buffers, "size": self.size, **self.states()}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--check", action="store_true")
    p.add_argument("--mode", choices=("publish", "play"))
    p.add_argument("--signal", choices=("wcs", "whip"), default="wcs")
    p.add_argument("--url", help="ws://host:port/ (wcs) or http://host:port (whip)")
    p.add_argument("--name")
    p.add_argument("--bundle", default="max-bundle", choices=("none", "balanced", "max-compat", "max-bundle"))
    p.add_argument("--frames", type=int, default=30, help="play: video frames to decode")
    p.add_argument("--distinct", type=int, default=10, help="play: distinct frame hashes needed")
    p.add_argument("--timeout", type=float, default=20.0, help="play: give up after this many seconds")
    p.add_argument("--duration", type=float, default=60.0, help="publish: stop after this many seconds")
    p.add_argument("--transport", choices=("UDP", "TCP"), help="wcs: the SDK's transport field")
    args = p.parse_args()
    if args.check:
        return check()
    if not (args.mode and args.url and args.name):
        p.error("--mode, --url and --name are required")

    client = Client(args)
    publish = args.mode == "publish"
    stop = threading.Event()
    if publish:  # the test closes our stdin to stop us
        threading.Thread(target=lambda: (sys.stdin.read(), stop.set()), daemon=True).start()
    signalling: Signalling | None = None
    ok = False
    try:
        client.pipeline.set_state(client.Gst.State.PLAYING)
        if args.signal == "wcs":
            signalling = WcsSignalling(args.url, args.name, publish, args.transport)
        else:
            signalling = WhipSignalling(args.url, args.name, publish)
        client.negotiate(signalling)
        deadline = time.monotonic() + (args.duration if publish else args.timeout)
        while not stop.is_set() and time.monotonic() < deadline:
            client._poll_bus(0.1)
            if not publish:
                r = client.result()
                if r["frames"] >= args.frames and r["distinct"] >= args.distinct and r["audio_buffers"] >= 10:
                    ok = True
                    break
        if publish:
            ok = client.states()["connection-state"] == "connected"
    except Exception as exc:  # noqa: BLE001 - reported to the test, which fails with it
        emit("error", error=f"{type(exc).__name__}: {exc}")
        ok = False
    finally:
        emit("result", ok=ok, **client.result())
        if signalling is not None:
            signalling.close()
        client.pipeline.set_state(client.Gst.State.NULL)
    return 0 if ok else 1


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)  # no interpreter teardown: finalizing the GObject wrappers at exit only produces warnings
