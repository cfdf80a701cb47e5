"""Triton's response cache: the request key, the byte-bounded LRU, ``--cache-config``.

Key
---
:func:`request_key` is a SHA-256 digest (32 bytes) of everything that decides a
request's outputs: the model name and version, each input's name, v2 datatype, shape
and bytes (inputs in name order: their order in the message changes nothing), and the
requested outputs in their order (it is the order of the response). Nothing else of
batchwire's requests can change a result (priority and timeout only decide whether
and when it runs), so nothing else is hashed; never the request id. BYTES inputs are
hashed as their wire form, each element length-prefixed.

Collisions are not a correctness risk: every field is framed (a type tag and its
length before it), so two different requests are always two different byte streams,
and finding two streams with one SHA-256 digest takes about 2**128 work (Triton's
local cache uses a 64-bit hash, where a collision returns another request's answer).
SHA-256 rather than BLAKE2b: with the CPU's SHA instructions, which hashlib's OpenSSL
uses, it hashes 48 KB in about half BLAKE2b's time here.

Cache
-----
:class:`ResponseCache` maps keys to a response's outputs, arrays made read-only and
owning their memory (a view into a batch's output is copied first, else it would keep
the whole batch alive behind an entry counted as one slice). Its size is bounded in
bytes: an entry counts its arrays' bytes (a BYTES array: its pointers plus each
element object) plus :data:`ENTRY_OVERHEAD_BYTES`; inserting past the bound evicts
least recently used entries first (a hit makes an entry the most recent); an entry
larger than the whole cache is not stored. Shared by every model, as Triton's local
cache.

A model's entries are dropped when the registry reports a change of that model (a
load, reload or unload; also a hang or its end, which the registry reports the same
way): :meth:`ResponseCache.model_changed` is the registry listener. A response
computed by a version loaded before the drop and finishing after it is not stored:
:meth:`ResponseCache.put` takes the model's generation read before the request ran.

Concurrency: loop thread only (the server's event loop). A scrape reads the
statistics the cache updates (plain integers), never the cache itself.
"""

from __future__ import annotations

import hashlib
import logging
import struct
import sys
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from batchwire.core.datatypes import serialize_bytes

if TYPE_CHECKING:
    from batchwire.core.types import InferenceRequest

__all__ = [
    "ENTRY_OVERHEAD_BYTES",
    "CacheConfig",
    "CacheConfigError",
    "ResponseCache",
    "entry_bytes",
    "freeze_outputs",
    "parse_cache_config",
    "request_key",
]

log = logging.getLogger(__name__)

#: Bytes an entry is counted for beyond its arrays: the key, the LRU's node, the
#: outputs dict and the array headers (measured with sys.getsizeof: about 450 for one
#: output).
ENTRY_OVERHEAD_BYTES = 512

_U64 = struct.Struct("<Q")


# -- key -------------------------------------------------------------------------------


def _field(tag: bytes, data: bytes) -> bytes:
    """``tag`` (one byte), the length of ``data``, then ``data``: an unambiguous field."""
    return tag + _U64.pack(len(data)) + data


def request_key(
    model: str, version: str, request: InferenceRequest, datatypes: Mapping[str, str]
) -> bytes:
    """The 32-byte cache key of ``request`` for ``model`` ``version`` (module docstring).

    ``datatypes`` are the v2 datatypes the request declared per input (the decode
    stage's ``call.datatypes``).
    """
    digest = hashlib.sha256()
    update = digest.update
    # The small fields go in one update per input: each update costs more than its bytes.
    head = _field(b"m", model.encode()) + _field(b"v", version.encode())
    inputs = request.inputs
    for name in sorted(inputs):
        array = inputs[name]
        shape = array.shape
        head += (
            _field(b"i", name.encode())
            + _field(b"t", datatypes.get(name, "").encode())
            + b"s"
            + struct.pack(f"<Q{len(shape)}q", len(shape), *shape)
        )
        if array.dtype.hasobject:
            data = serialize_bytes(array)
            update(head + b"b" + _U64.pack(len(data)))
            update(data)
        else:
            if not array.flags.c_contiguous:
                array = np.ascontiguousarray(array)
            update(head + b"d" + _U64.pack(array.nbytes))
            update(array.data)  # its buffer, without a copy
        head = b""
    for name in request.requested_outputs:
        head += _field(b"o", name.encode())
    update(head + b"e")
    return digest.digest()


# -- outputs -----------------------------------------------------------------------------


def freeze_outputs(outputs: Mapping[str, np.ndarray], own: bool) -> dict[str, np.ndarray]:
    """``outputs`` as read-only arrays, safe to hand to any number of responses.

    ``own``: each array owns its memory (a view is copied; to be kept in the cache);
    otherwise views are made read-only without a copy (to share one result at once).
    The arrays passed in are left as they are.
    """
    frozen: dict[str, np.ndarray] = {}
    for name, array in outputs.items():
        array = array.copy() if own and not array.flags.owndata else array.view()
        array.flags.writeable = False
        frozen[name] = array
    return frozen


def entry_bytes(outputs: Mapping[str, np.ndarray]) -> int:
    """What an entry holding ``outputs`` counts against the cache's size."""
    total = ENTRY_OVERHEAD_BYTES
    for array in outputs.values():
        total += array.nbytes
        if array.dtype.hasobject:
            total += sum(sys.getsizeof(item) for item in array.reshape(-1))
    return total


# -- the LRU -----------------------------------------------------------------------------


class _Entry:
    __slots__ = ("model", "nbytes", "outputs", "stats")

    def __init__(self, model: str, outputs: dict[str, np.ndarray], nbytes: int, stats: Any) -> None:
        self.model = model
        self.outputs = outputs
        self.nbytes = nbytes
        #: The version's ModelStats (cache_entries, cache_bytes, cache_evictions), or None.
        self.stats = stats


class ResponseCache:
    """Responses by request key, at most ``capacity_bytes`` in all (module docstring)."""

    def __init__(self, capacity_bytes: int) -> None:
        if capacity_bytes < 1:
            raise ValueError(f"capacity_bytes must be >= 1, got {capacity_bytes}")
        self.capacity_bytes = capacity_bytes
        #: Bytes the entries count now (see entry_bytes).
        self.used_bytes = 0
        #: Entries evicted to make room, since start (dropped models not counted).
        self.evictions = 0
        self._entries: OrderedDict[bytes, _Entry] = OrderedDict()
        self._by_model: dict[str, set[bytes]] = {}
        self._generation: dict[str, int] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: bytes) -> dict[str, np.ndarray] | None:
        """The outputs stored under ``key`` (now the most recently used), or None."""
        entry = self._entries.get(key)
        if entry is None:
            return None
        self._entries.move_to_end(key)
        return entry.outputs

    def generation(self, model: str) -> int:
        """A number that changes whenever ``model``'s entries are dropped."""
        return self._generation.get(model, 0)

    def put(
        self,
        key: bytes,
        model: str,
        generation: int,
        outputs: dict[str, np.ndarray],
        stats: Any = None,
    ) -> bool:
        """Store ``outputs`` (from :func:`freeze_outputs` with ``own``) under ``key``.

        Not stored (returns False) when ``model`` changed since ``generation`` was read
        or the entry alone exceeds the capacity. ``stats`` is the version's
        :class:`~batchwire.telemetry.stats.ModelStats` (or None) whose cache gauges
        follow the entry until it leaves.
        """
        if self._generation.get(model, 0) != generation:
            return False
        nbytes = entry_bytes(outputs)
        if nbytes > self.capacity_bytes:
            return False
        entries = self._entries
        if key in entries:  # two misses computed the same answer: keep one
            self._remove(key)
        while self.used_bytes + nbytes > self.capacity_bytes:
            oldest = next(iter(entries))
            evicted = self._remove(oldest)
            self.evictions += 1
            if evicted.stats is not None:
                evicted.stats.cache_evictions += 1
        entries[key] = _Entry(model, outputs, nbytes, stats)
        self._by_model.setdefault(model, set()).add(key)
        self.used_bytes += nbytes
        if stats is not None:
            stats.cache_entries += 1
            stats.cache_bytes += nbytes
        return True

    def _remove(self, key: bytes) -> _Entry:
        entry = self._entries.pop(key)
        self.used_bytes -= entry.nbytes
        keys = self._by_model.get(entry.model)
        if keys is not None:
            keys.discard(key)
            if not keys:
                del self._by_model[entry.model]
        stats = entry.stats
        if stats is not None:
            stats.cache_entries -= 1
            stats.cache_bytes -= entry.nbytes
        return entry

    def drop_model(self, model: str) -> int:
        """Remove every entry of ``model`` and bump its generation; returns how many."""
        self._generation[model] = self._generation.get(model, 0) + 1
        keys = self._by_model.get(model)
        if not keys:
            return 0
        count = len(keys)
        for key in list(keys):
            self._remove(key)
        return count

    def model_changed(self, name: str, ready: bool) -> None:
        """The registry listener: ``name`` was loaded, unloaded or changed state."""
        dropped = self.drop_model(name)
        if dropped:
            log.info("response cache: dropped %d entries of model '%s'", dropped, name)


# -- --cache-config ----------------------------------------------------------------------


class CacheConfigError(ValueError):
    """A ``--cache-config`` value batchwire cannot use; the message says why."""


@dataclass(frozen=True, slots=True)
class CacheConfig:
    """The server's response cache: Triton's ``local`` cache of ``size`` bytes."""

    size: int


def _split(value: str) -> tuple[str, str, str]:
    """Triton's parse of one ``--cache-config`` value, with its messages."""
    comma = value.find(",")
    if comma <= 0:
        raise CacheConfigError(
            "No cache specified. --cache-config option format is "
            f"<cache name>,<setting>=<value>. Got {value}"
        )
    equals = value.find("=", comma + 1)
    setting, text = value[comma + 1 : equals], value[equals + 1 :]
    if equals < 0 or not setting or not text:
        raise CacheConfigError(
            f"--cache-config option format is '<cache name>,<setting>=<value>'. Got {value}"
        )
    return value[:comma], setting, text


def parse_cache_config(values: Iterable[str]) -> CacheConfig | None:
    """The cache Triton's ``--cache-config`` values ask for; None when there are none.

    Each value is ``<cache name>,<setting>=<value>`` (Triton's messages when it is not);
    batchwire has Triton's ``local`` cache only, whose one setting is ``size``, in bytes,
    1 or more. A later value overrides an earlier one. Raises :class:`CacheConfigError`.
    """
    size: int | None = None
    seen = False
    for value in values:
        seen = True
        name, setting, text = _split(value)
        if name != "local":
            raise CacheConfigError(
                f"--cache-config: batchwire has the 'local' cache only, got '{name}' in {value}"
            )
        if setting != "size":
            raise CacheConfigError(
                f"--cache-config: the 'local' cache has one setting, size, got '{setting}' "
                f"in {value}"
            )
        try:
            size = int(text)
        except ValueError:
            size = None
        if size is None or size < 1:
            raise CacheConfigError(
                f"--cache-config: local,size expects a size in bytes of 1 or more, got "
                f"'{text}' in {value}"
            )
    if not seen:
        return None
    assert size is not None  # every value set it or raised
    return CacheConfig(size)
