"""System shared-memory regions: the table behind Triton's SystemSharedMemory* calls.

A client creates a POSIX shared-memory object (``shm_open`` key, e.g. ``/input_simple``),
registers a window of it (``offset``, ``byte_size``) under a region *name*, and then
names the region in request tensors (``shared_memory_region``, ``shared_memory_offset``,
``shared_memory_byte_size``) instead of sending bytes. :class:`SharedMemoryRegions` maps
the windows into this process and hands out views of them.

Linux only: an object with key ``/KEY`` is the file ``<directory>/KEY`` (``/dev/shm`` by
default, where glibc's ``shm_open`` puts it).

Rules
-----
``register(name, key, offset, byte_size)``, checked in this order:

- The key, as Triton checks it: a key made only of slashes (or empty) is refused, and so
  is one whose part after its leading slashes starts with the reserved prefix
  ``triton_python_backend_shm_region_`` (INVALID_ARGUMENT, Triton's messages).
- The key, as batchwire adds (the object is opened as a file of ``directory``, so its
  name must be one file name there): after the leading slashes the key must not contain
  ``/`` or NUL, must not be ``.`` or ``..``, and must be at most 255 bytes (NAME_MAX) in
  the file system's encoding (INVALID_ARGUMENT naming the key and why).
- A name already registered: ALREADY_EXISTS, Triton's "shared memory region 'NAME'
  already in manager".
- More than ``max_regions`` regions (0: no limit): RESOURCE_EXHAUSTED naming the limit.
- The object is opened with ``O_RDWR | O_NOFOLLOW | O_CLOEXEC | O_NONBLOCK``: a symbolic
  link planted in the directory is not followed out of it, and a FIFO or device there
  cannot block the event loop. A failed open is Triton's INTERNAL "Unable to open shared
  memory region: 'KEY'" with the OS reason added.
- ``fstat``: the object must be a regular file, ``offset >= 0``, ``byte_size > 0`` and
  ``offset + byte_size <=`` the object's size, else INVALID_ARGUMENT (Triton's "failed to
  register shared memory region 'NAME': invalid args") naming region, key, offset,
  byte_size and the object's size.
- The window is mapped read-write and shared. ``mmap`` offsets must be multiples of
  ``mmap.ALLOCATIONGRANULARITY``: the mapping starts at the offset rounded down and the
  window is remembered inside it (Triton refuses unaligned offsets; batchwire takes
  them). The descriptor is closed once mapped (on Python < 3.13 ``mmap`` keeps a
  duplicate of it until the mapping is closed; from 3.13 ``trackfd=False`` avoids that).
  A failed ``mmap`` is INVALID_ARGUMENT, as Triton.
- Nothing is kept from a refused registration (no mapping, no descriptor).

``unregister(name)``: the region leaves the table at once; later requests naming it get
NOT_FOUND. A name that is not registered is OK (Triton). ``""`` unregisters every region.
Views handed out before stay valid: the mapping is closed now if nothing exports it,
otherwise it is dropped and unmapped when the last view (and every numpy array over one)
is garbage collected. Memory that is still referenced is never unmapped.

``status(name)``: the region's :class:`RegionStatus`; ``""`` lists all, sorted by name.
An unknown name is Triton's NOT_FOUND "Unable to find system shared memory region:
'NAME'".

``view(name, offset, byte_size, what)``: a writable memoryview of exactly ``byte_size``
bytes at ``offset`` of the region's window (offsets are relative to the region, as
Triton). ``what`` names the tensor in messages (e.g. ``input 'INPUT0'``). Refused:

- an unknown region: NOT_FOUND, Triton's "Unable to find shared memory region: 'NAME'";
- a negative offset or ``offset >=`` the region's byte_size (so a region holds no empty
  tensor at its very end, as Triton): INVALID_ARGUMENT, Triton's "Invalid offset for
  shared memory region: 'NAME'";
- a negative byte_size: INVALID_ARGUMENT, "Invalid byte size for shared memory region";
- ``offset + byte_size >`` the region's byte_size: INVALID_ARGUMENT, Triton's "Invalid
  offset + byte size for shared memory region: 'NAME'";

each with the numbers and ``what`` added. ``byte_size`` 0 gives an empty view. This is
on the request path: one dict lookup, comparisons and one slice.

``close()`` (server stop) unregisters every region.

Trust: as in Triton, any object of the directory that the server's user can open
read-write can be registered, and its contents are read and written by requests; serve
system shared memory to clients of the same host only (or gate the calls). A client
that shrinks its object after registering makes reads of the lost pages fault (SIGBUS),
as in Triton: the size is checked at registration only.

Concurrency: every method runs on the server's event-loop thread only, so the table is
not locked (it changes only between awaits). The views handed out may be read and
written from worker threads: each keeps its mapping alive by itself.
"""

from __future__ import annotations

import errno
import mmap
import os
import stat
import sys
from dataclasses import dataclass

from batchwire.core.errors import InferenceError, StatusCode

__all__ = [
    "RESERVED_KEY_PREFIX",
    "RegionExistsError",
    "RegionNotFoundError",
    "RegionOpenError",
    "RegionStatus",
    "SharedMemoryError",
    "SharedMemoryRegions",
    "TooManyRegionsError",
]

#: Keys Triton keeps for the shared memory its Python backend creates (common.h).
RESERVED_KEY_PREFIX = "triton_python_backend_shm_region_"

#: Longest file name (bytes) Linux file systems take (NAME_MAX).
_NAME_MAX = 255

_OPEN_FLAGS = os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK


class SharedMemoryError(InferenceError):
    """A shared-memory call or tensor reference is invalid (INVALID_ARGUMENT).

    The other shared-memory errors derive from it, each with its own code, so
    ``except SharedMemoryError`` catches any of them.
    """

    code = StatusCode.INVALID_ARGUMENT
    reason = "invalid_argument"


class RegionNotFoundError(SharedMemoryError):
    """No region is registered under the name."""

    code = StatusCode.NOT_FOUND
    reason = "not_found"


class RegionExistsError(SharedMemoryError):
    """A region is already registered under the name."""

    code = StatusCode.ALREADY_EXISTS
    reason = "already_exists"


class RegionOpenError(SharedMemoryError):
    """The shared-memory object could not be opened (Triton: INTERNAL)."""

    code = StatusCode.INTERNAL
    reason = "internal"


class TooManyRegionsError(SharedMemoryError):
    """``max_regions`` regions are registered already."""

    code = StatusCode.RESOURCE_EXHAUSTED
    reason = "resource_exhausted"


@dataclass(frozen=True, slots=True)
class RegionStatus:
    """One registered region, as SystemSharedMemoryStatus reports it."""

    name: str
    key: str
    offset: int
    byte_size: int


class _Region:
    """A registered region: its mapping and the window of it that the client registered."""

    __slots__ = ("byte_size", "mapping", "status", "window")

    def __init__(self, status: RegionStatus, mapping: mmap.mmap, start: int) -> None:
        self.status = status
        self.byte_size = status.byte_size
        self.mapping = mapping
        # Every view is a slice of this one: offsets relative to the region, no copy.
        self.window = memoryview(mapping)[start : start + status.byte_size]

    def release(self) -> None:
        """Unmaps now if no view is alive; otherwise the last view's collection does."""
        try:
            # Slices handed out hold the mapping themselves, not through ``window``.
            self.window.release()
            self.mapping.close()
        except BufferError:
            # Views (or arrays over them) still export the mapping; they keep the mmap
            # object alive, and it unmaps when the last of them is collected.
            pass


class SharedMemoryRegions:
    """The registered system shared-memory regions of one server (see the module rules).

    Event-loop thread only: nothing here is locked.
    """

    __slots__ = ("_directory", "_max_regions", "_regions")

    def __init__(self, *, directory: str = "/dev/shm", max_regions: int = 1024) -> None:
        if max_regions < 0:
            raise ValueError(f"max_regions must be >= 0 (0: no limit), got {max_regions}")
        self._directory = directory
        self._max_regions = max_regions
        self._regions: dict[str, _Region] = {}

    def __len__(self) -> int:
        return len(self._regions)

    def register(self, name: str, key: str, offset: int, byte_size: int) -> None:
        """Maps ``byte_size`` bytes at ``offset`` of object ``key`` as region ``name``."""
        file_name = self._file_name(name, key)
        if name in self._regions:
            raise RegionExistsError(f"shared memory region '{name}' already in manager")
        if self._max_regions and len(self._regions) >= self._max_regions:
            raise TooManyRegionsError(
                f"cannot register shared memory region '{name}': {len(self._regions)} "
                f"regions are registered, the limit is {self._max_regions}; "
                "unregister one first"
            )
        path = os.path.join(os.fsencode(self._directory), file_name)
        try:
            fd = os.open(path, _OPEN_FLAGS)
        except OSError as exc:
            raise RegionOpenError(
                f"Unable to open shared memory region: '{key}': {_open_reason(exc)}"
            ) from None
        try:
            mapping, start = self._map(fd, name, key, offset, byte_size)
        finally:
            os.close(fd)
        self._regions[name] = _Region(RegionStatus(name, key, offset, byte_size), mapping, start)

    def unregister(self, name: str = "") -> None:
        """Removes region ``name`` (every region for ``""``); an unknown name is OK."""
        if not name:
            regions = list(self._regions.values())
            self._regions.clear()
        else:
            region = self._regions.pop(name, None)
            regions = [] if region is None else [region]
        for region in regions:
            region.release()

    def status(self, name: str = "") -> list[RegionStatus]:
        """The status of region ``name``, or of every region (sorted by name) for ``""``."""
        if not name:
            return [self._regions[n].status for n in sorted(self._regions)]
        region = self._regions.get(name)
        if region is None:
            raise RegionNotFoundError(f"Unable to find system shared memory region: '{name}'")
        return [region.status]

    def view(self, name: str, offset: int, byte_size: int, what: str) -> memoryview:
        """``byte_size`` bytes at ``offset`` of region ``name``'s window, writable, no copy."""
        region = self._regions.get(name)
        if region is None:
            raise RegionNotFoundError(
                f"Unable to find shared memory region: '{name}' (named by {what})"
            )
        size = region.byte_size
        if offset < 0 or byte_size < 0 or offset >= size or byte_size > size - offset:
            raise _bad_window(name, offset, byte_size, size, what)
        return region.window[offset : offset + byte_size]

    def close(self) -> None:
        """Server stop: unregisters every region."""
        self.unregister()

    def _file_name(self, name: str, key: str) -> bytes:
        """The key's file name in the directory, or the refusal of the key."""
        rest = key.lstrip("/")
        if not rest:
            raise SharedMemoryError(
                f"cannot register shared memory region '{name}' - invalid shm key '{key}'"
            )
        if rest.startswith(RESERVED_KEY_PREFIX):
            raise SharedMemoryError(
                f"cannot register shared memory region '{name}' with key '{key}' as the key "
                f"contains the reserved prefix '{RESERVED_KEY_PREFIX}'"
            )
        why = ""
        if "/" in rest:
            why = "it contains '/' after its leading slashes (one file name is expected)"
        elif rest in (".", ".."):
            why = f"'{rest}' names a directory, not a shared memory object"
        elif "\0" in rest:
            why = "it contains a NUL character"
        else:
            try:
                file_name = os.fsencode(rest)
            except UnicodeEncodeError:
                why = "it cannot be encoded as a file name"
            else:
                if len(file_name) > _NAME_MAX:
                    why = (
                        f"it is {len(file_name)} bytes long after its leading slashes, "
                        f"at most {_NAME_MAX} are allowed"
                    )
                else:
                    return file_name
        raise SharedMemoryError(
            f"cannot register shared memory region '{name}' - invalid shm key '{key}': {why}"
        )

    def _map(
        self, fd: int, name: str, key: str, offset: int, byte_size: int
    ) -> tuple[mmap.mmap, int]:
        """Checks the window against the object open at ``fd`` and maps it.

        Returns the mapping and where the window starts inside it.
        """
        try:
            info = os.fstat(fd)
        except OSError as exc:
            raise RegionOpenError(
                f"Invalid shared memory region: '{key}': {exc.strerror}"
            ) from None
        prefix = f"failed to register shared memory region '{name}': invalid args"
        if not stat.S_ISREG(info.st_mode):
            raise SharedMemoryError(
                f"{prefix}: shared memory object '{key}' is not a regular file "
                f"({_file_kind(info.st_mode)})"
            )
        object_size = info.st_size
        if offset < 0 or byte_size <= 0 or offset + byte_size > object_size:
            if offset < 0:
                problem = "offset must be >= 0"
            elif byte_size <= 0:
                problem = "byte_size must be > 0"
            else:
                problem = f"offset + byte_size = {offset + byte_size} exceeds the object's size"
            raise SharedMemoryError(
                f"{prefix}: {problem}: key '{key}', offset {offset}, byte_size {byte_size}, "
                f"shared memory object size {object_size} bytes"
            )
        # mmap offsets must be page aligned: map from the page holding ``offset``.
        aligned = offset - offset % mmap.ALLOCATIONGRANULARITY
        start = offset - aligned
        try:
            if sys.version_info >= (3, 13):
                # No duplicate descriptor kept per region (one per region otherwise).
                mapping = mmap.mmap(fd, start + byte_size, offset=aligned, trackfd=False)
            else:
                mapping = mmap.mmap(fd, start + byte_size, offset=aligned)
        except (OSError, ValueError, OverflowError) as exc:
            raise SharedMemoryError(
                f"failed to register shared memory region '{name}': unable to process "
                f"address space: {exc}"
            ) from None
        return mapping, start


def _bad_window(name: str, offset: int, byte_size: int, size: int, what: str) -> SharedMemoryError:
    """The refusal of a view outside the region (kept off :meth:`view`'s fast path)."""
    numbers = (
        f"{what} asks for offset {offset}, byte_size {byte_size}; the region holds {size} bytes"
    )
    if offset < 0 or offset >= size:
        return SharedMemoryError(f"Invalid offset for shared memory region: '{name}': {numbers}")
    if byte_size < 0:
        return SharedMemoryError(f"Invalid byte size for shared memory region: '{name}': {numbers}")
    return SharedMemoryError(
        f"Invalid offset + byte size for shared memory region: '{name}': "
        f"offset + byte_size = {offset + byte_size}, {numbers}"
    )


def _open_reason(exc: OSError) -> str:
    if exc.errno == errno.ELOOP:
        return "it is a symbolic link, which is not followed"
    return exc.strerror or str(exc)


def _file_kind(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    return f"file type {stat.S_IFMT(mode):o}"
