"""The WHIP/WHEP HTTP resources (RFC 9725; WHEP: draft-ietf-wish-whep), on the signalling port.

    POST    /whip/{stream}        SDP offer (application/sdp) → 201, SDP answer, Location: /whip/{stream}/{id}
    POST    /whep/{stream}        the same for a player; 404 if nothing is published under {stream}
    DELETE  /whip|whep/{stream}/{id}   ends the session → 200
    PATCH   /whip|whep/{stream}/{id}   trickle ICE (application/trickle-ice-sdpfrag) → 204; an ICE restart → 422
    OPTIONS any of the above      CORS preflight → 204

Trickle ICE: the server is ICE-lite with host candidates only, and they are all in the answer; it never sends
connectivity checks, so the client's candidates are of no use to it (it learns the client's address from the
client's checks). A PATCH carrying candidates is accepted and ignored (204), so clients that trickle work
unchanged; an ICE restart (new ufrag/pwd) is not supported (422, as RFC 9725 §4.3.1 says for that case).

Authorization (RFC 9725 §4.5, RFC 6750 §3.1): with tokens configured (--whip-token, a comma-separated list), every
request but OPTIONS needs `Authorization: Bearer <one of them>`: none → 401 with a `WWW-Authenticate: Bearer`
challenge, another → 401 `error="invalid_token"`. With a hook backend for appKey defaultApp (--hook-url), a POST
asks it too, as a WCS client would be asked: `connect` with the token as `authToken` (denied → 401), then
`publishStream` or `playStream` with the stream's name (denied → 403 with the backend's message). Without
either, anyone may publish and play.

ICE servers (RFC 9725 §4.4, `Link: <url>; rel="ice-server"`): the server is ICE-lite with host candidates on
UDP and TCP (media/tcp.py), so a client needs no STUN or TURN server to reach it, and none is sent by default.
--whip-ice-servers lists some to send (a client behind a NAT that only TURN crosses): each entry is
`URL [username credential]`.
"""

from __future__ import annotations

import hmac
import logging
import re
import secrets
from typing import Any
from urllib.parse import quote

from aiohttp import web

from ..cluster.reasons import ClusterRefused
from ..hooks import policy as hook_policy
from ..hooks.client import Hooks
from ..logs import q
from ..protocol.sdp import SdpError, negotiate_play, negotiate_publish
from ..streams.recording import Recordings
from ..streams.registry import NameInUse, StreamRegistry
from .resources import Plane, Resource, Settings, WhepPlayback, WhipPublication

log = logging.getLogger("webcall.whip")

SDP = "application/sdp"
SDPFRAG = "application/trickle-ice-sdpfrag"
MAX_OFFER = 64 * 1024
CORS = {
    "Access-Control-Allow-Origin": "*",
    "Access-Control-Allow-Methods": "OPTIONS, POST, PATCH, DELETE",
    "Access-Control-Allow-Headers": "Authorization, Content-Type, If-Match",
    "Access-Control-Expose-Headers": "Location, ETag, Accept-Patch, Link",
    "Access-Control-Max-Age": "86400",
}


class WhipFrontEnd:
    """The WHIP and WHEP resources of one server; `add_routes(app)` mounts them."""

    def __init__(self, registry: StreamRegistry, plane: Plane, settings: Settings, token: str = "",
                 hooks: Hooks | None = None, ice_servers: str = "", recordings: Recordings | None = None) -> None:
        self.registry = registry
        self.cluster: Any = None  # --cluster-redis: cluster/node.py's ClusterNode (a WHEP play pulls from other nodes)
        self.recordings = recordings  # the hub's: WHIP recordings are listed with the others
        self.plane = plane
        self.settings = settings
        self.tokens = [t.strip() for t in token.split(",") if t.strip()]
        self.hooks = hooks
        self.links = ice_server_links(ice_servers)
        self.resources: dict[str, Resource] = {}

    def add_routes(self, app: web.Application) -> None:
        for proto in ("whip", "whep"):
            post = self._publish if proto == "whip" else self._play
            app.router.add_route("OPTIONS", f"/{proto}/{{stream}}", self._options)
            app.router.add_post(f"/{proto}/{{stream}}", post)
            app.router.add_route("OPTIONS", f"/{proto}/{{stream}}/{{id}}", self._options)
            app.router.add_delete(f"/{proto}/{{stream}}/{{id}}", self._delete)
            app.router.add_patch(f"/{proto}/{{stream}}/{{id}}", self._patch)
        app.on_shutdown.append(self._shutdown)

    async def _shutdown(self, app: web.Application) -> None:
        self.close()

    def close(self) -> None:
        for resource in list(self.resources.values()):
            resource.stop("STOPPED", "server stopping")

    def streams(self) -> list[Resource]:
        """Every live WHIP publication and WHEP playback (the hub lists them in REST find_all and /metrics)."""
        return [r for r in self.resources.values() if not r.closed]

    def forget(self, resource: Resource) -> None:
        self.resources.pop(resource.id, None)

    # --- helpers ----------------------------------------------------------------------------------

    @staticmethod
    def _bearer(request: web.Request) -> str | None:
        scheme, _, value = request.headers.get("Authorization", "").partition(" ")
        return value.strip() if scheme.lower() == "bearer" and value.strip() else None

    def _token_problem(self, request: web.Request) -> web.Response | None:
        """401 unless the request carries one of the configured tokens (or none is configured)."""
        if not self.tokens:
            return None
        token = self._bearer(request)
        if token is None:
            return self._reply(401, "Unauthorized", {"WWW-Authenticate": 'Bearer realm="webcall"'})
        if not any(hmac.compare_digest(token.encode(), t.encode()) for t in self.tokens):
            return self._reply(401, "Invalid token",
                               {"WWW-Authenticate": 'Bearer realm="webcall", error="invalid_token"'})
        return None

    async def _hooks_refuse(self, request: web.Request, publish: bool, name: str) -> web.Response | None:
        """The backend's connect and publishStream/playStream decisions, as for a WCS client of appKey defaultApp."""
        hooks = self.hooks
        app_key = hook_policy.DEFAULT_APP_KEY
        if hooks is None or hooks.url_for(app_key) is None:
            return None
        token = self._bearer(request)
        provider = "WHIP" if publish else "WHEP"
        client = hooks.client(app_key, f"{provider.lower()}-{secrets.token_hex(6)}")
        try:
            connect = await client.invoke(hook_policy.CONNECT, {
                "appKey": app_key, "authToken": token, "mediaProviders": [provider], "clientVersion": provider,
                "origin": request.headers.get("Origin"), "custom": {"token": token} if token else {}})
            if not connect.allowed:
                log.info("%s refused by the connect hook stream=%s info=%s", provider.lower(), q(name), q(connect.info))
                challenge = 'Bearer realm="webcall"' + (', error="invalid_token"' if token else "")
                return self._reply(401, connect.info or "Unauthorized", {"WWW-Authenticate": challenge})
            method = hook_policy.PUBLISH_STREAM if publish else hook_policy.PLAY_STREAM
            decision = await client.invoke(method, {
                "name": name, "published": publish, "mediaProvider": provider, "authToken": token,
                "custom": {"token": token} if token else {}})
            if not decision.allowed:
                log.info("%s refused by the %s hook stream=%s info=%s", provider.lower(), method, q(name),
                         q(decision.info))
                return self._reply(403, decision.info or hook_policy.RESTRICTED_ACCESS)
            return None
        finally:
            client.close()

    @staticmethod
    def _reply(status: int, text: str = "", headers: dict[str, str] | None = None,
               content_type: str = "text/plain") -> web.Response:
        return web.Response(status=status, text=text or None, content_type=content_type if text else None,
                            headers={**CORS, **(headers or {})})

    def _refuse(self, request: web.Request) -> web.Response | None:
        return self._token_problem(request)

    async def _offer(self, request: web.Request) -> str | web.Response:
        if (refused := self._refuse(request)) is not None:
            return refused
        if request.content_type != SDP:
            return self._reply(415, f"Content-Type must be {SDP}")
        if request.content_length is not None and request.content_length > MAX_OFFER:
            return self._reply(413, "Offer too large")
        body = await request.content.read(MAX_OFFER + 1)
        if len(body) > MAX_OFFER:
            return self._reply(413, "Offer too large")
        try:
            offer = body.decode()
        except UnicodeDecodeError:
            return self._reply(400, "Bad SDP: not UTF-8")
        # The backend is asked about well-formed requests only: bad input costs it nothing.
        publish = request.path.startswith("/whip/")
        if (refused := await self._hooks_refuse(request, publish, request.match_info["stream"])) is not None:
            return refused
        return offer

    def _created(self, resource: Resource, answer: str) -> web.Response:
        self.resources[resource.id] = resource
        location = f"/{resource.protocol}/{quote(resource.name, safe='')}/{resource.id}"
        log.info("%s offer answered %s codecs=%s", resource.protocol, resource.label, resource.codecs())
        response = self._reply(201, answer, {"Location": location, "ETag": f'"{resource.id}"',
                                             "Accept-Patch": SDPFRAG}, content_type=SDP)
        for link in self.links:
            response.headers.add("Link", link)
        return response

    # --- handlers ---------------------------------------------------------------------------------

    async def _options(self, request: web.Request) -> web.Response:
        response = self._reply(204, headers={"Accept-Post": SDP, "Accept-Patch": SDPFRAG})
        for link in self.links:  # RFC 9725 §4.4: a client may fetch the ICE servers before its offer
            response.headers.add("Link", link)
        return response

    async def _publish(self, request: web.Request) -> web.Response:
        offer = await self._offer(request)
        if isinstance(offer, web.Response):
            return offer
        name = request.match_info["stream"]
        try:
            neg = negotiate_publish(offer, self.settings.video_codecs)
        except SdpError as exc:
            log.info("whip offer refused stream=%s info=%s", q(name), q(exc.info))
            return self._reply(400, exc.info)
        publication = WhipPublication(self, name, neg)
        try:
            self.registry.publish(publication)
        except NameInUse:
            log.info("whip offer refused stream=%s info=name in use", q(name))
            return self._reply(409, "Stream name already in use")
        try:
            answer = publication.start()
        except Exception:
            log.exception("whip publisher failed %s", publication.label)
            publication.stop("FAILED", "internal error")
            return self._reply(500, "Internal error")
        return self._created(publication, answer)

    async def _play(self, request: web.Request) -> web.Response:
        offer = await self._offer(request)
        if isinstance(offer, web.Response):
            return offer
        name = request.match_info["stream"]
        source = self.registry.find(name)
        if source is None and self.cluster is not None:  # published on another node, maybe: pulled here
            try:
                source = await self.cluster.pull(name)
            except ClusterRefused as exc:
                log.info("whep offer refused stream=%s info=%s", q(name), q(exc))
                return self._reply(503, f"Cluster: {exc}")
        router: Any = source.router if source is not None else None
        if source is None or router is None:
            return self._reply(404, "Stream not found")
        try:
            neg = negotiate_play(offer, {kind: track.producer.codec for kind, track in router.tracks.items()})
        except SdpError as exc:
            log.info("whep offer refused stream=%s info=%s", q(name), q(exc.info))
            return self._reply(400, exc.info)
        playback = WhepPlayback(self, name, neg, source)
        self.registry.read(name, playback)
        try:
            answer = playback.start(router)
        except Exception:
            log.exception("whep player failed %s", playback.label)
            playback.stop("FAILED", "internal error")
            return self._reply(500, "Internal error")
        return self._created(playback, answer)

    def _resource(self, request: web.Request) -> Resource | None:
        resource = self.resources.get(request.match_info["id"])
        proto = request.path.split("/", 2)[1]
        if resource is None or resource.protocol != proto or resource.name != request.match_info["stream"]:
            return None
        return resource

    async def _delete(self, request: web.Request) -> web.Response:
        if (refused := self._refuse(request)) is not None:
            return refused
        resource = self._resource(request)
        if resource is None:
            return self._reply(404, "No such session")
        resource.stop("STOPPED", "deleted")
        return self._reply(200)

    async def _patch(self, request: web.Request) -> web.Response:
        if (refused := self._refuse(request)) is not None:
            return refused
        resource = self._resource(request)
        if resource is None:
            return self._reply(404, "No such session")
        if request.content_type != SDPFRAG:
            return self._reply(415, f"Content-Type must be {SDPFRAG}")
        frag = (await request.content.read(MAX_OFFER)).decode(errors="replace")
        ufrag = re.search(r"^a=ice-ufrag:(\S+)", frag, re.M)
        pwd = re.search(r"^a=ice-pwd:(\S+)", frag, re.M)
        if (ufrag and ufrag.group(1) != resource.neg.ice_ufrag) or (pwd and pwd.group(1) != resource.neg.ice_pwd):
            return self._reply(422, "ICE restart not supported")
        return self._reply(204)  # candidates: not needed by an ICE-lite server (see the module's docstring)


def ice_server_links(spec: str) -> list[str]:
    """`Link` header values (RFC 9725 §4.4) from --whip-ice-servers: comma-separated `URL [username credential]`."""
    links = []
    for entry in spec.split(","):
        parts = entry.split()
        if not parts:
            continue
        link = f'<{parts[0]}>; rel="ice-server"'
        if len(parts) == 3:
            username, credential = (p.replace('"', "") for p in parts[1:])
            link += f'; username="{username}"; credential="{credential}"; credential-type="password"'
        links.append(link)
    return links
