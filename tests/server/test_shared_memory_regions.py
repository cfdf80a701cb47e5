"""System shared-memory regions (batchwire.server.shared_memory), without a server.

Every test works on real POSIX shared-memory objects: files in /dev/shm with names
unique to the test, created the way a client's ``shm_open`` + ``ftruncate`` does and
mapped by the test as the client would. The ``shm`` fixture removes every name it hands
out, whatever the test did, and closes the client mappings; ``regions`` closes the
table. Whether the server still maps an object is read from /proc/self/maps.
"""

from __future__ import annotations

import contextlib
import gc
import mmap
import os
import sys
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from batchwire.core.errors import InferenceError, StatusCode
from batchwire.server.shared_memory import (
    RESERVED_KEY_PREFIX,
    RegionExistsError,
    RegionNotFoundError,
    RegionOpenError,
    RegionStatus,
    SharedMemoryError,
    SharedMemoryRegions,
    TooManyRegionsError,
)

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux") or not os.path.isdir("/dev/shm"),
    reason="system shared memory is Linux-only (/dev/shm)",
)

SHM_DIR = Path("/dev/shm")
PAGE = mmap.ALLOCATIONGRANULARITY


class Segment:
    """A client's shared-memory object: its key, its file, and the client's own mapping."""

    def __init__(self, key: str, path: Path, size: int, client: mmap.mmap) -> None:
        self.key = key
        self.path = path
        self.size = size
        self.client = client


class ShmFiles:
    """Hands out unique names in /dev/shm and creates objects under them; removes all."""

    def __init__(self) -> None:
        self._paths: list[Path] = []
        self._mappings: list[mmap.mmap] = []

    def name(self, length: int = 0) -> str:
        """A fresh file name (padded with 'x' to ``length`` bytes), removed at teardown."""
        name = f"batchwire-test-{os.getpid()}-{uuid.uuid4().hex}"
        name = name.ljust(length, "x")
        self._paths.append(SHM_DIR / name)
        return name

    def segment(self, size: int, name: str | None = None) -> Segment:
        """A new object of ``size`` bytes filled with random bytes, mapped by the client."""
        name = name if name is not None else self.name()
        path = SHM_DIR / name
        if path not in self._paths:
            self._paths.append(path)
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600)
        try:
            os.ftruncate(fd, size)
            client = mmap.mmap(fd, size)
        finally:
            os.close(fd)
        self._mappings.append(client)
        # Random contents: a window read from the wrong place cannot match by accident.
        client[:] = os.urandom(size)
        return Segment("/" + name, path, size, client)

    def cleanup(self) -> None:
        for mapping in self._mappings:
            # A view the test still holds keeps it mapped until collected with the test.
            with contextlib.suppress(BufferError):
                mapping.close()
        for path in self._paths:
            try:
                path.unlink()
            except FileNotFoundError:
                pass
            except IsADirectoryError:
                path.rmdir()


@pytest.fixture
def shm() -> Iterator[ShmFiles]:
    files = ShmFiles()
    try:
        yield files
    finally:
        files.cleanup()


@pytest.fixture
def regions() -> Iterator[SharedMemoryRegions]:
    table = SharedMemoryRegions()
    try:
        yield table
    finally:
        table.close()


def mappings_of(path: Path) -> int:
    """How many mappings of ``path`` this process holds (client's and server's)."""
    with open("/proc/self/maps") as maps:
        return sum(1 for line in maps if line.rstrip("\n").endswith(str(path)))


def open_descriptors() -> int:
    return len(os.listdir("/proc/self/fd"))


def address(view: memoryview) -> int:
    return int(np.frombuffer(view, dtype=np.uint8).ctypes.data)


def raises_with(
    error: type[InferenceError], code: StatusCode, exc_info: pytest.ExceptionInfo[Exception]
) -> str:
    """Checks the exact error class and its code; returns the message."""
    assert type(exc_info.value) is error
    assert isinstance(exc_info.value, SharedMemoryError)
    assert exc_info.value.code is code
    return exc_info.value.message


# --- register / status / unregister ---------------------------------------------------


def test_register_status_unregister_round_trip(shm: ShmFiles, regions: SharedMemoryRegions) -> None:
    a = shm.segment(4 * PAGE)
    b = shm.segment(100)
    regions.register("zeta", a.key, PAGE + 3, 2 * PAGE)
    regions.register("alpha", b.key, 0, 100)

    assert len(regions) == 2
    assert regions.status() == [
        RegionStatus("alpha", b.key, 0, 100),
        RegionStatus("zeta", a.key, PAGE + 3, 2 * PAGE),
    ]
    assert regions.status("zeta") == [RegionStatus("zeta", a.key, PAGE + 3, 2 * PAGE)]

    regions.unregister("zeta")
    assert len(regions) == 1
    assert [s.name for s in regions.status()] == ["alpha"]
    regions.unregister()
    assert len(regions) == 0
    assert regions.status() == []
    assert mappings_of(a.path) == 1  # the client's own
    assert mappings_of(b.path) == 1


def test_status_of_unknown_region_is_not_found(regions: SharedMemoryRegions) -> None:
    with pytest.raises(RegionNotFoundError) as exc_info:
        regions.status("nope")
    message = raises_with(RegionNotFoundError, StatusCode.NOT_FOUND, exc_info)
    assert message == "Unable to find system shared memory region: 'nope'"


def test_unregister_of_unknown_name_is_ok(shm: ShmFiles, regions: SharedMemoryRegions) -> None:
    segment = shm.segment(64)
    regions.register("kept", segment.key, 0, 64)
    regions.unregister("nope")
    assert [s.name for s in regions.status()] == ["kept"]


def test_close_unregisters_every_region(shm: ShmFiles) -> None:
    segments = [shm.segment(PAGE) for _ in range(3)]
    table = SharedMemoryRegions()
    for i, segment in enumerate(segments):
        table.register(f"r{i}", segment.key, 0, PAGE)
    assert all(mappings_of(s.path) == 2 for s in segments)
    table.close()
    assert len(table) == 0
    assert all(mappings_of(s.path) == 1 for s in segments)


# --- data: the client's mapping and the server's views are the same memory -----------


@pytest.mark.parametrize("region_offset", [0, 1, PAGE - 1, PAGE, PAGE + 3, 2 * PAGE + 5])
def test_views_share_memory_with_the_client(
    shm: ShmFiles, regions: SharedMemoryRegions, region_offset: int
) -> None:
    segment = shm.segment(4 * PAGE)
    region_size = PAGE + 17
    regions.register("r", segment.key, region_offset, region_size)

    # What the client wrote before registering, at the region's start and end.
    whole = regions.view("r", 0, region_size, "input 'X'")
    assert bytes(whole) == segment.client[region_offset : region_offset + region_size]

    # Written by the client after registering: seen through a view (an input).
    segment.client[region_offset + 10 : region_offset + 14] = b"ABCD"
    assert bytes(regions.view("r", 10, 4, "input 'X'")) == b"ABCD"

    # Written through a view (an output): seen by the client.
    out = regions.view("r", region_size - 8, 8, "output 'Y'")
    assert not out.readonly
    np.frombuffer(out, dtype=np.float32)[:] = [1.5, -2.0]
    end = region_offset + region_size
    assert np.frombuffer(segment.client[end - 8 : end], dtype=np.float32).tolist() == [1.5, -2.0]
    # Nothing beyond the window was touched.
    before = segment.client[end : end + 16]
    out[:] = b"\xff" * 8
    assert segment.client[end : end + 16] == before


def test_view_of_zero_bytes_is_empty(shm: ShmFiles, regions: SharedMemoryRegions) -> None:
    segment = shm.segment(64)
    regions.register("r", segment.key, 0, 64)
    empty = regions.view("r", 63, 0, "input 'X'")
    assert isinstance(empty, memoryview)
    assert len(empty) == 0
    assert empty.nbytes == 0


# --- refused registrations -------------------------------------------------------------


def test_register_refuses_a_name_in_use(shm: ShmFiles, regions: SharedMemoryRegions) -> None:
    first = shm.segment(64)
    second = shm.segment(64)
    regions.register("r", first.key, 0, 64)
    with pytest.raises(RegionExistsError) as exc_info:
        regions.register("r", second.key, 0, 32)
    message = raises_with(RegionExistsError, StatusCode.ALREADY_EXISTS, exc_info)
    assert message == "shared memory region 'r' already in manager"
    assert regions.status("r") == [RegionStatus("r", first.key, 0, 64)]
    assert mappings_of(second.path) == 1


@pytest.mark.parametrize("key", ["", "/", "///"])
def test_register_refuses_a_key_of_slashes(regions: SharedMemoryRegions, key: str) -> None:
    with pytest.raises(SharedMemoryError) as exc_info:
        regions.register("r", key, 0, 64)
    message = raises_with(SharedMemoryError, StatusCode.INVALID_ARGUMENT, exc_info)
    assert message.startswith(f"cannot register shared memory region 'r' - invalid shm key '{key}'")


@pytest.mark.parametrize("slashes", ["", "/", "//"])
def test_register_refuses_the_reserved_prefix(
    shm: ShmFiles, regions: SharedMemoryRegions, slashes: str
) -> None:
    # The object exists: the key is refused for its name, not because it is missing.
    name = RESERVED_KEY_PREFIX + shm.name()
    shm.segment(64, name)
    key = slashes + name
    with pytest.raises(SharedMemoryError) as exc_info:
        regions.register("r", key, 0, 64)
    message = raises_with(SharedMemoryError, StatusCode.INVALID_ARGUMENT, exc_info)
    assert message == (
        f"cannot register shared memory region 'r' with key '{key}' as the key contains "
        "the reserved prefix 'triton_python_backend_shm_region_'"
    )
    assert len(regions) == 0


@pytest.mark.parametrize(
    ("key", "why"),
    [
        ("/a/b", "contains '/'"),
        ("/../dev/shm/x", "contains '/'"),
        ("/.", "'.' names a directory"),
        ("/..", "'..' names a directory"),
        ("//..", "'..' names a directory"),
        ("..", "'..' names a directory"),
        ("/x\0y", "NUL"),
        ("/" + "x" * 256, "256 bytes long"),
        # 128 characters, 256 bytes in UTF-8: the limit is on bytes.
        ("/" + "\u00e9" * 128, "256 bytes long"),
        ("/bad\udc00surrogate", "cannot be encoded"),
    ],
)
def test_register_refuses_a_key_that_is_not_one_file_name(
    regions: SharedMemoryRegions, key: str, why: str
) -> None:
    before = open_descriptors()
    with pytest.raises(SharedMemoryError) as exc_info:
        regions.register("r", key, 0, 1)
    message = raises_with(SharedMemoryError, StatusCode.INVALID_ARGUMENT, exc_info)
    assert message.startswith(f"cannot register shared memory region 'r' - invalid shm key '{key}'")
    assert why in message
    assert len(regions) == 0
    assert open_descriptors() == before


def test_register_takes_a_key_of_255_bytes(shm: ShmFiles, regions: SharedMemoryRegions) -> None:
    segment = shm.segment(64, shm.name(length=255))
    assert len(segment.key) == 256  # the leading slash is not part of the file name
    regions.register("r", segment.key, 0, 64)
    assert bytes(regions.view("r", 0, 64, "input 'X'")) == segment.client[:64]


def test_register_refuses_a_key_that_cannot_be_opened(
    shm: ShmFiles, regions: SharedMemoryRegions
) -> None:
    key = "/" + shm.name()  # never created
    with pytest.raises(RegionOpenError) as exc_info:
        regions.register("r", key, 0, 64)
    message = raises_with(RegionOpenError, StatusCode.INTERNAL, exc_info)
    assert message == f"Unable to open shared memory region: '{key}': No such file or directory"
    assert len(regions) == 0


def test_register_refuses_a_symlink_out_of_the_directory(
    shm: ShmFiles, regions: SharedMemoryRegions, tmp_path: Path
) -> None:
    target = tmp_path / "outside"
    target.write_bytes(b"secret" * 100)
    name = shm.name()
    (SHM_DIR / name).symlink_to(target)
    assert (SHM_DIR / name).read_bytes() == target.read_bytes()  # a working link

    with pytest.raises(RegionOpenError) as exc_info:
        regions.register("r", "/" + name, 0, 6)
    message = raises_with(RegionOpenError, StatusCode.INTERNAL, exc_info)
    assert message.startswith(f"Unable to open shared memory region: '/{name}': ")
    assert "symbolic link" in message
    assert len(regions) == 0
    assert mappings_of(target) == 0


def test_register_refuses_an_object_that_is_not_a_regular_file(
    shm: ShmFiles, regions: SharedMemoryRegions
) -> None:
    fifo = shm.name()
    os.mkfifo(SHM_DIR / fifo, 0o600)
    with pytest.raises(SharedMemoryError) as exc_info:
        regions.register("r", "/" + fifo, 0, 1)
    message = raises_with(SharedMemoryError, StatusCode.INVALID_ARGUMENT, exc_info)
    assert message == (
        "failed to register shared memory region 'r': invalid args: shared memory object "
        f"'/{fifo}' is not a regular file (a FIFO)"
    )

    directory = shm.name()
    (SHM_DIR / directory).mkdir()
    with pytest.raises(RegionOpenError) as open_info:
        regions.register("r", "/" + directory, 0, 1)
    message = raises_with(RegionOpenError, StatusCode.INTERNAL, open_info)
    assert message == f"Unable to open shared memory region: '/{directory}': Is a directory"
    assert len(regions) == 0


@pytest.mark.parametrize(
    ("offset", "byte_size", "problem"),
    [
        (-1, 10, "offset must be >= 0"),
        (0, 0, "byte_size must be > 0"),
        (0, -5, "byte_size must be > 0"),
        (50, 51, "offset + byte_size = 101 exceeds"),
        (100, 1, "offset + byte_size = 101 exceeds"),
        (0, 101, "offset + byte_size = 101 exceeds"),
        (2**63, 1, f"offset + byte_size = {2**63 + 1} exceeds"),
    ],
)
def test_register_refuses_a_window_outside_the_object(
    shm: ShmFiles, regions: SharedMemoryRegions, offset: int, byte_size: int, problem: str
) -> None:
    segment = shm.segment(100)
    before = open_descriptors()
    with pytest.raises(SharedMemoryError) as exc_info:
        regions.register("r", segment.key, offset, byte_size)
    message = raises_with(SharedMemoryError, StatusCode.INVALID_ARGUMENT, exc_info)
    assert message == (
        f"failed to register shared memory region 'r': invalid args: {problem}"
        + message.split(problem, 1)[1]
    )
    assert (
        f"key '{segment.key}', offset {offset}, byte_size {byte_size}, "
        "shared memory object size 100 bytes"
    ) in message
    assert len(regions) == 0
    assert open_descriptors() == before
    assert mappings_of(segment.path) == 1


def test_register_takes_the_whole_object(shm: ShmFiles, regions: SharedMemoryRegions) -> None:
    segment = shm.segment(100)
    regions.register("whole", segment.key, 0, 100)
    regions.register("last", segment.key, 99, 1)
    assert bytes(regions.view("last", 0, 1, "input 'X'")) == segment.client[99:100]


def test_max_regions(shm: ShmFiles) -> None:
    segment = shm.segment(PAGE)
    table = SharedMemoryRegions(max_regions=2)
    try:
        table.register("a", segment.key, 0, 10)
        table.register("b", segment.key, 10, 10)
        with pytest.raises(TooManyRegionsError) as exc_info:
            table.register("c", segment.key, 20, 10)
        message = raises_with(TooManyRegionsError, StatusCode.RESOURCE_EXHAUSTED, exc_info)
        assert "'c'" in message
        assert "the limit is 2" in message
        assert len(table) == 2
        assert mappings_of(segment.path) == 3  # the client's and a, b

        table.unregister("a")
        table.register("c", segment.key, 20, 10)
        assert [s.name for s in table.status()] == ["b", "c"]
    finally:
        table.close()


def test_max_regions_zero_is_no_limit(shm: ShmFiles) -> None:
    segment = shm.segment(PAGE)
    table = SharedMemoryRegions(max_regions=0)
    try:
        for i in range(50):
            table.register(f"r{i}", segment.key, i, 1)
        assert len(table) == 50
    finally:
        table.close()
    assert mappings_of(segment.path) == 1


def test_max_regions_must_not_be_negative() -> None:
    with pytest.raises(ValueError, match="max_regions must be >= 0"):
        SharedMemoryRegions(max_regions=-1)


# --- refused views ----------------------------------------------------------------------


def test_view_of_unknown_region_is_not_found(regions: SharedMemoryRegions) -> None:
    with pytest.raises(RegionNotFoundError) as exc_info:
        regions.view("nope", 0, 4, "input 'INPUT0'")
    message = raises_with(RegionNotFoundError, StatusCode.NOT_FOUND, exc_info)
    assert message.startswith("Unable to find shared memory region: 'nope'")
    assert "input 'INPUT0'" in message


@pytest.mark.parametrize(
    ("offset", "byte_size", "triton_words"),
    [
        (64, 0, "Invalid offset for shared memory region: 'r'"),
        (64, 4, "Invalid offset for shared memory region: 'r'"),
        (1000, 4, "Invalid offset for shared memory region: 'r'"),
        (-1, 4, "Invalid offset for shared memory region: 'r'"),
        (0, -1, "Invalid byte size for shared memory region: 'r'"),
        (60, 5, "Invalid offset + byte size for shared memory region: 'r'"),
        (0, 65, "Invalid offset + byte size for shared memory region: 'r'"),
        (1, 2**64, "Invalid offset + byte size for shared memory region: 'r'"),
    ],
)
def test_view_outside_the_region_is_refused(
    shm: ShmFiles,
    regions: SharedMemoryRegions,
    offset: int,
    byte_size: int,
    triton_words: str,
) -> None:
    segment = shm.segment(PAGE)
    regions.register("r", segment.key, 16, 64)
    with pytest.raises(SharedMemoryError) as exc_info:
        regions.view("r", offset, byte_size, "output 'OUTPUT1'")
    message = raises_with(SharedMemoryError, StatusCode.INVALID_ARGUMENT, exc_info)
    assert message.startswith(triton_words + ": ")
    assert (
        f"output 'OUTPUT1' asks for offset {offset}, byte_size {byte_size}; "
        "the region holds 64 bytes"
    ) in message


# --- unregister while views are alive ------------------------------------------------------


def test_unregister_without_views_unmaps_at_once(
    shm: ShmFiles, regions: SharedMemoryRegions
) -> None:
    segment = shm.segment(PAGE)
    regions.register("r", segment.key, 0, PAGE)
    view = regions.view("r", 0, 8, "input 'X'")
    assert mappings_of(segment.path) == 2
    view.release()
    del view
    regions.unregister("r")
    assert mappings_of(segment.path) == 1


def test_views_outlive_unregister_and_release_the_mapping_last(
    shm: ShmFiles, regions: SharedMemoryRegions
) -> None:
    segment = shm.segment(3 * PAGE)
    region_offset = PAGE + 5
    regions.register("r", segment.key, region_offset, PAGE)
    expected = segment.client[region_offset : region_offset + PAGE]
    # From here the client writes with pwrite: only the server's mapping is in the maps.
    segment.client.close()
    assert mappings_of(segment.path) == 1

    view = regions.view("r", 0, PAGE, "input 'X'")
    array = np.frombuffer(regions.view("r", 8, 16, "input 'Y'"), dtype=np.uint8)
    regions.unregister("r")

    # The region is gone from the table at once...
    assert len(regions) == 0
    with pytest.raises(RegionNotFoundError):
        regions.view("r", 0, 1, "input 'X'")
    # ...but what requests in flight hold still reads the client's memory.
    assert bytes(view) == expected
    fd = os.open(segment.path, os.O_RDWR)
    try:
        os.pwrite(fd, b"late", region_offset + 8)
    finally:
        os.close(fd)
    assert bytes(view[8:12]) == b"late"
    read_in_worker: list[bytes] = []
    worker = threading.Thread(
        target=lambda held: read_in_worker.append(held[:4].tobytes()), args=(array,)
    )
    worker.start()
    worker.join()
    assert read_in_worker == [b"late"]
    assert mappings_of(segment.path) == 1

    # The name can be registered again meanwhile, independently of the old views.
    regions.register("r", segment.key, 0, 16)
    regions.unregister("r")

    del view
    gc.collect()
    assert mappings_of(segment.path) == 1  # the array still holds it
    del array
    gc.collect()
    assert mappings_of(segment.path) == 0


# --- property: a view is inside its region's window, or refused -----------------------------


def test_views_lie_inside_the_window_or_are_refused(
    shm: ShmFiles, regions: SharedMemoryRegions
) -> None:
    segment = shm.segment(3 * PAGE + 123)
    region_offset = PAGE + 7
    size = PAGE + 50
    regions.register("r", segment.key, region_offset, size)
    base = address(regions.view("r", 0, size, "input 'X'"))

    near = st.integers(min_value=-3, max_value=size + 3)
    anywhere = st.integers(min_value=-(2**64), max_value=2**64)

    @settings(max_examples=400, deadline=None)
    @given(
        name=st.sampled_from(["r", "missing"]),
        offset=st.one_of(near, anywhere),
        byte_size=st.one_of(near, anywhere),
    )
    def check(name: str, offset: int, byte_size: int) -> None:
        inside = 0 <= offset < size and 0 <= byte_size <= size - offset
        try:
            view = regions.view(name, offset, byte_size, "input 'X'")
        except RegionNotFoundError as exc:
            assert name == "missing"
            assert exc.code is StatusCode.NOT_FOUND
            return
        except SharedMemoryError as exc:
            assert type(exc) is SharedMemoryError
            assert exc.code is StatusCode.INVALID_ARGUMENT
            assert not inside
            return
        assert name == "r"
        assert inside
        assert len(view) == view.nbytes == byte_size
        assert not view.readonly
        start = region_offset + offset
        assert bytes(view) == segment.client[start : start + byte_size]
        if byte_size:
            assert address(view) == base + offset

    check()
