"""Who may call what: Triton's restricted protocol groups, and principals with scopes.

Protocol-neutral: operations are named by the inference protocol's RPC names
(``ModelInfer``, ``RepositoryModelLoad``...) plus ``HealthCheck``/``HealthWatch``/
``HealthList`` (``grpc.health.v1``) and ``ServerReflectionInfo``; a front end maps its
own routes onto these names (the gRPC one: :mod:`batchwire.server.access_grpc`) and
hands :meth:`AccessPolicy.authorize` the caller's headers and, under mutual TLS, the
names its client certificate carries. The model-level rule of inference scopes is
checked in the pipeline by :class:`Authorize`, once the model a request addresses is
known.

Rules, in the order they are applied to one call:

1. **Restricted groups** (Triton's ``--grpc-restricted-protocol=<groups>:<key>=<value>``):
   an operation in a restricted group needs the header ``<key>`` with exactly
   ``<value>``; without it the call ends with UNAVAILABLE and Triton's message
   ``This protocol is restricted, expecting header '<key>'``.
2. **Open operations**: with no auth config, or when the operation's scope is one
   the config lists in ``open`` (default: ``health`` and ``reflection``), the call
   goes on with no principal.
3. **Authentication**: a bearer token (``authorization: Bearer <token>``) names the
   principal whose ``token_sha256`` is the token's SHA-256; a token that names none
   is UNAUTHENTICATED (whatever certificate comes with it). Without a token, the
   first principal whose ``certificate`` equals the client certificate's common name
   or one of its subject alternative names. Neither: UNAUTHENTICATED.
4. **Scopes**: the operation's scope (:data:`OPERATIONS`) must be among the
   principal's: ``admin``, ``metadata``, ``health``, ``reflection``, and for inference
   ``inference`` (every model) or ``inference:<model>`` (that model; checked by
   :class:`Authorize`). Otherwise PERMISSION_DENIED naming the missing scope.

Tokens are never stored (only their SHA-256), logged, traced or counted; a refusal's
message never repeats one. The config file is read again when it changes (checked at
most once per :data:`RELOAD_CHECK_S` on the request path); a file that no longer
parses is reported in the log and the previous config stays in force.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import sys
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from batchwire.core.errors import (
    PermissionDeniedError,
    RestrictedProtocolError,
    UnauthenticatedError,
)
from batchwire.server.pipeline import Stage

if TYPE_CHECKING:
    from batchwire.core.types import InferenceResult
    from batchwire.server.dataplane import DataPlane
    from batchwire.server.inference_call import InferenceCall

__all__ = [
    "CURRENT_PRINCIPAL",
    "GROUPS",
    "OPERATIONS",
    "SCOPES",
    "AccessConfigError",
    "AccessPolicy",
    "AuthConfig",
    "Authorize",
    "Principal",
    "RestrictedGroup",
    "parse_restricted_protocol",
]

log = logging.getLogger(__name__)

#: Triton's restricted protocol groups.
GROUPS = (
    "health",
    "metadata",
    "inference",
    "shared-memory",
    "model-config",
    "model-repository",
    "statistics",
    "trace",
    "logging",
)

#: Operation -> (Triton group or None, scope it needs).
OPERATIONS: dict[str, tuple[str | None, str]] = {
    "ServerLive": ("health", "health"),
    "ServerReady": ("health", "health"),
    "ModelReady": ("health", "health"),
    "HealthCheck": ("health", "health"),
    "HealthWatch": ("health", "health"),
    "HealthList": ("health", "health"),
    "ServerMetadata": ("metadata", "metadata"),
    "ModelMetadata": ("metadata", "metadata"),
    "ModelConfig": ("model-config", "metadata"),
    "ModelStatistics": ("statistics", "metadata"),
    "RepositoryIndex": ("model-repository", "metadata"),
    "RepositoryModelLoad": ("model-repository", "admin"),
    "RepositoryModelUnload": ("model-repository", "admin"),
    "ModelInfer": ("inference", "inference"),
    "ModelStreamInfer": ("inference", "inference"),
    "SystemSharedMemoryStatus": ("shared-memory", "admin"),
    "SystemSharedMemoryRegister": ("shared-memory", "admin"),
    "SystemSharedMemoryUnregister": ("shared-memory", "admin"),
    "CudaSharedMemoryStatus": ("shared-memory", "admin"),
    "CudaSharedMemoryRegister": ("shared-memory", "admin"),
    "CudaSharedMemoryUnregister": ("shared-memory", "admin"),
    "TraceSetting": ("trace", "admin"),
    "LogSettings": ("logging", "admin"),
    "ServerReflectionInfo": (None, "reflection"),
}

#: Scopes a principal may hold (plus ``inference:<model>``).
SCOPES = ("inference", "metadata", "admin", "health", "reflection")
#: Scopes open to callers without credentials unless the config says otherwise.
DEFAULT_OPEN = ("health", "reflection")
#: Seconds between checks of the auth config file for changes.
RELOAD_CHECK_S = 1.0
#: The header a bearer token comes in (gRPC metadata keys are lower case).
AUTHORIZATION = "authorization"

#: The authenticated principal of the call being served ("" when none), set by the
#: front end before the servicer runs; the servicer copies it into its Caller.
CURRENT_PRINCIPAL: ContextVar[str] = ContextVar("batchwire_principal", default="")


class AccessConfigError(ValueError):
    """A restricted protocol value or an auth config that cannot be used; says why."""


@dataclass(frozen=True, slots=True)
class RestrictedGroup:
    """One ``--grpc-restricted-protocol`` value: these groups need ``key: value``."""

    groups: frozenset[str]
    key: str
    value: str


def parse_restricted_protocol(values: Sequence[str]) -> dict[str, RestrictedGroup]:
    """Triton's ``<groups>:<key>=<value>`` values -> the restriction of each group.

    Raises AccessConfigError for an unknown group, a missing key, or a group
    restricted twice (Triton refuses the same).
    """
    by_group: dict[str, RestrictedGroup] = {}
    for text in values:
        head, colon, pair = text.partition(":")
        key, equals, value = pair.partition("=")
        if not colon or not equals or not head.strip() or not key.strip():
            raise AccessConfigError(
                f"--grpc-restricted-protocol '{text}': expected <groups>:<key>=<value>"
            )
        names = [name.strip().lower() for name in head.split(",")]
        unknown = [name for name in names if name not in GROUPS]
        if unknown:
            raise AccessConfigError(
                f"--grpc-restricted-protocol '{text}': unknown group '{unknown[0]}'; "
                f"expected some of {', '.join(GROUPS)}"
            )
        rule = RestrictedGroup(frozenset(names), key.strip().lower(), value)
        for name in names:
            if name in by_group:
                raise AccessConfigError(
                    f"--grpc-restricted-protocol '{text}': group '{name}' is restricted twice"
                )
            by_group[name] = rule
    return by_group


@dataclass(frozen=True, slots=True)
class Principal:
    """A named caller and what it may do."""

    name: str
    scopes: frozenset[str]
    #: None: any model; else the models listed by ``inference:<model>`` scopes.
    models: frozenset[str] | None
    #: SHA-256 of its bearer token, or None.
    token_sha256: bytes | None
    #: Client-certificate common name or SAN that names it, or None.
    certificate: str | None

    def may_infer(self, model: str) -> bool:
        return "inference" in self.scopes and (self.models is None or model in self.models)

    def describe_scopes(self) -> str:
        listed = sorted(s for s in self.scopes if s != "inference")
        if "inference" in self.scopes:
            listed += (
                ["inference"]
                if self.models is None
                else [f"inference:{m}" for m in sorted(self.models)]
            )
        return ", ".join(sorted(listed)) or "none"


@dataclass(frozen=True, slots=True)
class AuthConfig:
    """The principals of an auth config file, and the scopes open to anyone."""

    principals: tuple[Principal, ...]
    open: frozenset[str]

    @classmethod
    def load(cls, path: Path) -> AuthConfig:
        """Read and check ``path`` (TOML); raises AccessConfigError naming the problem."""
        try:
            text = path.read_bytes().decode()
        except OSError as exc:
            raise AccessConfigError(f"--auth-config {path}: {exc.strerror or exc}") from None
        except UnicodeDecodeError:
            raise AccessConfigError(f"--auth-config {path}: not UTF-8 text") from None
        # Imported here: the client's `batchwire auth` commands import this module too.
        if sys.version_info >= (3, 11):
            import tomllib
        else:  # pragma: no cover - Python 3.10
            import tomli as tomllib
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise AccessConfigError(f"--auth-config {path}: not valid TOML: {exc}") from None
        return cls.parse(data, str(path))

    @classmethod
    def parse(cls, data: Mapping[str, object], where: str) -> AuthConfig:
        prefix = f"--auth-config {where}"
        unknown = sorted(set(data) - {"open", "principals"})
        if unknown:
            raise AccessConfigError(
                f"{prefix}: unknown key '{unknown[0]}'; expected open, principals"
            )
        opened = data.get("open", list(DEFAULT_OPEN))
        if not isinstance(opened, list) or not all(s in SCOPES for s in opened):
            raise AccessConfigError(
                f"{prefix}: open must be a list of scopes among {', '.join(SCOPES)}; got {opened!r}"
            )
        entries = data.get("principals", [])
        if not isinstance(entries, list):
            raise AccessConfigError(f"{prefix}: principals must be an array of tables")
        principals = tuple(
            _principal(entry, f"{prefix}: principals[{i}]") for i, entry in enumerate(entries)
        )
        _check_unique(principals, prefix)
        return cls(principals, frozenset(opened))


def _principal(entry: object, where: str) -> Principal:
    if not isinstance(entry, dict):
        raise AccessConfigError(f"{where}: expected a table")
    unknown = sorted(set(entry) - {"name", "token_sha256", "certificate", "scopes"})
    if unknown:
        raise AccessConfigError(
            f"{where}: unknown key '{unknown[0]}'; expected name, token_sha256, certificate, scopes"
        )
    name = entry.get("name")
    if not isinstance(name, str) or not name:
        raise AccessConfigError(f"{where}: name must be a non-empty string")
    where = f"{where} ('{name}')"
    token = entry.get("token_sha256")
    digest = None
    if token is not None:
        if not isinstance(token, str) or len(token) != 64:
            raise AccessConfigError(
                f"{where}: token_sha256 must be 64 hex digits (sha256sum of the token)"
            )
        try:
            digest = bytes.fromhex(token)
        except ValueError:
            raise AccessConfigError(f"{where}: token_sha256 is not hexadecimal") from None
    certificate = entry.get("certificate")
    if certificate is not None and (not isinstance(certificate, str) or not certificate):
        raise AccessConfigError(f"{where}: certificate must be a non-empty string")
    if digest is None and certificate is None:
        raise AccessConfigError(f"{where}: needs token_sha256 or certificate to be recognised")
    scopes = entry.get("scopes", [])
    if not isinstance(scopes, list) or not all(isinstance(s, str) for s in scopes):
        raise AccessConfigError(f"{where}: scopes must be a list of strings")
    plain: set[str] = set()
    models: set[str] = set()
    for scope in scopes:
        if scope.startswith("inference:") and len(scope) > len("inference:"):
            models.add(scope[len("inference:") :])
        elif scope in SCOPES:
            plain.add(scope)
        else:
            raise AccessConfigError(
                f"{where}: unknown scope '{scope}'; expected {', '.join(SCOPES)} or "
                "inference:<model>"
            )
    every_model = "inference" in plain
    if models:
        plain.add("inference")
    return Principal(
        name,
        frozenset(plain),
        None if every_model else frozenset(models),
        digest,
        certificate,
    )


def _check_unique(principals: Sequence[Principal], prefix: str) -> None:
    names: set[str] = set()
    tokens: set[bytes] = set()
    for principal in principals:
        if principal.name in names:
            raise AccessConfigError(f"{prefix}: principal '{principal.name}' is named twice")
        names.add(principal.name)
        if principal.token_sha256 is not None:
            if principal.token_sha256 in tokens:
                raise AccessConfigError(
                    f"{prefix}: principal '{principal.name}' has the token of another principal"
                )
            tokens.add(principal.token_sha256)


#: Reads the names (common name, subject alternative names) of the caller's verified
#: client certificate; empty without mutual TLS.
CertificateNames = Callable[[], Iterable[str]]


def _header(pairs: Iterable[tuple[str, str | bytes]], key: str) -> str | bytes | None:
    """The value of header ``key`` in gRPC metadata pairs (the first one), or None.

    A scan, not a dict: calls carry a handful of headers, and this runs per call.
    """
    for name, value in pairs:
        if name == key:
            return value
    return None


class AccessPolicy:
    """Restricted groups and the auth config of one server; decides each call.

    Loop thread only, apart from construction. ``authorize`` raises the InferenceError
    a refused call ends with, and counts the refusal in ``refusals``
    ((group, reason) -> count, read at scrape time).
    """

    def __init__(
        self,
        restricted: Mapping[str, RestrictedGroup] | None = None,
        auth_config: Path | None = None,
        *,
        mutual_tls: bool = False,
    ) -> None:
        self.restricted = dict(restricted or {})
        self.path = auth_config
        self.mutual_tls = mutual_tls
        self.config: AuthConfig | None = None
        self._stamp: tuple[int, int, int] | None = None
        self._next_check = 0.0
        self._by_token: dict[bytes, Principal] = {}
        self._by_name: dict[str, Principal] = {}
        self._certified: tuple[Principal, ...] = ()
        self.refusals: dict[tuple[str, str], int] = {}
        if auth_config is not None:
            self._install(AuthConfig.load(auth_config), self._file_stamp())

    @property
    def enforcing(self) -> bool:
        """Whether any call can be refused (else a front end need not ask)."""
        return bool(self.restricted) or self.config is not None

    @property
    def authenticating(self) -> bool:
        """Whether calls are matched to principals (an auth config is in force)."""
        return self.config is not None

    def _file_stamp(self) -> tuple[int, int, int] | None:
        assert self.path is not None
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        return (st.st_mtime_ns, st.st_size, st.st_ino)

    def _install(self, config: AuthConfig, stamp: tuple[int, int, int] | None) -> None:
        self.config = config
        self._stamp = stamp
        self._by_token = {p.token_sha256: p for p in config.principals if p.token_sha256}
        self._by_name = {p.name: p for p in config.principals}
        self._certified = tuple(p for p in config.principals if p.certificate is not None)
        if self._certified and not self.mutual_tls:
            log.warning(
                "auth config: principals %s are named by client certificates, which only "
                "mutual TLS (--grpc-use-ssl-mutual) provides",
                ", ".join(p.name for p in self._certified),
            )
        log.info(
            "auth config %s: %d principal(s); open to anyone: %s",
            self.path,
            len(config.principals),
            ", ".join(sorted(config.open)) or "nothing",
        )

    def reload_if_changed(self) -> None:
        """Read the auth config again when its file changed since it was last read."""
        if self.path is None:
            return
        stamp = self._file_stamp()
        if stamp == self._stamp:
            return
        try:
            config = AuthConfig.load(self.path)
        except AccessConfigError as exc:
            if stamp != getattr(self, "_failed_stamp", None):
                log.error("%s; the previous auth config stays in force", exc)
                self._failed_stamp = stamp
            return
        self._install(config, stamp)

    def principal(self, name: str) -> Principal | None:
        return self._by_name.get(name)

    def authorize(
        self,
        operation: str,
        metadata: Iterable[tuple[str, str | bytes]] | None,
        certificate_names: CertificateNames,
    ) -> str:
        """The name of the principal allowed to call ``operation`` ("" for none needed).

        Raises RestrictedProtocolError, UnauthenticatedError or PermissionDeniedError.
        """
        group, scope = OPERATIONS.get(operation, (None, "admin"))
        pairs = metadata or ()
        if group is not None and group in self.restricted:
            rule = self.restricted[group]
            if _header(pairs, rule.key) != rule.value:
                self._refused(group, "restricted")
                raise RestrictedProtocolError(
                    f"This protocol is restricted, expecting header '{rule.key}'"
                )
        if self.path is not None:
            now = time.monotonic()
            if now >= self._next_check:
                self._next_check = now + RELOAD_CHECK_S
                self.reload_if_changed()
        config = self.config
        if config is None or scope in config.open:
            return ""
        principal = self._authenticate(operation, _header(pairs, AUTHORIZATION), certificate_names)
        if scope not in principal.scopes:
            self._refused(group or scope, "permission_denied")
            raise PermissionDeniedError(
                f"principal '{principal.name}' lacks scope '{scope}', needed by {operation}; "
                f"it has: {principal.describe_scopes()}"
            )
        return principal.name

    def _authenticate(
        self,
        operation: str,
        credential: str | bytes | None,
        certificate_names: CertificateNames,
    ) -> Principal:
        """The principal ``credential`` (the authorization header's value, or None) or,
        without one, the client certificate names."""
        group = OPERATIONS.get(operation, (None, "admin"))[0] or "reflection"
        if credential is not None:
            if isinstance(credential, bytes):
                credential = credential.decode("latin-1")
            scheme, _, token = credential.strip().partition(" ")
            if scheme.lower() != "bearer" or not token.strip():
                self._refused(group, "unauthenticated")
                raise UnauthenticatedError("the 'authorization' header must be 'Bearer <token>'")
            digest = hashlib.sha256(token.strip().encode()).digest()
            principal = self._by_token.get(digest)
            # The lookup found the entry by its hash; the comparison of the hashes
            # themselves is made in constant time all the same.
            if principal is None or not hmac.compare_digest(digest, principal.token_sha256 or b""):
                self._refused(group, "unauthenticated")
                raise UnauthenticatedError("the bearer token is not one this server knows")
            return principal
        if self._certified:
            names = set(certificate_names())
            for principal in self._certified:
                if principal.certificate in names:
                    return principal
            if names:
                self._refused(group, "unauthenticated")
                raise UnauthenticatedError(
                    f"no principal is named by the client certificate ({', '.join(sorted(names))})"
                )
        self._refused(group, "unauthenticated")
        raise UnauthenticatedError(
            f"{operation} needs credentials: 'authorization: Bearer <token>' or, under "
            "mutual TLS, a client certificate naming a principal"
        )

    def check_model(self, principal_name: str, model: str) -> None:
        """Raise PermissionDeniedError unless ``principal_name`` may infer on ``model``."""
        principal = self._by_name.get(principal_name)
        if principal is None:
            # Open inference (an auth config listing "inference" in open): no principal.
            return
        if not principal.may_infer(model):
            self._refused("inference", "permission_denied")
            raise PermissionDeniedError(
                f"principal '{principal.name}' lacks scope 'inference:{model}'; "
                f"it has: {principal.describe_scopes()}"
            )

    def _refused(self, group: str, reason: str) -> None:
        key = (group, reason)
        self.refusals[key] = self.refusals.get(key, 0) + 1


class Authorize(Stage):
    """Inference scopes per model: a principal limited to ``inference:<model>`` scopes
    is refused (PERMISSION_DENIED) any other model. Counts answered requests per
    principal and model (for the ``batchwire_principal_requests_total`` metric).

    In the chain only when an auth config is in force (see :meth:`create`); first in
    the pipeline, so that a caller learns nothing about a model it may not use.
    """

    __slots__ = ("_counts", "_policy")

    def __init__(self, plane: DataPlane, model: str | None) -> None:
        super().__init__()
        assert plane.access is not None
        self._policy = plane.access
        self._counts = plane.principal_requests

    @classmethod
    def create(cls, plane: DataPlane, model: str | None) -> Authorize | None:
        access = plane.access
        return cls(plane, model) if access is not None and access.authenticating else None

    def __call__(self, call: InferenceCall) -> Awaitable[InferenceResult]:
        principal = call.caller.principal
        self._policy.check_model(principal, call.model)
        key = (call.model, principal)
        self._counts[key] = self._counts.get(key, 0) + 1
        return self.next(call)
