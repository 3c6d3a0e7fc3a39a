"""TLS for the broker: the server's certificate (reloaded on SIGHUP) and a local CA for trials.

``hatchway server --tls-cert FILE --tls-key FILE`` serves HTTPS and ``wss://`` on its port.
The certificate lives in one :class:`ssl.SSLContext` for the whole process; :meth:`CertStore.
reload` (on SIGHUP) loads the files again into that same context, so connections already open
keep their session and every handshake after it presents the new certificate. A reload that
fails (a missing file, a key that does not match) is logged and changes nothing: the files are
first loaded into a scratch context, and only a pair that loads there is loaded into the live
one.

:func:`local_ca` is what ``hatchway up --tls`` uses: a CA and a server certificate for
127.0.0.1, ::1 and localhost, made with ``cryptography``, private keys mode 0600.
See docs/tls.md.
"""

from __future__ import annotations

import datetime
import ipaddress
import logging
import os
import ssl
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("hatchway.server.tls")

__all__ = ["CertStore", "LocalCA", "local_ca", "server_context"]


def server_context(cert: Path, key: Path) -> ssl.SSLContext:
    """A server context with ``cert`` (chain, PEM) and ``key``: TLS 1.2 or later."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(str(cert), str(key))
    return ctx


class CertStore:
    """The broker's certificate: one live context, reloaded in place."""

    def __init__(self, cert: Path, key: Path) -> None:
        self.cert = cert
        self.key = key
        self.context = server_context(cert, key)
        self.reloads = 0

    def reload(self) -> bool:
        """Load the files again (SIGHUP). False, and the old certificate kept, if they do not
        load."""
        try:
            server_context(self.cert, self.key)  # all or nothing: check the pair first
            self.context.load_cert_chain(str(self.cert), str(self.key))
        except (OSError, ssl.SSLError) as exc:
            log.error(
                "TLS certificate reload failed, still serving the previous one: %s (%s, %s)",
                exc,
                self.cert,
                self.key,
            )
            return False
        self.reloads += 1
        log.info("TLS certificate reloaded from %s", self.cert)
        return True


# -- a local CA for `hatchway up --tls` -------------------------------------------------------


@dataclass(frozen=True)
class LocalCA:
    ca_cert: Path
    cert: Path
    key: Path


LOCAL_NAMES = ("localhost",)
LOCAL_ADDRESSES = ("127.0.0.1", "::1")


def _write(path: Path, data: bytes, mode: int) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.chmod(path, mode)


def _still_good(ca: LocalCA, hosts: tuple[str, ...]) -> bool:
    """The files exist, the certificate is valid for a week more and names every host."""
    from cryptography import x509

    if not all(p.exists() for p in (ca.ca_cert, ca.cert, ca.key)):
        return False
    try:
        cert = x509.load_pem_x509_certificate(ca.cert.read_bytes())
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except (ValueError, x509.ExtensionNotFound):
        return False
    named = {str(v) for v in san.get_values_for_type(x509.IPAddress)}
    named |= set(san.get_values_for_type(x509.DNSName))
    soon = datetime.datetime.now(datetime.UTC) + datetime.timedelta(days=7)
    return cert.not_valid_after_utc > soon and all(
        str(ipaddress.ip_address(h)) in named if _is_ip(h) else h in named for h in hosts
    )


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def local_ca(directory: Path, extra_hosts: tuple[str, ...] = ()) -> LocalCA:
    """A CA (``ca.pem``) and a server certificate (``server.pem``, key ``server-key.pem``) in
    ``directory`` for 127.0.0.1, ::1, localhost and ``extra_hosts``; kept while valid. The CA's
    key is not kept: nothing else is ever signed with it, so it cannot be stolen to mint
    certificates for other names. Keys are written mode 0600."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    directory.mkdir(parents=True, exist_ok=True)
    directory.chmod(0o700)
    out = LocalCA(directory / "ca.pem", directory / "server.pem", directory / "server-key.pem")
    hosts = tuple(dict.fromkeys((*LOCAL_NAMES, *LOCAL_ADDRESSES, *extra_hosts)))
    if _still_good(out, hosts):
        return out
    now = datetime.datetime.now(datetime.UTC)
    start = now - datetime.timedelta(minutes=5)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Hatchway"),
            x509.NameAttribute(NameOID.COMMON_NAME, f"Hatchway local CA {now:%Y-%m-%d %H:%M}"),
        ]
    )
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(now + datetime.timedelta(days=825))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    names: list[x509.GeneralName] = [
        x509.IPAddress(ipaddress.ip_address(h)) if _is_ip(h) else x509.DNSName(h) for h in hosts
    ]
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(now + datetime.timedelta(days=397))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
        )
        .sign(ca_key, hashes.SHA256())
    )
    _write(
        out.key,
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
        0o600,
    )
    _write(out.cert, cert.public_bytes(serialization.Encoding.PEM), 0o644)
    _write(out.ca_cert, ca_cert.public_bytes(serialization.Encoding.PEM), 0o644)
    return out
