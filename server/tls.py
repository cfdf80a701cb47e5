"""TLS on the gRPC port: certificate files checked at start and reloaded when they change.

Triton's options name the files: ``--grpc-server-cert`` holds the server's certificate
first, then any intermediate certificates (PEM); ``--grpc-server-key`` its private key
(PEM, unencrypted: gRPC takes no passphrase); ``--grpc-root-cert`` one or more PEM CA
certificates that client certificates must chain to under ``--grpc-use-ssl-mutual``.

Rules:

- At start, :func:`check_tls_files` reads and checks every file and raises
  :class:`TlsFileError`, a single line naming the option, the path and the problem, for
  the first one that cannot be used: missing, unreadable (not a regular file, no read
  permission), empty, without a PEM certificate (or key), a key that does not match the
  first certificate's public key, a certificate outside its validity period (the date
  is given), a root file without a certificate or whose certificates have all expired.
- While serving, gRPC calls the fetcher (:class:`CertificateReloader`) before every new
  connection's handshake. It only stats the files (device, inode, size, modification
  time) and returns None, "keep the configuration in use", when none changed; so a
  renamed file, a replaced symlink target (Kubernetes secret volumes) or a rewrite is
  noticed on the next handshake, at the cost of three ``stat`` calls per connection.
- Changed files are read and checked as at start before anything is swapped. A valid
  set becomes the configuration of this and later handshakes, logged in one INFO line
  (subject, serial, not-after; never the key). An invalid set (half written, a key
  from another pair, expired) is logged once as an ERROR and the certificate in use
  stays until the files change again. A set that changed while being read is neither
  taken nor logged: the next handshake reads it again. A certificate not yet valid
  (the issuer's clock ahead of this host's) is tried again once its start has passed.
- Connections already open keep the certificate they were made with.
- The fetcher runs on gRPC core's threads, where an exception would fail the
  handshake: it never raises (an unexpected error is logged and the configuration in
  use kept), and it holds a lock, so that concurrent handshakes read the files once.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import grpc
from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.types import PublicKeyTypes

if TYPE_CHECKING:
    from batchwire.server.settings import ServerSettings

__all__ = [
    "CertificateReloader",
    "TlsFileError",
    "TlsFiles",
    "TlsMaterial",
    "check_tls_files",
    "load_tls_files",
    "server_credentials",
]

log = logging.getLogger(__name__)

CERT_OPTION = "--grpc-server-cert"
KEY_OPTION = "--grpc-server-key"
ROOT_OPTION = "--grpc-root-cert"

#: (device, inode, size, modification time in ns) of a file; None when it cannot be stat'ed.
FileState = tuple[int, int, int, int] | None


class TlsFileError(Exception):
    """A certificate or key file cannot be used; the message is one line naming it."""

    def __init__(self, option: str, path: Path | None, problem: str) -> None:
        super().__init__(f"{option}: {problem}" if path is None else f"{option} {path}: {problem}")
        self.option = option
        self.path = path
        self.problem = problem


class NotYetValidError(TlsFileError):
    """The certificate's validity starts at ``not_before``, in the future."""

    def __init__(self, option: str, path: Path, problem: str, not_before: dt.datetime) -> None:
        super().__init__(option, path, problem)
        self.not_before = not_before


def utc_now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def when(moment: dt.datetime) -> str:
    """``2026-12-07 17:50:00 UTC``."""
    return moment.astimezone(dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def one_line(text: object) -> str:
    """A library's message on a single line (some span several)."""
    return " ".join(str(text).split())


@dataclass(frozen=True, slots=True)
class TlsFiles:
    """The files of the settings' TLS options."""

    cert: Path
    key: Path
    root: Path | None = None

    @classmethod
    def from_settings(cls, settings: ServerSettings) -> TlsFiles:
        """The settings' files; TlsFileError naming the option when cert or key is unset."""
        using = "--grpc-use-ssl-mutual" if settings.grpc_use_ssl_mutual else "--grpc-use-ssl"
        if settings.grpc_server_cert is None:
            raise TlsFileError(using, None, f"needs {CERT_OPTION}")
        if settings.grpc_server_key is None:
            raise TlsFileError(using, None, f"needs {KEY_OPTION}")
        if settings.grpc_use_ssl_mutual and settings.grpc_root_cert is None:
            raise TlsFileError("--grpc-use-ssl-mutual", None, f"needs {ROOT_OPTION}")
        return cls(
            Path(settings.grpc_server_cert),
            Path(settings.grpc_server_key),
            None if settings.grpc_root_cert is None else Path(settings.grpc_root_cert),
        )

    def state(self) -> tuple[FileState, ...]:
        """What a change of any file changes: the cheap check run on every handshake."""
        return tuple(file_state(path) for path in (self.cert, self.key, self.root) if path)


def file_state(path: Path) -> FileState:
    try:
        st = os.stat(path)  # follows symlinks: a swapped target counts as a change
    except OSError:
        return None
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


@dataclass(frozen=True, slots=True)
class TlsMaterial:
    """The checked contents of the TLS files, as gRPC takes them."""

    cert_pem: bytes
    key_pem: bytes
    root_pem: bytes | None
    #: The server's own certificate (the first one in the cert file).
    certificate: x509.Certificate

    def configuration(self) -> grpc.ServerCertificateConfiguration:
        return grpc.ssl_server_certificate_configuration(
            [(self.key_pem, self.cert_pem)], root_certificates=self.root_pem
        )

    def describe(self) -> str:
        """Subject, serial and end of validity of the certificate (nothing secret)."""
        cert = self.certificate
        return (
            f"'{cert.subject.rfc4514_string()}' serial {cert.serial_number:x}, "
            f"valid until {when(cert.not_valid_after_utc)}"
        )


def read_file(option: str, path: Path) -> bytes:
    """The bytes of ``path``; TlsFileError saying why it cannot be read."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise TlsFileError(option, path, "no such file") from None
    except IsADirectoryError:
        raise TlsFileError(option, path, "is a directory, not a file") from None
    except PermissionError:
        raise TlsFileError(option, path, "cannot read it: permission denied") from None
    except OSError as exc:
        reason = exc.strerror.lower() if exc.strerror else one_line(exc)
        raise TlsFileError(option, path, f"cannot read it: {reason}") from None
    if not data.strip():
        raise TlsFileError(option, path, "is empty")
    return data


def load_certificates(option: str, path: Path, data: bytes) -> list[x509.Certificate]:
    """Every PEM certificate in ``data``; TlsFileError when there is none or one is broken."""
    if b"-----BEGIN CERTIFICATE-----" not in data:
        hint = " (it holds a private key)" if b"PRIVATE KEY-----" in data else ""
        raise TlsFileError(option, path, f"holds no PEM certificate{hint}")
    try:
        return x509.load_pem_x509_certificates(data)
    except ValueError as exc:
        raise TlsFileError(option, path, f"invalid PEM certificate: {one_line(exc)}") from None


def check_validity(
    option: str, path: Path, certificates: list[x509.Certificate], now: dt.datetime
) -> None:
    """TlsFileError for the first certificate outside its validity period."""
    for index, cert in enumerate(certificates):
        which = "the certificate" if index == 0 else f"certificate {index + 1} in the chain"
        if cert.not_valid_after_utc < now:
            raise TlsFileError(option, path, f"{which} expired on {when(cert.not_valid_after_utc)}")
        if cert.not_valid_before_utc > now:
            raise NotYetValidError(
                option,
                path,
                f"{which} is not valid before {when(cert.not_valid_before_utc)}",
                cert.not_valid_before_utc,
            )


def public_key_bytes(key: PublicKeyTypes) -> bytes:
    return key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def check_key(files: TlsFiles, data: bytes, certificate: x509.Certificate) -> None:
    """TlsFileError unless ``data`` is a usable PEM private key of ``certificate``."""
    if b"PRIVATE KEY-----" not in data:
        hint = " (it holds a certificate)" if b"-----BEGIN CERTIFICATE-----" in data else ""
        raise TlsFileError(KEY_OPTION, files.key, f"holds no PEM private key{hint}")
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except TypeError:  # cryptography's word for "encrypted, and no password given"
        raise TlsFileError(
            KEY_OPTION, files.key, "the key is encrypted; gRPC needs it without a passphrase"
        ) from None
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise TlsFileError(
            KEY_OPTION, files.key, f"invalid PEM private key: {one_line(exc)}"
        ) from None
    if public_key_bytes(key.public_key()) != public_key_bytes(certificate.public_key()):
        raise TlsFileError(KEY_OPTION, files.key, f"does not match the certificate in {files.cert}")


def load_tls_files(files: TlsFiles, now: dt.datetime | None = None) -> TlsMaterial:
    """Read and check ``files`` (see the module's rules); TlsFileError for the first problem.

    ``now`` (default: the current time) is when the certificates must be valid.
    """
    now = utc_now() if now is None else now
    cert_pem = read_file(CERT_OPTION, files.cert)
    key_pem = read_file(KEY_OPTION, files.key)
    root_pem = read_file(ROOT_OPTION, files.root) if files.root is not None else None
    chain = load_certificates(CERT_OPTION, files.cert, cert_pem)
    check_key(files, key_pem, chain[0])
    check_validity(CERT_OPTION, files.cert, chain, now)
    if files.root is not None and root_pem is not None:
        roots = load_certificates(ROOT_OPTION, files.root, root_pem)
        latest = max(cert.not_valid_after_utc for cert in roots)
        if latest < now:
            problem = (
                f"the CA certificate expired on {when(latest)}"
                if len(roots) == 1
                else f"all {len(roots)} CA certificates have expired (the last on {when(latest)})"
            )
            raise TlsFileError(ROOT_OPTION, files.root, problem)
    return TlsMaterial(cert_pem, key_pem, root_pem, chain[0])


def check_tls_files(settings: ServerSettings) -> TlsMaterial:
    """The settings' TLS files, read and checked; :class:`TlsFileError` for the first problem."""
    return load_tls_files(TlsFiles.from_settings(settings))


class CertificateReloader:
    """gRPC's certificate configuration fetcher: the files' new contents once they changed.

    Called with no argument before each handshake; returns a new
    ``ServerCertificateConfiguration`` or None to keep the one in use (the module's
    rules say when).
    """

    def __init__(
        self,
        files: TlsFiles,
        material: TlsMaterial,
        state: tuple[FileState, ...],
        clock: Callable[[], dt.datetime] = utc_now,
    ) -> None:
        """``material`` is in use, read from the files when they were in ``state``."""
        self.files = files
        self.current = material
        self._clock = clock
        self._lock = threading.Lock()
        #: The files' state last read (taken or refused): unchanged means nothing to do.
        self._seen = state
        #: When set, the refused files are read again from then on (not yet valid).
        self._retry_at: dt.datetime | None = None

    def __call__(self) -> grpc.ServerCertificateConfiguration | None:
        try:
            with self._lock:
                return self._fetch()
        except Exception:  # never into gRPC core: the handshake would fail
            log.exception("TLS certificate reload failed; the certificate in use is kept")
            return None

    def _fetch(self) -> grpc.ServerCertificateConfiguration | None:
        state = self.files.state()
        now = self._clock()
        if state == self._seen and (self._retry_at is None or now < self._retry_at):
            return None
        try:
            material = load_tls_files(self.files, now)
        except TlsFileError as exc:
            if self.files.state() != state:
                return None  # still being written: the next handshake reads it again
            if state != self._seen:  # once per change, not once per handshake
                log.error(
                    "TLS files changed but cannot be used, still serving certificate %s: %s",
                    self.current.describe(),
                    exc,
                )
            self._seen = state
            self._retry_at = exc.not_before if isinstance(exc, NotYetValidError) else None
            return None
        self._seen, self._retry_at = state, None
        self.current = material
        log.info("TLS: serving new certificate %s from %s", material.describe(), self.files.cert)
        return material.configuration()


def server_credentials(settings: ServerSettings) -> grpc.ServerCredentials:
    """Credentials for the gRPC port: the settings' files, reloaded when they change.

    Raises :class:`TlsFileError` when the files cannot be used now. Clients must show a
    certificate chaining to ``--grpc-root-cert`` when ``grpc_use_ssl_mutual`` is set.
    """
    files = TlsFiles.from_settings(settings)
    state = files.state()  # before reading: a change while read is seen at the next handshake
    material = load_tls_files(files)
    # Not logged here: start() logs nothing before its last check can fail, so that a
    # failed start (say, the metrics port taken) prints one line.
    return grpc.dynamic_ssl_server_credentials(
        material.configuration(),
        CertificateReloader(files, material, state),
        require_client_authentication=settings.grpc_use_ssl_mutual,
    )
