"""Certificates made on the fly for TLS tests (importable as ``certificates``).

A test builds an :class:`Authority` (a self-signed CA), has it :meth:`~Authority.issue`
server and client certificates, and writes them as PEM files into its tmp folder::

    ca = Authority.create("test CA")
    server = ca.server_certificate()            # SAN: 127.0.0.1, ::1 and localhost
    cert, key = server.write(tmp_path, "server")
    client = ca.client_certificate("alice", dns_names=("alice.example",))

Keys are ECDSA P-256: made in microseconds, and every TLS stack in use (gRPC's
BoringSSL, Python's OpenSSL) accepts them. Validity starts an hour in the past, so
that a clock a little behind the test's still accepts the certificate; pass
``not_before``/``not_after`` for expired or not-yet-valid ones (:func:`days_ago`).
Serial numbers are random unless given, so two certificates for the same name differ.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = ["Authority", "Issued", "days_ago", "days_from_now", "new_key", "write_pem"]

PrivateKey = ec.EllipticCurvePrivateKey

#: The names a server certificate made by :meth:`Authority.server_certificate` holds.
SERVER_DNS_NAMES = ("localhost",)
SERVER_IP_ADDRESSES = ("127.0.0.1", "::1")


def now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def days_ago(days: float) -> dt.datetime:
    """A UTC time ``days`` days before now."""
    return now() - dt.timedelta(days=days)


def days_from_now(days: float) -> dt.datetime:
    """A UTC time ``days`` days after now."""
    return now() + dt.timedelta(days=days)


def new_key() -> PrivateKey:
    """A fresh ECDSA P-256 private key."""
    return ec.generate_private_key(ec.SECP256R1())


def key_pem(key: PrivateKey) -> bytes:
    """``key`` as an unencrypted PKCS#8 PEM block."""
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def write_pem(path: Path, *blocks: bytes) -> Path:
    """Write the PEM ``blocks`` one after the other into ``path``; returns ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"".join(blocks))
    return path


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "batchwire tests"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


@dataclass(frozen=True)
class Issued:
    """A certificate and its private key."""

    certificate: x509.Certificate
    key: PrivateKey
    #: The issuing CA's certificate (the chain above ``certificate``); None when self-signed.
    issuer: x509.Certificate | None = None

    @property
    def cert_pem(self) -> bytes:
        return self.certificate.public_bytes(serialization.Encoding.PEM)

    @property
    def key_pem(self) -> bytes:
        return key_pem(self.key)

    @property
    def serial(self) -> int:
        return self.certificate.serial_number

    def write(self, folder: Path, stem: str) -> tuple[Path, Path]:
        """Write ``<stem>.crt`` and ``<stem>.key`` into ``folder``; returns their paths."""
        return (
            write_pem(folder / f"{stem}.crt", self.cert_pem),
            write_pem(folder / f"{stem}.key", self.key_pem),
        )


@dataclass(frozen=True)
class Authority:
    """A self-signed certificate authority that issues leaf certificates."""

    certificate: x509.Certificate
    key: PrivateKey

    @classmethod
    def create(cls, common_name: str = "batchwire test CA") -> Authority:
        key = new_key()
        name = _name(common_name)
        certificate = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(days_ago(1))
            .not_valid_after(days_from_now(365))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
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
            .add_extension(
                x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False
            )
            .sign(key, hashes.SHA256())
        )
        return cls(certificate, key)

    @property
    def cert_pem(self) -> bytes:
        return self.certificate.public_bytes(serialization.Encoding.PEM)

    def write(self, path: Path) -> Path:
        """Write the CA certificate (for ``--grpc-root-cert`` or a client's trust) to ``path``."""
        return write_pem(path, self.cert_pem)

    def issue(
        self,
        common_name: str,
        *,
        dns_names: Sequence[str] = (),
        ip_addresses: Sequence[str] = (),
        uris: Sequence[str] = (),
        server: bool = False,
        client: bool = False,
        not_before: dt.datetime | None = None,
        not_after: dt.datetime | None = None,
        serial: int | None = None,
        key: PrivateKey | None = None,
    ) -> Issued:
        """A leaf certificate for ``common_name`` signed by this CA.

        ``server``/``client`` set the extended key usages (TLS server / client auth);
        the subject alternative names hold ``dns_names``, ``ip_addresses`` and ``uris``.
        Valid from an hour ago for 30 days unless ``not_before``/``not_after`` say
        otherwise. ``key`` reuses a private key (a new one is made when None).
        """
        key = key if key is not None else new_key()
        builder = (
            x509.CertificateBuilder()
            .subject_name(_name(common_name))
            .issuer_name(self.certificate.subject)
            .public_key(key.public_key())
            .serial_number(serial if serial is not None else x509.random_serial_number())
            .not_valid_before(
                not_before if not_before is not None else now() - dt.timedelta(hours=1)
            )
            .not_valid_after(not_after if not_after is not None else days_from_now(30))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()),
                critical=False,
            )
        )
        names: list[x509.GeneralName] = [x509.DNSName(name) for name in dns_names]
        names += [x509.IPAddress(ipaddress.ip_address(address)) for address in ip_addresses]
        names += [x509.UniformResourceIdentifier(uri) for uri in uris]
        if names:
            builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
        usages = [ExtendedKeyUsageOID.SERVER_AUTH] if server else []
        usages += [ExtendedKeyUsageOID.CLIENT_AUTH] if client else []
        if usages:
            builder = builder.add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        return Issued(builder.sign(self.key, hashes.SHA256()), key, self.certificate)

    def server_certificate(self, common_name: str = "localhost", **options: object) -> Issued:
        """A TLS server certificate for 127.0.0.1, ::1 and localhost (``options``: see issue)."""
        return self.issue(
            common_name,
            dns_names=SERVER_DNS_NAMES,
            ip_addresses=SERVER_IP_ADDRESSES,
            server=True,
            **options,  # type: ignore[arg-type]
        )

    def client_certificate(self, common_name: str, **options: object) -> Issued:
        """A TLS client certificate for ``common_name`` (``options``: see issue, e.g. dns_names)."""
        return self.issue(common_name, client=True, **options)  # type: ignore[arg-type]
