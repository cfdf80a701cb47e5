"""batchwire's extensions, carried in config ``parameters`` under ``batchwire.*`` keys.

Triton configs have no field for them, and ``parameters`` is the one place a
Triton-compatible config can hold backend-specific settings. Values are
strings (``string_value``); a value that does not parse is a load error, and so
is an unknown ``batchwire.*`` key (most likely a typo that would otherwise be
silently ignored).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from batchwire.protos import model_config_pb2 as mc
from batchwire.server.repository.errors import load_error, one_of

PREFIX = "batchwire."
ADAPTIVE_DELAY = "batchwire.adaptive_delay"
RAGGED_PAD_VALUE = "batchwire.ragged_pad_value"
RETRY_BY_HALVES = "batchwire.retry_by_halves"
SPLIT_ON_OOM = "batchwire.split_on_oom"
PYTHON_CLASS = "batchwire.python_class"
INTRA_OP_THREADS = "batchwire.intra_op_threads"
INLINE_BELOW_US = "batchwire.inline_below_us"
MAX_INPUT_BYTES = "batchwire.max_input_bytes"
#: Read by the batcher from ``ModelSpec.parameters`` (batching/batcher.py); checked here.
HANG_TIMEOUT_MS = "batchwire.hang_timeout_ms"
#: Read by the traffic split stage (server/traffic_split.py); checked here.
TRAFFIC = "batchwire.traffic"
#: Read by the shadow stage (server/shadow.py); checked here.
SHADOW = "batchwire.shadow"
SHADOW_TOLERANCE = "batchwire.shadow_tolerance"
#: Read by the traffic split stage (server/rollback.py); checked here.
ROLLBACK = "batchwire.rollback"
#: Read by the response cache stage (server/response_cache_stage.py); checked here.
COALESCE = "batchwire.coalesce"
#: Read by the audit stage (server/audit_stage.py); checked here.
AUDIT_SAMPLE = "batchwire.audit_sample"
AUDIT_REDACT = "batchwire.audit_redact"
#: Read by the drift stage (server/drift_stage.py); checked here.
DRIFT_PROFILE = "batchwire.drift_profile"
DRIFT_WINDOW_REQUESTS = "batchwire.drift_window_requests"
DRIFT_WINDOW_SECS = "batchwire.drift_window_secs"
DRIFT_THRESHOLDS = "batchwire.drift_thresholds"

KNOWN_KEYS = (
    ADAPTIVE_DELAY,
    RAGGED_PAD_VALUE,
    RETRY_BY_HALVES,
    SPLIT_ON_OOM,
    PYTHON_CLASS,
    INTRA_OP_THREADS,
    INLINE_BELOW_US,
    MAX_INPUT_BYTES,
    HANG_TIMEOUT_MS,
    TRAFFIC,
    SHADOW,
    SHADOW_TOLERANCE,
    ROLLBACK,
    COALESCE,
    AUDIT_SAMPLE,
    AUDIT_REDACT,
    DRIFT_PROFILE,
    DRIFT_WINDOW_REQUESTS,
    DRIFT_WINDOW_SECS,
    DRIFT_THRESHOLDS,
)
#: keys that only matter with dynamic_batching.
BATCHING_KEYS = (ADAPTIVE_DELAY, RAGGED_PAD_VALUE, RETRY_BY_HALVES, SPLIT_ON_OOM)

DEFAULT_PYTHON_CLASS = "BatchwireModel"

_TRUE = ("true", "1", "yes", "on")
_FALSE = ("false", "0", "no", "off")


@dataclass(frozen=True, slots=True)
class BatchwireOptions:
    """The parsed ``batchwire.*`` parameters; None where the config leaves a default."""

    adaptive_delay: bool | None = None
    ragged_pad_value: float | None = None
    retry_by_halves: bool | None = None
    split_on_oom: bool | None = None
    python_class: str = DEFAULT_PYTHON_CLASS
    intra_op_threads: int | None = None
    inline_below_us: int | None = None
    #: Largest input tensor a request may carry, in bytes (None: no limit).
    max_input_bytes: int | None = None
    #: A batch running longer than this many milliseconds marks its instance hung
    #: (0: never; None: the batcher's default, 60000).
    hang_timeout_ms: int | None = None


def _field(key: str) -> str:
    return f"parameters['{key}'].string_value"


def parse_bool(value: str, key: str, path: object) -> bool:
    """A boolean parameter: true/false, 1/0, yes/no, on/off (any case)."""
    text = value.strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise load_error(
        path, _field(key), f"'{value}' is not a boolean (expected one of true, false, 1, 0)"
    )


def parse_float(value: str, key: str, path: object) -> float:
    """A finite float parameter."""
    try:
        number = float(value.strip())
    except ValueError:
        number = math.nan
    if not math.isfinite(number):
        raise load_error(path, _field(key), f"'{value}' is not a finite number")
    return number


def parse_int(value: str, key: str, path: object, minimum: int) -> int:
    """An integer parameter of at least ``minimum``."""
    try:
        number = int(value.strip())
    except ValueError:
        raise load_error(path, _field(key), f"'{value}' is not an integer") from None
    if number < minimum:
        raise load_error(path, _field(key), f"must be >= {minimum}, got {number}")
    return number


def parse_options(config: mc.ModelConfig, path: object) -> BatchwireOptions:
    """Parse and check every ``batchwire.*`` parameter of ``config``."""
    params = {key: param.string_value for key, param in config.parameters.items()}
    unknown = sorted(k for k in params if k.startswith(PREFIX) and k not in KNOWN_KEYS)
    if unknown:
        raise load_error(
            path,
            f"parameters['{unknown[0]}']",
            f"unknown batchwire parameter (expected one of {one_of(KNOWN_KEYS)})",
        )

    def flag(key: str) -> bool | None:
        return parse_bool(params[key], key, path) if key in params else None

    pad = (
        parse_float(params[RAGGED_PAD_VALUE], RAGGED_PAD_VALUE, path)
        if RAGGED_PAD_VALUE in params
        else None
    )
    python_class = params.get(PYTHON_CLASS, DEFAULT_PYTHON_CLASS).strip()
    if not python_class.isidentifier():
        raise load_error(
            path,
            _field(PYTHON_CLASS),
            f"'{python_class}' is not a Python class name (expected an identifier)",
        )

    def integer(key: str, minimum: int) -> int | None:
        return parse_int(params[key], key, path, minimum) if key in params else None

    # Imported here: each parser lives with its stage (server/traffic_split, server/shadow).
    from batchwire.server.audit_stage import parse_redact, parse_sample
    from batchwire.server.drift_stage import (
        parse_profile_path,
        parse_thresholds,
        parse_window_requests,
        parse_window_secs,
    )
    from batchwire.server.rollback import parse_rollback
    from batchwire.server.shadow import parse_shadow, parse_tolerance
    from batchwire.server.traffic_split import parse_traffic

    for key, parse in (
        (TRAFFIC, parse_traffic),
        (SHADOW, parse_shadow),
        (SHADOW_TOLERANCE, parse_tolerance),
        (ROLLBACK, parse_rollback),
        (AUDIT_SAMPLE, parse_sample),
        (AUDIT_REDACT, parse_redact),
        (DRIFT_PROFILE, parse_profile_path),
        (DRIFT_WINDOW_REQUESTS, parse_window_requests),
        (DRIFT_WINDOW_SECS, parse_window_secs),
        (DRIFT_THRESHOLDS, parse_thresholds),
    ):
        if key in params:
            try:
                parse(params[key])
            except ValueError as exc:
                raise load_error(path, _field(key), str(exc)) from None

    flag(COALESCE)  # checked here; read by the response cache stage
    return BatchwireOptions(
        adaptive_delay=flag(ADAPTIVE_DELAY),
        ragged_pad_value=pad,
        retry_by_halves=flag(RETRY_BY_HALVES),
        split_on_oom=flag(SPLIT_ON_OOM),
        python_class=python_class,
        intra_op_threads=integer(INTRA_OP_THREADS, 1),
        inline_below_us=integer(INLINE_BELOW_US, 0),
        max_input_bytes=integer(MAX_INPUT_BYTES, 1),
        hang_timeout_ms=integer(HANG_TIMEOUT_MS, 0),
    )
