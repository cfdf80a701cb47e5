"""Channel credentials for TLS and mutual TLS, from PEM files.

The arguments take tritonclient's names: ``root_certificates`` (PEM CA certificates
the server's certificate must chain to; None: the system's trust store, as gRPC
finds it), ``private_key`` and ``certificate_chain`` (the client's own key and
certificate, for servers that ask for one: Triton's ``--grpc-use-ssl-mutual``).

Rules:

- Every file is read when the credentials are made, not at the first call, so a
  bad path fails at once. A file that cannot be used raises
  :class:`CertificateFileError`: one line naming the argument, the path and the
  problem (missing, a folder, unreadable, empty, or no PEM block of the kind the
  argument needs; a key encrypted with a passphrase, which gRPC cannot take).
- ``private_key`` and ``certificate_chain`` come together or not at all: one
  without the other raises ``ValueError``.
- Only the PEM markers are checked here; whether the certificates verify is the
  TLS handshake's business, and a refused handshake fails the call with
  ``UNAVAILABLE``.
"""

from __future__ import annotations

import os
from pathlib import Path

import grpc

__all__ = ["CertificateFileError", "read_pem", "ssl_credentials", "tls_credentials"]

#: What each argument's file must hold (a substring of its PEM header line).
_MARKERS = {
    "root_certificates": (b"-----BEGIN CERTIFICATE-----", "PEM certificate"),
    "certificate_chain": (b"-----BEGIN CERTIFICATE-----", "PEM certificate"),
    "private_key": (b"PRIVATE KEY-----", "PEM private key"),
}

PathLike = str | os.PathLike[str]


class CertificateFileError(ValueError):
    """A certificate or key file cannot be used; the message is one line naming it.

    ``argument`` is the argument that named the file (``"root_certificates"``,
    ``"private_key"`` or ``"certificate_chain"``), so that a command line can
    report it under its own option name.
    """

    def __init__(self, argument: str, path: Path, problem: str) -> None:
        super().__init__(f"{argument} {path}: {problem}")
        self.argument = argument
        self.path = path
        self.problem = problem


def read_pem(argument: str, path: PathLike) -> bytes:
    """The bytes of the PEM file ``path`` given as ``argument``; see the module's rules."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise CertificateFileError(argument, path, "no such file") from None
    except IsADirectoryError:
        raise CertificateFileError(argument, path, "is a directory, not a file") from None
    except PermissionError:
        raise CertificateFileError(argument, path, "cannot read it: permission denied") from None
    except OSError as exc:
        reason = exc.strerror.lower() if exc.strerror else " ".join(str(exc).split())
        raise CertificateFileError(argument, path, f"cannot read it: {reason}") from None
    if not data.strip():
        raise CertificateFileError(argument, path, "is empty")
    marker, kind = _MARKERS.get(argument, (b"-----BEGIN ", "PEM block"))
    if marker not in data:
        raise CertificateFileError(argument, path, f"holds no {kind}")
    if argument == "private_key" and (
        b"ENCRYPTED PRIVATE KEY-----" in data or b"Proc-Type: 4,ENCRYPTED" in data
    ):
        raise CertificateFileError(
            argument, path, "the key is encrypted; gRPC needs it without a passphrase"
        )
    return data


def ssl_credentials(
    root_certificates: PathLike | None = None,
    private_key: PathLike | None = None,
    certificate_chain: PathLike | None = None,
) -> grpc.ChannelCredentials:
    """``grpc.ssl_channel_credentials`` from file paths (PEM), each read now.

    ``root_certificates`` None trusts the system's CAs; give ``private_key`` and
    ``certificate_chain`` together to present a client certificate (mutual TLS).
    Raises :class:`CertificateFileError` naming a file that cannot be used, and
    ``ValueError`` when only one of the client key and certificate is given.
    """
    if (private_key is None) != (certificate_chain is None):
        given, missing = (
            ("private_key", "certificate_chain")
            if certificate_chain is None
            else ("certificate_chain", "private_key")
        )
        raise ValueError(
            f"a client certificate needs both private_key and certificate_chain; "
            f"got {given} without {missing}"
        )
    return grpc.ssl_channel_credentials(
        root_certificates=None
        if root_certificates is None
        else read_pem("root_certificates", root_certificates),
        private_key=None if private_key is None else read_pem("private_key", private_key),
        certificate_chain=None
        if certificate_chain is None
        else read_pem("certificate_chain", certificate_chain),
    )


def tls_credentials(
    credentials: grpc.ChannelCredentials | None,
    ssl: bool,
    root_certificates: PathLike | None,
    private_key: PathLike | None,
    certificate_chain: PathLike | None,
) -> grpc.ChannelCredentials | None:
    """The channel credentials a client's constructor arguments ask for (None: plaintext).

    ``credentials`` as given, or, when ``ssl`` is set or any file is named, the
    files' :func:`ssl_credentials` (a file implies TLS: tritonclient ignores files
    without ``ssl=True``, which would dial a TLS server in plaintext). Giving both
    ``credentials`` and TLS arguments is a ``ValueError``.
    """
    files = (root_certificates, private_key, certificate_chain)
    wants_tls = ssl or any(path is not None for path in files)
    if credentials is not None:
        if wants_tls:
            raise ValueError(
                "give either credentials or ssl / root_certificates / private_key / "
                "certificate_chain, not both"
            )
        return credentials
    if not wants_tls:
        return None
    return ssl_credentials(root_certificates, private_key, certificate_chain)
