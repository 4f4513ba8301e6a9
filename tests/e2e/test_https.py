"""HTTPS + WSS on the TLS port with a self-signed certificate made at first start; the live stream list."""

from __future__ import annotations

import ssl

import aiohttp

from tests.support import peers
from tests.support.wcs_client import WcsClient


async def test_wss_and_https_with_self_signed_certificate(make_server, tmp_path) -> None:
    server = await make_server(tls_port=0, tls_dir=str(tmp_path))
    tls_port = server.server.tls_port
    cert = tmp_path / "webcall-selfsigned.crt"
    assert cert.is_file() and (tmp_path / "webcall-selfsigned.key").stat().st_mode & 0o077 == 0
    # The browser trusts it after a click-through; here we trust exactly this certificate.
    context = ssl.create_default_context(cafile=str(cert))
    context.check_hostname = False
    async with aiohttp.ClientSession() as http:
        async with http.get(f"https://127.0.0.1:{tls_port}/", ssl=context) as r:
            assert r.status == 200 and "flashphoner" in (await r.text()).lower()
        async with http.get(f"https://127.0.0.1:{tls_port}/sdk/flashphoner.js", ssl=context) as r:
            assert r.status == 200
        async with http.get(f"http://127.0.0.1:{server.server.http_port}/") as r:
            assert r.status == 200

    # Signalling and media over wss:// exactly as over ws://.
    wss = aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=context))
    client = await WcsClient.connect(f"wss://127.0.0.1:{tls_port}/", session=wss)
    publisher = await peers.publish(client, "secure")
    await publisher.wait_status("PUBLISHING", timeout=10)
    async with aiohttp.ClientSession() as http:
        async with http.get(f"http://127.0.0.1:{server.server.http_port}/streams") as r:
            streams = await r.json()
    assert [s["name"] for s in streams] == ["secure"]
    assert streams[0]["status"] == "PUBLISHING" and streams[0]["players"] == 0
    await publisher.stop()
    await client.close()
    await wss.close()
    await server.wait_empty()

    # A second start reuses the certificate instead of making a new one.
    before = cert.read_bytes()
    again = await make_server(tls_port=0, tls_dir=str(tmp_path))
    assert again.server.tls_port and cert.read_bytes() == before
