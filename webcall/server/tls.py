"""HTTPS/WSS: the configured certificate, or a self-signed one made at first start and kept for the next.

Browsers grant the camera only in a secure context, so a publisher on another machine needs wss:// —
WCS serves it on 8443. A self-signed certificate needs one click-through in the browser; give real files
with --tls-cert/--tls-key for anything public. SIGHUP reloads them into the live context (`reload_context`).
"""

from __future__ import annotations

import datetime
import ipaddress
import logging
import ssl
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

log = logging.getLogger("webcall.server")


def self_signed(directory: Path, hosts: list[str]) -> tuple[Path, Path]:
    """(cert, key) under `directory`, made once (valid 1 year) for localhost and the given addresses."""
    cert_path, key_path = directory / "webcall-selfsigned.crt", directory / "webcall-selfsigned.key"
    if cert_path.is_file() and key_path.is_file():
        return cert_path, key_path
    directory.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "webcall self-signed")])
    alt: list[x509.GeneralName] = [x509.DNSName("localhost")]
    for host in hosts:
        try:
            alt.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            alt.append(x509.DNSName(host))
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1)).not_valid_after(now + datetime.timedelta(days=365))
        .add_extension(x509.SubjectAlternativeName(alt), critical=False)
        .sign(key, hashes.SHA256())
    )
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    key_path.chmod(0o600)
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    log.info("made a self-signed certificate cert=%s", cert_path)
    return cert_path, key_path


def server_context(cert: str, key: str, tls_dir: str, hosts: list[str]) -> ssl.SSLContext:
    if bool(cert) != bool(key):
        raise ValueError("give both tls_cert and tls_key, or neither")
    cert_path, key_path = (Path(cert), Path(key)) if cert else self_signed(Path(tls_dir), hosts)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert_path, key_path)
    return context


def reload_context(context: ssl.SSLContext, cert: str, key: str, tls_dir: str, hosts: list[str]) -> None:
    """Load the certificate and key again into `context` (SIGHUP): handshakes from now on present them,
    connections already up keep theirs. Raises (OSError, ssl.SSLError) and leaves the context as it was
    if the files do not load: they are checked in a scratch context first."""
    cert_path, key_path = (Path(cert), Path(key)) if cert else self_signed(Path(tls_dir), hosts)
    ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(cert_path, key_path)
    context.load_cert_chain(cert_path, key_path)
